"""/api/v1/segments: the rule tree in, checked with errors naming the condition; counts and members; a campaign's
audience count and follow-ups."""

import pytest

from campaigns.models import Campaign, Contact, MailingList, Segment, Subscription, Suppression
from delivery.models import Send
from tracking.models import Event

pytestmark = pytest.mark.django_db

GERMANS = {"match": "all", "rules": [{"type": "attribute", "key": "country", "op": "equals", "value": "DE"}]}


@pytest.fixture
def readers():
    news = MailingList.objects.create(name="News")
    for name, country in [("ann", "DE"), ("bob", "DE"), ("cat", "FR")]:
        contact = Contact.objects.create(email=f"{name}@example.com", attributes={"country": country})
        Subscription.objects.create(contact=contact, mailing_list=news)
    Suppression.objects.create(email="bob@example.com", reason="complaint")
    return news


def test_create_count_and_browse_a_segment(api, readers):
    made = api.post("/api/v1/segments", {"name": "Germans", "rules": GERMANS}, content_type="application/json")
    assert made.status_code == 201, made.content
    segment_id = made.json()["id"]
    counted = api.get(f"/api/v1/segments/{segment_id}/count").json()
    assert counted["matching"] == 2 and counted["mailable"] == 1
    assert [c["email"] for c in counted["sample"]] == ["ann@example.com", "bob@example.com"]
    page = api.get(f"/api/v1/segments/{segment_id}/contacts?page_size=1").json()
    assert page["count"] == 2 and [c["email"] for c in page["items"]] == ["ann@example.com"]


def test_a_bad_tree_is_refused_naming_the_condition(api):
    bad = {"match": "all", "rules": [{"type": "opened"}, {"type": "attribute", "key": "age", "kind": "number",
                                                            "op": "contains", "value": 3}]}
    response = api.post("/api/v1/segments", {"name": "Broken", "rules": bad}, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "rules.rules[1].op"
    assert response.json()["detail"].startswith("rules.rules[1].op: 'contains' does not apply to number data")
    assert not Segment.objects.exists()


def test_a_change_that_makes_a_circle_is_refused(api):
    first = Segment.objects.create(name="First", rules=GERMANS)
    second = Segment.objects.create(name="Second", rules={"match": "all", "rules": [{"type": "segment",
                                                                                     "segment": first.pk}]})
    response = api.patch(f"/api/v1/segments/{first.pk}", {"rules": {"match": "any", "rules": [
        {"type": "segment", "segment": second.pk}]}}, content_type="application/json")
    assert response.status_code == 422 and "cannot contain itself" in response.json()["detail"]
    assert api.delete(f"/api/v1/segments/{first.pk}").status_code == 409
    assert Segment.objects.get(pk=first.pk).rules == GERMANS


def test_preview_of_a_tree_not_saved(api, readers):
    response = api.post("/api/v1/segments/preview", {"rules": GERMANS}, content_type="application/json")
    assert response.json()["matching"] == 2


def test_a_campaign_aimed_at_a_segment_shows_its_recipients_after_exclusions(api, readers):
    germans = Segment.objects.create(name="Germans", rules=GERMANS)
    made = api.post("/api/v1/campaigns", {"name": "Angebot", "subject": "Hallo", "from_email": "news@herald.example",
                                          "html_body": "<p>Hallo</p>", "segments": [germans.pk]},
                    content_type="application/json")
    assert made.status_code == 201, made.content
    assert made.json()["segments"] == [germans.pk] and made.json()["lists"] == []
    # bob is German but suppressed: one recipient.
    assert api.get(f"/api/v1/campaigns/{made.json()['id']}/audience").json() == {"recipients": 1, "notes": []}
    refused = api.patch(f"/api/v1/campaigns/{made.json()['id']}", {"exclude_segments": [999999]},
                        content_type="application/json")
    assert refused.status_code == 422 and "no segment with id 999999" in refused.json()["detail"]


def test_follow_up_through_the_api(api, readers):
    sent = Campaign.objects.create(name="Spring", subject="Spring", from_email="news@herald.example",
                                   html_body="<p>x</p>", status="finished")
    Campaign.objects.filter(pk=sent.pk).update(started_at=sent.created_at, finished_at=sent.created_at)
    for contact in Contact.objects.all():
        Send.objects.create(campaign=sent, contact=contact, email=contact.email, domain="example.com", status="sent")
    cat = Contact.objects.get(email="cat@example.com")
    Event.objects.create(type="open", contact=cat, campaign=sent, email=cat.email, machine=True)
    response = api.post(f"/api/v1/campaigns/{sent.pk}/follow-up", {"audience": "not_opened", "subject": "Again"},
                        content_type="application/json")
    assert response.status_code == 201, response.content
    follow = response.json()
    assert follow["follow_up_of"] == sent.pk and follow["subject"] == "Again" and follow["status"] == "draft"
    audience = api.get(f"/api/v1/campaigns/{follow['id']}/audience").json()
    assert audience["recipients"] == 2  # ann and cat (a machine opened for her); bob is suppressed
    assert audience["notes"] == ["1 recipient(s) included although a machine opened, since machine activity does not count"]
    draft = api.post(f"/api/v1/campaigns/{follow['id']}/follow-up", {"audience": "clicked"},
                     content_type="application/json")
    assert draft.status_code == 409 and "only a campaign that was sent" in draft.json()["detail"]
