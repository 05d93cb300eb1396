"""The preference centre: a recipient's own page, reached from {{ preferences_url }} in any message."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audience.models import SignupForm
from campaigns.models import AuditEntry, Campaign, Contact, MailingList, Subscription
from delivery import planner, tokens
from delivery.message import CompiledCampaign
from delivery.models import Send
from submission.models import OutboundMessage

pytestmark = pytest.mark.django_db


@pytest.fixture
def weekly(db):
    return MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE, public=True)


@pytest.fixture
def offers(db):
    return MailingList.objects.create(name="Offers", public=True)


@pytest.fixture
def internal(db):
    return MailingList.objects.create(name="Staff only")


@pytest.fixture
def ann(weekly):
    contact = Contact.objects.create(email="ann@example.org", first_name="Ann", attributes={"city": "Bonn"})
    Subscription.objects.create(contact=contact, mailing_list=weekly)
    return contact


@pytest.fixture
def campaign(weekly):
    campaign = Campaign.objects.create(
        name="Issue 1", subject="News", from_email="news@shop.example",
        html_body='<p>Hi</p><a href="{{ preferences_url }}">Your preferences</a>',
        text_body="Hi\nPreferences: {{ preferences_url }}\n")
    campaign.lists.add(weekly)
    return campaign


@pytest.fixture
def page(ann):
    return f"/s/p/{tokens.preferences_token(contact_id=ann.pk)}/"


def test_every_message_can_carry_a_signed_link_to_the_recipients_own_page(campaign, ann):
    send = Send.objects.create(campaign=campaign, contact=ann, email=ann.email, domain="example.org")
    compiled = CompiledCampaign(campaign)
    context = compiled.context(send.pk, None)
    assert context["preferences_url"] == tokens.preferences_url(send.pk)
    link = context["preferences_url"].split("/s/p/", 1)[1]
    page = Client().get(f"/s/p/{link}")
    assert page.status_code == 200 and b"ann@example.org" in page.content


def test_a_tampered_link_finds_nobody(page):
    assert Client().get(page[:-3] + "xx/").status_code == 404
    assert Client().get("/s/p/c1/").status_code == 404


def test_the_page_shows_the_subscriptions_and_the_public_lists_only(page, offers, internal):
    html = Client().get(page).content.decode()
    assert "Weekly" in html and "Offers" in html and "Staff only" not in html


def test_a_get_changes_nothing(page, ann):
    Client().get(page, {"action": "unsubscribe_all"})
    ann.refresh_from_db()
    assert ann.status == Contact.Status.ACTIVE


def test_joining_a_public_list_leaving_another_and_editing_the_name(page, ann, weekly, offers, internal):
    SignupForm.objects.create(name="f", slug="f", consent_text="ok", from_email="n@shop.example",
                              fields=[{"name": "city", "editable": True}])
    response = Client().post(page, {"action": "save", "lists": [str(offers.pk), str(internal.pk)],
                                    "first_name": "Anna", "city": "Köln"}, REMOTE_ADDR="198.51.100.3")
    assert response.status_code == 200 and b"saved" in response.content
    ann.refresh_from_db()
    assert ann.first_name == "Anna" and ann.attributes["city"] == "Köln"
    subs = dict(Subscription.objects.filter(contact=ann).values_list("mailing_list__name", "status"))
    # A list not offered to the public cannot be joined from here.
    assert subs == {"Weekly": "unsubscribed", "Offers": "confirmed"}
    joined = Subscription.objects.get(contact=ann, mailing_list=offers)
    assert joined.source == "preferences" and joined.consent_ip == "198.51.100.3" and joined.confirmed_at
    entry = AuditEntry.objects.get(object_type="contact", object_id=str(ann.pk))
    assert entry.detail == {"fields": ["first_name", "city"], "joined": [offers.pk], "left": [weekly.pk]}
    assert "Anna" not in str(entry.detail) and "ann@example.org" not in entry.object_repr


def test_pausing_keeps_the_contact_out_of_campaigns_until_the_date(page, ann, campaign):
    Subscription.objects.update(status=Subscription.Status.CONFIRMED)
    assert planner.count_audience(campaign) == 1
    Client().post(page, {"action": "save", "lists": [str(s) for s in ann.subscriptions.values_list("mailing_list", flat=True)],
                         "pause": "30"})
    ann.refresh_from_db()
    assert ann.paused_until > timezone.now() + timedelta(days=29)
    assert planner.count_audience(campaign) == 0
    Contact.objects.filter(pk=ann.pk).update(paused_until=timezone.now() - timedelta(seconds=1))
    assert planner.count_audience(campaign) == 1


def test_unsubscribing_from_everything(page, ann, campaign):
    Subscription.objects.update(status=Subscription.Status.CONFIRMED)
    Client().post(page, {"action": "unsubscribe_all"})
    ann.refresh_from_db()
    assert ann.status == Contact.Status.UNSUBSCRIBED
    assert set(ann.subscriptions.values_list("status", flat=True)) == {"unsubscribed"}
    assert planner.count_audience(campaign) == 0


def test_asking_for_the_data_mails_a_download_link_to_the_address(page, ann, settings, redis_client):
    import quopri
    import re

    Client().post(page, {"action": "export"})
    Client().post(page, {"action": "export"})  # asked twice: mailed once within the hour
    message = OutboundMessage.objects.get()
    assert Send.objects.get(outbound_id=message.pk).email == "ann@example.org"
    text = quopri.decodestring(bytes(message.raw).split(b"\r\n\r\n", 1)[1]).decode()
    path = re.search(r"/s/export/\S+/", text).group(0)
    download = Client().get(path)
    assert download.status_code == 200 and download.json()["contact"]["email"] == "ann@example.org"
    assert Client().get(path[:-4] + "xx/").status_code == 404


def test_the_page_speaks_the_language_of_the_form_the_contact_signed_up_through(ann, weekly):
    SignupForm.objects.create(name="Wöchentlich", slug="woche", consent_text="Ja", from_email="n@shop.example",
                              language="de")
    Subscription.objects.filter(contact=ann).update(source="form", source_detail="form woche v1")
    page = f"/s/p/{tokens.preferences_token(contact_id=ann.pk)}/"
    html = Client().get(page).content.decode()
    assert 'lang="de"' in html and "Ihre Abonnements" in html and "Von allem abmelden" in html
    saved = Client().post(page, {"action": "save", "lists": [str(weekly.pk)]}).content.decode()
    assert "Ihre Einstellungen sind gespeichert." in saved
