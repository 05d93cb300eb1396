"""Signing up through a hosted form: evidence kept, double opt-in, and every way a bot or a stranger is refused."""

import quopri
import time

import pytest
from django.core import signing
from django.test import Client

from audience import confirmations
from audience.models import ConfirmationDue, SignupForm
from campaigns.models import Campaign, Contact, MailingList, Subscription
from delivery import planner
from delivery.models import Send
from submission.models import OutboundMessage
from tests.audience.signup_support import confirm_link, post_signup, served_ago, token_in_page

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    return redis_client


@pytest.fixture
def weekly(db):
    return MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)


@pytest.fixture
def offers(db):
    return MailingList.objects.create(name="Offers", optin=MailingList.OptIn.SINGLE)


@pytest.fixture
def form(weekly):
    form = SignupForm.objects.create(
        name="Weekly news", slug="weekly", consent_text="Yes, send me the weekly news. I can unsubscribe any time.",
        from_email="news@shop.example", from_name="Shop news",
        fields=[{"name": "first_name", "label": "First name", "required": True},
                {"name": "city", "label": "City", "editable": True}])
    form.lists.add(weekly)
    return form


def confirmation_mails():
    """The confirmation mails in the ledger, once a worker's pass has stored the ones owed."""
    confirmations.send_due()
    return [bytes(m.raw) for m in OutboundMessage.objects.order_by("id")]


def text_of(raw: bytes) -> str:
    return quopri.decodestring(raw.split(b"\r\n\r\n", 1)[1]).decode()


def test_the_hosted_page_shows_the_fields_the_consent_text_and_a_hidden_honeypot(client, form):
    page = client.get("/s/weekly/").content.decode()
    assert 'name="email"' in page and 'name="first_name"' in page and 'name="city"' in page
    assert "Yes, send me the weekly news." in page
    assert 'class="hp"' in page and 'name="website"' in page and token_in_page(page)


def test_a_signup_to_a_double_opt_in_list_waits_for_confirmation_with_its_evidence(client, form, weekly):
    response = post_signup(client, form, "Ann@Example.org", first_name="Ann", city="Bonn")
    assert response.status_code == 200 and b"Thank you" in response.content
    contact = Contact.objects.get()
    assert (contact.email, contact.first_name, contact.attributes) == ("Ann@Example.org", "Ann", {"city": "Bonn"})
    sub = Subscription.objects.get()
    assert sub.status == Subscription.Status.UNCONFIRMED and sub.confirmed_at is None
    assert sub.source == "form" and sub.source_detail == "form weekly v1"
    assert sub.consent_ip == "198.51.100.7" and sub.consent_user_agent == "Mozilla/5.0 (test)"
    assert sub.consent_text == form.consent_text
    # The confirmation mail is owed with the signup; a worker's pass puts it in the ledger, queued for the
    # engine, with a link that confirms.
    assert ConfirmationDue.objects.get().contact == contact and not Send.objects.exists()
    assert confirmations.send_due() == 1 and not ConfirmationDue.objects.exists()
    send = Send.objects.get()
    assert send.campaign_id is None and send.email == "Ann@Example.org" and send.status == Send.Status.QUEUED
    [raw] = confirmation_mails()
    assert b"Subject: Please confirm your subscription" in raw and b"From: Shop news <news@shop.example>" in raw
    assert "/s/c/" in text_of(raw) and "Weekly" in text_of(raw)


def test_a_pending_signup_is_not_in_a_campaign_until_confirmed(client, form, weekly):
    post_signup(client, form, "ann@example.org", first_name="Ann")
    campaign = Campaign.objects.create(name="Issue 1", subject="News", from_email="news@shop.example", html_body="<p>Hi</p>")
    campaign.lists.add(weekly)
    assert planner.count_audience(campaign) == 0
    link = confirm_link(text_of(confirmation_mails()[0]))
    path = link.split("://", 1)[1].split("/", 1)[1]
    Client().post("/" + path)
    assert planner.count_audience(campaign) == 1


def test_a_link_scanner_fetching_the_confirmation_link_confirms_nothing(client, form):
    post_signup(client, form, "ann@example.org", first_name="Ann")
    path = "/" + confirm_link(text_of(confirmation_mails()[0])).split("/", 3)[3]
    page = Client().get(path)
    assert page.status_code == 200 and b"Confirm subscription" in page.content and b"ann@example.org" in page.content
    assert Subscription.objects.get().status == Subscription.Status.UNCONFIRMED
    done = Client().post(path)
    assert done.status_code == 200 and b"confirmed" in done.content
    sub = Subscription.objects.get()
    assert sub.status == Subscription.Status.CONFIRMED and sub.confirmed_at is not None
    assert Client().post(path).status_code == 200  # a second press changes nothing
    assert Subscription.objects.get().confirmed_at == sub.confirmed_at


def test_an_expired_or_forged_confirmation_link_confirms_nothing(client, form, settings):
    post_signup(client, form, "ann@example.org", first_name="Ann")
    contact = Contact.objects.get()
    old = signing.b62_encode(int(time.time()) - settings.HERALD_CONFIRM_LINK_DAYS * 86400 - 60)
    # TimestampSigner.sign_object signs "<payload>:<timestamp>" under the salt: the same, made long ago.
    expired = signing.Signer(salt="herald.signup.confirm").sign(f"{_object_payload(contact, form)}:{old}")
    answer = Client().post(f"/s/c/{expired}/")
    assert answer.status_code == 410 and b"expired" in answer.content
    assert Client().post(f"/s/c/{expired[:-3]}abc/").status_code in (404, 410)
    assert Subscription.objects.get().status == Subscription.Status.UNCONFIRMED


def _object_payload(contact, form):
    import json

    from django.core.signing import b64_encode

    data = json.dumps({"c": contact.pk, "f": form.pk, "l": [form.lists.get().pk]}, separators=(",", ":")).encode()
    return b64_encode(data).decode()


def test_the_honeypot_gets_the_thank_you_page_and_stores_nothing(client, form):
    response = client.post("/s/weekly/", {"email": "bot@example.org", "first_name": "B", "ts": served_ago(form),
                                          "website": "http://spam.example"}, REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 200 and b"Thank you" in response.content
    assert not Contact.objects.exists() and not OutboundMessage.objects.exists()


def test_a_post_faster_than_a_person_types_is_refused(client, form):
    page = client.get("/s/weekly/").content.decode()
    response = client.post("/s/weekly/", {"email": "ann@example.org", "first_name": "Ann", "ts": token_in_page(page)})
    assert response.status_code == 400 and b"quicker than a person" in response.content
    assert not Contact.objects.exists()


def test_a_forged_or_stale_form_token_is_refused(client, form, settings):
    for token in ("1:abc:def", served_ago(form, settings.HERALD_SIGNUP_FORM_MAX_AGE + 60)):
        response = client.post("/s/weekly/", {"email": "ann@example.org", "first_name": "Ann", "ts": token})
        assert b"expired" in response.content
    assert not Contact.objects.exists()


def test_signups_are_rate_limited_per_address_and_per_client(client, form, settings):
    statuses = [post_signup(client, form, "ann@example.org", ip=f"198.51.100.{i}", first_name="Ann").status_code
                for i in range(settings.HERALD_SIGNUP_LIMIT_PER_ADDRESS + 1)]
    assert statuses[:-1] == [200] * settings.HERALD_SIGNUP_LIMIT_PER_ADDRESS and statuses[-1] == 429
    statuses = [post_signup(client, form, f"u{i}@example.org", ip="203.0.113.5", first_name="U").status_code
                for i in range(settings.HERALD_SIGNUP_LIMIT_PER_IP + 1)]
    assert statuses[-1] == 429 and statuses.count(200) == settings.HERALD_SIGNUP_LIMIT_PER_IP
    assert not Contact.objects.filter(email=f"u{settings.HERALD_SIGNUP_LIMIT_PER_IP}@example.org").exists()


def test_the_answer_is_the_same_whether_or_not_the_address_is_subscribed(client, form, weekly):
    first = post_signup(client, form, "ann@example.org", ip="198.51.100.1", first_name="Ann")
    Subscription.objects.update(status=Subscription.Status.CONFIRMED)
    again = post_signup(client, form, "ann@example.org", ip="198.51.100.2", first_name="Ann")
    Contact.objects.update(status=Contact.Status.BLOCKLISTED)
    blocked = post_signup(client, form, "ann@example.org", ip="198.51.100.3", first_name="Ann")
    new = post_signup(client, form, "bob@example.org", ip="198.51.100.4", first_name="Ann")
    assert first.content == again.content == blocked.content == new.content
    assert {r.status_code for r in (first, again, blocked, new)} == {200}


def test_a_repeated_signup_mails_the_confirmation_again_at_most_once_an_hour(client, form):
    for i in range(3):
        post_signup(client, form, "ann@example.org", ip=f"198.51.100.{i}", first_name="Ann")
    assert len(confirmation_mails()) == 1


def test_a_single_opt_in_list_is_joined_at_once_without_mail(client, form, offers, weekly):
    form.lists.set([offers])
    post_signup(client, form, "ann@example.org", first_name="Ann")
    sub = Subscription.objects.get()
    assert sub.status == Subscription.Status.CONFIRMED and sub.mailing_list == offers and sub.source == "form"
    assert not OutboundMessage.objects.exists()


def test_the_subscriber_chooses_among_the_forms_lists(client, form, weekly, offers):
    form.lists.add(offers)
    form.subscriber_chooses = True
    form.save()
    refused = post_signup(client, form, "ann@example.org", first_name="Ann")
    assert refused.status_code == 400 and b"at least one list" in refused.content
    post_signup(client, form, "ann@example.org", ip="198.51.100.9", first_name="Ann", lists=[str(offers.pk)])
    assert list(Subscription.objects.values_list("mailing_list__name", flat=True)) == ["Offers"]


def test_required_fields_and_a_bad_address_are_reported_in_the_forms_language(client, form):
    form.language = "de"
    form.save()
    response = post_signup(client, form, "not-an-address")
    text = response.content.decode()
    assert response.status_code == 400 and "Dieses Feld ist erforderlich." in text and "keine gültige" in text
    assert 'lang="de"' in text and not Contact.objects.exists()


def test_changing_the_consent_text_bumps_the_version_each_signup_records(client, form):
    form.consent_text = "Yes, and the monthly digest too."
    form.save()
    post_signup(client, form, "ann@example.org", first_name="Ann")
    sub = Subscription.objects.get()
    assert sub.source_detail == "form weekly v2" and sub.consent_text == "Yes, and the monthly digest too."


def test_a_thank_you_redirect_goes_only_to_an_allowed_host(client, form, settings):
    settings.HERALD_SIGNUP_REDIRECT_HOSTS = ["shop.example"]
    form.redirect_url = "https://shop.example/thanks"
    form.full_clean()
    form.save()
    response = post_signup(client, form, "ann@example.org", first_name="Ann")
    assert response.status_code == 303 and response["Location"] == "https://shop.example/thanks"
    form.redirect_url = "https://evil.example/"
    with pytest.raises(Exception, match="HERALD_SIGNUP_REDIRECT_HOSTS"):
        form.full_clean()


def test_the_embed_snippet_is_a_plain_form_posting_to_the_hosted_page(client, form, settings):
    from audience.views import embed_snippet

    html = embed_snippet(form)
    assert f'action="{settings.HERALD_BASE_URL}/s/weekly/"' in html and 'method="post"' in html
    assert "<script" not in html and 'name="website"' in html
    # Posted from another site, it has no fresh timestamp: the hosted page asks once more, keeping what was typed.
    response = client.post("/s/weekly/", {"email": "ann@example.org", "first_name": "Ann", "website": ""})
    assert response.status_code == 200 and b'value="ann@example.org"' in response.content
    assert b"press the button once more" in response.content
    assert not Contact.objects.exists()


def test_unconfirmed_form_signups_are_purged_after_the_set_days(client, form, settings):
    from datetime import timedelta

    from django.utils import timezone

    from audience.purge import purge_unconfirmed

    post_signup(client, form, "ann@example.org", first_name="Ann")
    confirmations.send_due()
    assert purge_unconfirmed() == 0
    later = timezone.now() + timedelta(days=settings.HERALD_UNCONFIRMED_PURGE_DAYS + 1)
    assert purge_unconfirmed(now=later) == 1
    assert not Contact.objects.exists() and not Send.objects.filter(email="ann@example.org").exists()
