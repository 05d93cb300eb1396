"""A contact's timeline: everything that happened to them, newest first, a page at a time."""

from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.utils import timezone

from campaigns import suppression
from campaigns.models import ApiToken, Campaign, Contact, MailingList, Subscription, Suppression
from delivery.models import Send
from tracking.models import Event

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")


@pytest.fixture
def api(admin_user):
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(admin_user)[1]}"})


@pytest.fixture
def bob(admin_user):
    weekly = MailingList.objects.create(name="Weekly")
    contact = Contact.objects.create(email="bob@example.net")
    Subscription.objects.create(contact=contact, mailing_list=weekly, source="import",
                                source_detail="import 3 of people.csv by root")
    campaign = Campaign.objects.create(name="Spring", subject="s", from_email="n@shop.example", html_body="<p>x</p>")
    send = Send.objects.create(campaign=campaign, contact=contact, email=contact.email, domain="example.net",
                               status=Send.Status.BOUNCED, smtp_code=550, smtp_reply="550 5.1.1 no such user")
    Event.objects.create(type=Event.Type.CLICK, send=send, contact=contact, campaign=campaign, email=contact.email,
                         url="https://shop.example/a", machine=True)
    bounce = Event.objects.create(type=Event.Type.BOUNCE, send=send, contact=contact, campaign=campaign,
                                  email=contact.email, status="5.1.1", diagnostic="550 5.1.1 no such user")
    suppression.suppress(contact.email, Suppression.Reason.HARD_BOUNCE, "550 5.1.1", bounce.pk)
    LogEntry.objects.create(user=admin_user, content_type=ContentType.objects.get_for_model(Contact),
                            object_id=str(contact.pk), object_repr=str(contact), action_flag=CHANGE,
                            change_message="Changed first name.")
    return contact


def test_the_timeline_shows_consent_sends_events_suppressions_and_edits(api, bob):
    body = api.get(f"/api/v1/contacts/{bob.pk}/timeline").json()
    kinds = {e["kind"] for e in body["entries"]}
    assert kinds == {"subscription", "send", "event", "suppression", "change"}
    by_kind = {e["kind"]: e for e in body["entries"]}
    assert by_kind["subscription"]["source_detail"] == "import 3 of people.csv by root"
    assert by_kind["send"]["smtp_reply"] == "550 5.1.1 no such user" and by_kind["send"]["campaign"] == "Spring"
    assert by_kind["suppression"]["reason"] == "hard_bounce"
    assert by_kind["suppression"]["campaign_id"] == Campaign.objects.get().pk
    assert by_kind["change"]["by"] == "root"
    clicks = [e for e in body["entries"] if e.get("type") == "click"]
    assert clicks[0]["machine"] is True
    assert body["next_cursor"] is None


def test_a_long_history_comes_in_pages_that_neither_repeat_nor_skip(api, bob):
    send = Send.objects.get()
    base = timezone.now() - timedelta(days=1)
    events = [Event(type=Event.Type.OPEN, send=send, contact=bob, campaign_id=send.campaign_id, email=bob.email)
              for _ in range(120)]
    created = Event.objects.bulk_create(events)
    # Half of them at one instant: the cursor must tell them apart by id.
    for n, event in enumerate(created):
        Event.objects.filter(pk=event.pk).update(created_at=base if n % 2 else base + timedelta(seconds=n))
    seen, order, cursor, pages = [], [], None, 0
    while True:
        params = {"limit": 25, **({"cursor": cursor} if cursor else {})}
        body = api.get(f"/api/v1/contacts/{bob.pk}/timeline", params).json()
        seen += [(e["kind"], e["id"]) for e in body["entries"]]
        order += [(e["at"], e["kind"], e["id"]) for e in body["entries"]]
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 120 + 6 and pages == 6
    times = [at for at, _, _ in order]
    assert times == sorted(times, reverse=True)  # newest first, across pages


def test_a_bad_cursor_is_a_422(api, bob):
    assert api.get(f"/api/v1/contacts/{bob.pk}/timeline", {"cursor": "nonsense"}).status_code == 422


def test_the_admin_shows_the_timeline(client, admin_user, bob):
    client.force_login(admin_user)
    page = client.get(f"/admin/herald/contacts/{bob.pk}/timeline/")
    assert page.status_code == 200 and b"550 5.1.1 no such user" in page.content and b"import 3 of people.csv" in page.content
