"""The admin: the rule builder's page saves a checked tree and previews counts; contacts browse by segment; a sent
campaign gets a follow-up page; the send confirmation counts after exclusions and tells about machine opens."""

import json

import pytest
from django.utils import timezone

from campaigns.models import Campaign, Contact, MailingList, Segment, Subscription
from delivery.models import Send
from tracking.models import Event

pytestmark = pytest.mark.django_db

GERMANS = {"match": "all", "rules": [{"type": "attribute", "key": "country", "op": "equals", "value": "DE"}]}


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def readers():
    news = MailingList.objects.create(name="News")
    for name, country in [("ann", "DE"), ("bob", "DE"), ("cat", "FR")]:
        contact = Contact.objects.create(email=f"{name}@example.com", attributes={"country": country})
        Subscription.objects.create(contact=contact, mailing_list=news)
    return news


def test_the_builder_page_saves_a_checked_tree(staff, readers):
    page = staff.get("/admin/campaigns/segment/add/")
    assert page.status_code == 200 and b'id="segment-builder"' in page.content
    assert b"segment-options" in page.content
    saved = staff.post("/admin/campaigns/segment/add/", {"name": "Germans", "description": "",
                                                         "rules": json.dumps(GERMANS)})
    assert saved.status_code == 302
    assert Segment.objects.get(name="Germans").rules == GERMANS


def test_the_builder_page_refuses_a_bad_tree_naming_the_condition(staff):
    bad = {"match": "all", "rules": [{"type": "field", "field": "shoe_size", "op": "equals", "value": "9"}]}
    page = staff.post("/admin/campaigns/segment/add/", {"name": "Feet", "rules": json.dumps(bad)})
    assert page.status_code == 200 and not Segment.objects.exists()
    assert "rules[0].field: unknown field &#x27;shoe_size&#x27;" in page.content.decode()


def test_the_preview_counts_and_samples_as_you_edit(staff, readers):
    answer = staff.post("/admin/campaigns/segment/preview/", {"rules": GERMANS}, content_type="application/json")
    assert answer.json()["matching"] == 2
    assert [c["email"] for c in answer.json()["sample"]] == ["ann@example.com", "bob@example.com"]
    wrong = staff.post("/admin/campaigns/segment/preview/", {"rules": {"match": "most", "rules": []}},
                       content_type="application/json")
    assert wrong.status_code == 422 and wrong.json()["errors"][0].startswith("match: must be one of")


def test_contacts_are_browsed_by_segment(staff, readers):
    germans = Segment.objects.create(name="Germans", rules=GERMANS)
    page = staff.get(f"/admin/campaigns/contact/?segment={germans.pk}")
    assert page.status_code == 200
    shown = [c.email for c in page.context["cl"].result_list]
    assert sorted(shown) == ["ann@example.com", "bob@example.com"]


def test_the_send_confirmation_counts_after_exclusions(staff, readers):
    germans = Segment.objects.create(name="Germans", rules=GERMANS)
    c = Campaign.objects.create(name="All but Germans", subject="Hi", from_email="n@herald.example", html_body="<p>x</p>")
    c.lists.add(readers)
    c.exclude_segments.add(germans)
    page = staff.get(f"/admin/herald/campaigns/{c.pk}/send/")
    assert page.context["recipients"] == 1
    assert "Except segments: Germans" in page.content.decode()


def test_follow_up_from_the_admin(staff, readers):
    sent = Campaign.objects.create(name="Spring", subject="Spring", from_email="n@herald.example", html_body="<p>x</p>",
                                   status="finished", started_at=timezone.now(), finished_at=timezone.now())
    for contact in Contact.objects.all():
        Send.objects.create(campaign=sent, contact=contact, email=contact.email, domain="example.com", status="sent")
    ann = Contact.objects.get(email="ann@example.com")
    Event.objects.create(type="open", contact=ann, campaign=sent, email=ann.email, machine=True)
    assert b"herald-follow-up" in staff.get(f"/admin/campaigns/campaign/{sent.pk}/change/").content
    made = staff.post(f"/admin/herald/campaigns/{sent.pk}/follow-up/",
                      {"audience": "not_opened", "subject": "", "delay_hours": 0})
    assert made.status_code == 302
    follow = Campaign.objects.get(follow_up_of=sent)
    assert follow.subject == "Spring" and follow.status == "draft"
    page = staff.get(f"/admin/herald/campaigns/{follow.pk}/send/").content.decode()
    assert "will go to <strong>3</strong>" in page
    assert "1 recipient(s) included although a machine opened" in page
    assert staff.get(f"/admin/campaigns/campaign/{follow.pk}/change/").status_code == 200
