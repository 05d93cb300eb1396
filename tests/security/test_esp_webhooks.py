"""ESP webhooks are closed unless a secret is configured, and what they report suppresses only Herald's own sends.

The shipped default has no ANYMAIL_WEBHOOK_SECRET: then no webhook URL exists
at all (anymail would otherwise serve anyone and only warn).
"""

import base64
import json

import pytest
from django.conf import settings
from django.core import checks
from django.test import override_settings

from campaigns.models import Campaign, Contact, MailingList, Subscription, Suppression
from tests.support.urls import url_settings
from tests.tracking.conftest import make_send
from tracking.models import Event

pytestmark = pytest.mark.django_db

SECRET = "herald-esp:9c1d6f0b2a7e4e35b8f1c3a0d5e7f9a1"
CEO = "ceo@corp.example"
WEBHOOKS = ["amazon_ses", "sendgrid", "mailgun", "postmark"]


@pytest.fixture
def ceo():
    newsletter = MailingList.objects.create(name="Newsletter")
    contact = Contact.objects.create(email=CEO)
    Subscription.objects.create(contact=contact, mailing_list=newsletter)
    return contact


@pytest.fixture
def ceo_send(ceo):
    campaign = Campaign.objects.create(name="Spring", subject="Spring news", from_email="news@shop.example")
    return make_send(campaign, ceo, message_id="1a.5c3e0f9b2d7a11e4c8@shop.example")


def sendgrid_events(email, smtp_id="<14c5d75ce93.dfd.64b469@ismtpd-555>"):
    return [
        {"email": email, "timestamp": 1772442000, "smtp-id": smtp_id, "event": "bounce", "sg_event_id": "b-1",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001", "reason": "550 5.1.1 unknown recipient",
         "status": "5.1.1", "type": "bounce"},
        {"email": email, "timestamp": 1772442001, "smtp-id": smtp_id, "event": "spamreport", "sg_event_id": "c-1",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001"},
        {"email": email, "timestamp": 1772442002, "smtp-id": smtp_id, "event": "unsubscribe", "sg_event_id": "u-1",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001"},
    ]


def post(client, esp, payload, secret=None):
    headers = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()} if secret else {}
    return client.post(f"/webhooks/anymail/{esp}/tracking/", json.dumps(payload), content_type="application/json",
                       **headers)


def assert_ceo_untouched(ceo):
    assert not Suppression.objects.exists()
    ceo.refresh_from_db()
    assert ceo.status == Contact.Status.ACTIVE
    assert ceo.subscriptions.get().status == Subscription.Status.CONFIRMED


def test_at_the_shipped_defaults_no_webhook_is_served(client, ceo, ceo_send):
    assert not settings.ANYMAIL.get("WEBHOOK_SECRET")  # the default, not a fixture's choice
    for esp in WEBHOOKS:
        assert post(client, esp, sendgrid_events(CEO)).status_code == 404
        assert post(client, esp, sendgrid_events(CEO), secret="anything:at-all").status_code == 404
    assert not Event.objects.exists()
    assert_ceo_untouched(ceo)


def test_with_a_secret_the_webhook_refuses_requests_without_it(client, ceo, ceo_send):
    with url_settings(ANYMAIL={"WEBHOOK_SECRET": SECRET}):
        assert post(client, "sendgrid", sendgrid_events(CEO)).status_code == 400
        assert post(client, "sendgrid", sendgrid_events(CEO), secret="herald-esp:wrong").status_code == 400
    assert not Event.objects.exists()
    assert_ceo_untouched(ceo)


def test_an_event_about_no_send_of_this_herald_suppresses_no_one(client, ceo, ceo_send):
    """The ESP account may carry other applications' mail: an address alone is no Send of ours."""
    with url_settings(ANYMAIL={"WEBHOOK_SECRET": SECRET}):
        assert post(client, "sendgrid", sendgrid_events(CEO), secret=SECRET).status_code == 200
    events = Event.objects.all()
    assert sorted(e.type for e in events) == ["bounce", "complaint", "unsubscribe"]
    assert all(e.send_id is None and e.contact_id is None and e.email == CEO for e in events)
    assert_ceo_untouched(ceo)


def test_an_event_about_a_send_of_this_herald_applies(client, ceo, ceo_send):
    with url_settings(ANYMAIL={"WEBHOOK_SECRET": SECRET}):
        payload = sendgrid_events(CEO, smtp_id=f"<{ceo_send.message_id}>")
        assert post(client, "sendgrid", payload, secret=SECRET).status_code == 200
    assert set(Event.objects.values_list("send_id", flat=True)) == {ceo_send.pk}
    assert Suppression.objects.get().email == CEO
    ceo.refresh_from_db()
    assert ceo.status == Contact.Status.BLOCKLISTED


def deploy_errors(**overrides):
    with override_settings(**overrides):
        return {m.id for m in checks.run_checks(include_deployment_checks=True) if m.id.startswith("tracking.")}


def test_check_deploy_insists_on_a_strong_secret_when_webhooks_are_wanted():
    # Nothing configured: no webhooks, nothing to complain about.
    assert deploy_errors(DEBUG=False) == set()
    # Mailgun's signing key says webhooks are wanted, but without the secret none is served.
    assert deploy_errors(DEBUG=False, ANYMAIL={"MAILGUN_WEBHOOK_SIGNING_KEY": "key-0123456789"}) == {"tracking.E001"}
    assert deploy_errors(DEBUG=False, ANYMAIL={"WEBHOOK_SECRET": "user:pass"}) == {"tracking.E002"}
    assert deploy_errors(DEBUG=False, ANYMAIL={"WEBHOOK_SECRET": "a-long-secret-without-a-colon-0123456789"}) == {
        "tracking.E002"}
    assert deploy_errors(DEBUG=False, ANYMAIL={"WEBHOOK_SECRET": SECRET}) == set()
