"""Confirmation mails owed by signups: kept with the signup, stored by a worker's pass, and never lost between."""

import quopri

import pytest
from django.test import Client

from audience import confirmations
from audience.models import ConfirmationDue, SignupForm
from campaigns.models import Contact, MailingList
from delivery.models import Send
from submission.models import OutboundMessage
from tests.audience.signup_support import post_signup

pytestmark = pytest.mark.django_db


@pytest.fixture
def form(db, redis_client):
    weekly = MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)
    form = SignupForm.objects.create(name="Weekly", slug="weekly", consent_text="Yes please",
                                     from_email="news@shop.example", fields=[{"name": "first_name"}])
    form.lists.add(weekly)
    return form


def test_a_signup_claims_the_senders_wake_up_once_until_a_pass_takes_it_back(form, redis_client):
    post_signup(Client(), form, "ann@example.org", ip="198.51.100.1")
    assert redis_client.exists(confirmations.WAKE_KEY)  # the first signup holds it: it publishes the task
    ttl = redis_client.ttl(confirmations.WAKE_KEY)
    assert 0 < ttl <= confirmations.WAKE_SECONDS
    post_signup(Client(), form, "bob@example.org", ip="198.51.100.2")
    assert ConfirmationDue.objects.count() == 2
    # The pass takes the wake-up back before it reads, stores both, and owes nothing more.
    assert confirmations.send_due() == 2
    assert not redis_client.exists(confirmations.WAKE_KEY) and not ConfirmationDue.objects.exists()
    assert sorted(Send.objects.values_list("email", flat=True)) == ["ann@example.org", "bob@example.org"]
    post_signup(Client(), form, "cy@example.org", ip="198.51.100.3")
    assert redis_client.exists(confirmations.WAKE_KEY)  # the next signup claims it again


def test_a_contact_blocklisted_or_erased_before_the_pass_is_not_mailed(form):
    from audience.gdpr import erase

    for n, address in enumerate(("ann@example.org", "bob@example.org", "cy@example.org")):
        post_signup(Client(), form, address, ip=f"198.51.100.{n}", first_name="X")
    Contact.objects.filter(email="ann@example.org").update(status=Contact.Status.BLOCKLISTED)
    erase(Contact.objects.get(email="bob@example.org"))
    assert ConfirmationDue.objects.count() == 2  # the erased contact's is gone with them
    assert confirmations.send_due() == 1
    assert list(Send.objects.values_list("email", flat=True)) == ["cy@example.org"]
    assert not ConfirmationDue.objects.exists()


def test_a_confirmation_that_fails_to_render_is_sent_in_the_forms_language_default(form):
    # Saved past the admin's check: a template that calls what the contact does not have.
    SignupForm.objects.filter(pk=form.pk).update(confirm_subject="Hi {{ contact.first_name }}",
                                                 confirm_body="{{ confirm_url }} {{ contact.nothing() }}")
    post_signup(Client(), form, "ann@example.org", first_name="Ann")
    assert confirmations.send_due() == 1
    raw = bytes(OutboundMessage.objects.get().raw)
    assert b"Subject: Please confirm your subscription" in raw
    assert "/s/c/" in quopri.decodestring(raw.split(b"\r\n\r\n", 1)[1]).decode()


def test_the_mail_goes_to_the_contact_as_they_are_when_it_is_sent(form):
    post_signup(Client(), form, "ann@example.org", first_name="Ann")
    Contact.objects.update(first_name="Annabel")
    SignupForm.objects.filter(pk=form.pk).update(confirm_body="Dear {{ contact.first_name }}: {{ confirm_url }}")
    confirmations.send_due()
    text = quopri.decodestring(bytes(OutboundMessage.objects.get().raw).split(b"\r\n\r\n", 1)[1]).decode()
    assert text.startswith("Dear Annabel: http")


def test_a_pass_stores_a_large_backlog_in_batches_and_leaves_nothing_owed(form):
    for n in range(7):
        post_signup(Client(), form, f"u{n}@example.org", ip=f"198.51.100.{n}")
    assert confirmations.send_due(batch=3) == 7
    assert Send.objects.filter(status=Send.Status.QUEUED).count() == 7 and not ConfirmationDue.objects.exists()
    assert OutboundMessage.objects.count() == 7
