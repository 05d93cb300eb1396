"""Bounce and complaint reports that anyone could write suppress no one.

Only a valid VERP token, or the exact Message-ID of a real Send whose recipient
is the one reported, ties a report to a Send. Anything else is recorded as an
unverified Event (no Send) and suppresses nobody: not through the bounce
mailbox, not through the bounce SMTP server.
"""

import imaplib
import smtplib
import ssl
import time

import pytest

from campaigns.models import Campaign, Contact, MailingList, Subscription, Suppression
from delivery import tokens
from tests.support.smtp import free_port
from tests.tracking import samples
from tests.tracking.conftest import make_send
from tests.tracking.dovecot import Dovecot
from tracking import mailbox
from tracking.bounce_server import BounceServer
from tracking.feedback import process_message
from tracking.models import Event

CEO = "ceo@corp.example"
CFO = "cfo@corp.example"


@pytest.fixture
def campaign():
    newsletter = MailingList.objects.create(name="Newsletter")
    campaign = Campaign.objects.create(name="Spring", subject="Spring news", from_email="news@shop.example",
                                       html_body="<p>Hello</p>", text_body="Hello")
    campaign.lists.add(newsletter)
    return campaign


def contact_with_send(campaign, email):
    contact = Contact.objects.create(email=email)
    Subscription.objects.create(contact=contact, mailing_list=campaign.lists.get())
    return contact, make_send(campaign, contact, message_id=f"{email.split('@')[0]}.4f1c9e@shop.example")


@pytest.fixture
def executives(campaign):
    """Two contacts with real Sends, the newest to each address: what a fallback on the address would find."""
    return contact_with_send(campaign, CEO), contact_with_send(campaign, CFO)


def undelivered_without_token(rcpt):
    """A home-made failure notice: no VERP token, no DSN, only a header naming the victim."""
    return (f"From: Mail Delivery System <MAILER-DAEMON@mx.attacker.example>\r\nTo: bounces@shop.example\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\nX-Failed-Recipients: {rcpt}\r\n\r\n"
            f"This message could not be delivered.\r\n\r\n  {rcpt}\r\n    550 5.1.1 User unknown\r\n").encode()


def arf_without_token(rcpt):
    """An abuse report naming the victim, with no return-path token and a Message-ID Herald never sent."""
    return samples.arf("fbl@attacker.example", rcpt, "made-up@attacker.example")


def assert_nobody_suppressed(*contacts):
    assert not Suppression.objects.exists()
    for contact in contacts:
        contact.refresh_from_db()
        assert contact.status == Contact.Status.ACTIVE
        assert contact.subscriptions.get().status == Subscription.Status.CONFIRMED


def assert_unverified(events, *emails):
    assert sorted(e.email for e in events) == sorted(emails)
    assert all(e.send_id is None and e.campaign_id is None and e.contact_id is None for e in events)


@pytest.fixture(scope="module")
def dovecot():
    server = Dovecot().start()
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_forged_reports_in_the_bounce_mailbox_suppress_no_one(dovecot, settings, executives):
    (ceo, _), (cfo, _) = executives
    settings.HERALD_BOUNCE_MAILBOX_CAFILE = dovecot.cafile
    conn = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps, ssl_context=ssl.create_default_context(
        cafile=dovecot.cafile))
    conn.login(dovecot.user, dovecot.password)
    _, (count,) = conn.select("INBOX")
    if int(count):  # the module's Dovecot is shared: start from an empty mailbox
        conn.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
        conn.expunge()
    for message in (undelivered_without_token(CEO), arf_without_token(CFO)):
        assert conn.append("INBOX", None, imaplib.Time2Internaldate(time.time()), message)[0] == "OK"
    conn.logout()

    result = mailbox.poll(dovecot.url("imaps"))

    assert (result.processed, result.failed) == (2, [])
    assert_nobody_suppressed(ceo, cfo)
    assert_unverified(Event.objects.all(), CEO, CFO)


@pytest.mark.django_db
def test_a_message_id_match_for_another_recipient_suppresses_no_one(campaign, executives):
    """A DSN quoting the CEO's real Message-ID but reporting the CFO: the two do not agree."""
    (ceo, ceo_send), (cfo, _) = executives
    events = process_message(samples.postfix("bounces@attacker.example", CFO, ceo_send.message_id), "", source="imap")
    assert_nobody_suppressed(ceo, cfo)
    assert_unverified(events, CFO)


@pytest.mark.django_db
def test_a_report_that_does_match_a_send_still_suppresses(campaign, executives):
    (ceo, ceo_send), _ = executives
    (event,) = process_message(samples.postfix("bounces@elsewhere.example", CEO, ceo_send.message_id), "", source="imap")
    assert event.send_id == ceo_send.pk
    assert Suppression.objects.get().email == CEO
    # A redacted complaint names nobody: the Message-ID alone ties it to its one Send.
    (complaint,) = process_message(samples.arf("x@y.example", CFO, executives[1][1].message_id, redacted=True), "")
    assert (complaint.type, complaint.send_id) == ("complaint", executives[1][1].pk)


@pytest.mark.django_db(transaction=True)
def test_the_bounce_server_trusts_the_token_not_the_report(executives):
    """A token that verifies but names no Send of this Herald (a deleted one, another install) proves nothing."""
    (ceo, _), (cfo, _) = executives
    verp = tokens.verp_address(999_999)
    server = BounceServer("127.0.0.1", free_port(), timeout=10)
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            assert client.sendmail("", [verp], samples.postfix(verp, CEO, "made-up@attacker.example")) == {}
            assert client.sendmail("", [verp], samples.arf(verp, CFO, "made-up@attacker.example")) == {}
    finally:
        server.stop()
    assert_nobody_suppressed(ceo, cfo)
    assert_unverified(Event.objects.all(), CEO, CFO)


@pytest.mark.django_db
def test_forged_soft_bounces_do_not_count_toward_suppression(settings, campaign, executives):
    settings.HERALD_SOFT_BOUNCE_LIMIT = 2
    (ceo, ceo_send), _ = executives
    forged = undelivered_without_token(CEO).replace(b"550 5.1.1 User unknown", b"552 5.2.2 Mailbox full")
    for n in range(3):
        process_message(forged.replace(b"could not", b"could not (%d)" % n), "", source="imap")
    assert Event.objects.filter(type="soft_bounce", send=None).count() == 3
    # One real soft bounce is one, not the fourth.
    verp = tokens.verp_address(ceo_send.pk)
    (event,) = process_message(samples.postfix(verp, CEO, ceo_send.message_id, status="5.2.2", text="Mailbox full"), verp)
    assert (event.type, event.send_id) == ("soft_bounce", ceo_send.pk)
    assert_nobody_suppressed(ceo)
