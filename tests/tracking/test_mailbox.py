"""Polling a bounce mailbox: a real Dovecot over TLS on loopback, messages processed and marked done."""

import imaplib
import poplib
import ssl
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from campaigns.models import Suppression
from delivery import tokens
from tests.tracking import samples
from tests.tracking.dovecot import Dovecot
from tracking import mailbox
from tracking.models import Event

RCPT = "bob@example.net"
MID = "spring-bob@shop.example"


@pytest.fixture(scope="module")
def dovecot():
    server = Dovecot().start()
    yield server
    server.stop()


@pytest.fixture
def imap(dovecot, settings):
    settings.HERALD_BOUNCE_MAILBOX_CAFILE = dovecot.cafile
    conn = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps, ssl_context=ssl.create_default_context(cafile=dovecot.cafile))
    conn.login(dovecot.user, dovecot.password)
    _, (count,) = conn.select("INBOX")
    if int(count):  # each test starts from an empty mailbox
        conn.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
        conn.expunge()
    yield conn
    conn.logout()


def append(conn, message):
    status, _ = conn.append("INBOX", None, imaplib.Time2Internaldate(time.time()), message)
    assert status == "OK"


def unseen(conn):
    conn.select("INBOX")
    return conn.search(None, "UNSEEN")[1][0].split()


@pytest.mark.django_db(transaction=True)
def test_dsn_in_the_imap_mailbox_is_processed_and_marked_seen(dovecot, imap, bob_send):
    verp = tokens.verp_address(bob_send.pk)
    append(imap, samples.exchange(verp, RCPT, MID))
    append(imap, samples.out_of_office(verp, RCPT))
    result = mailbox.poll(dovecot.url("imaps"))
    assert (result.processed, result.events, result.failed) == (2, 1, [])
    event = Event.objects.get()
    assert (event.type, event.send_id, event.source, event.status) == ("bounce", bob_send.pk, "imap", "5.1.10")
    assert Suppression.objects.get().email == RCPT
    assert unseen(imap) == []
    # Nothing new: the next poll touches nothing.
    assert mailbox.poll(dovecot.url("imaps")).processed == 0


@pytest.mark.django_db(transaction=True)
def test_redacted_complaint_from_a_feedback_loop_is_mapped_by_message_id(dovecot, imap, bob_send):
    append(imap, samples.arf("fbl@shop.example", RCPT, MID, redacted=True))
    mailbox.poll(dovecot.url("imaps"))
    event = Event.objects.get()
    assert (event.type, event.send_id, event.email) == ("complaint", bob_send.pk, RCPT)


@pytest.mark.django_db(transaction=True)
def test_pop3_messages_are_processed_and_deleted(dovecot, imap, bob_send):
    verp = tokens.verp_address(bob_send.pk)
    append(imap, samples.gmail(verp, RCPT, MID))
    result = mailbox.poll(dovecot.url("pop3s"))
    assert (result.processed, result.events) == (1, 1)
    pop = poplib.POP3_SSL("127.0.0.1", dovecot.pop3s, context=ssl.create_default_context(cafile=dovecot.cafile))
    pop.user(dovecot.user)
    pop.pass_(dovecot.password)
    assert pop.stat()[0] == 0
    pop.quit()


@pytest.mark.django_db(transaction=True)
def test_imap_with_starttls(dovecot, imap, bob_send):
    append(imap, samples.postfix(tokens.verp_address(bob_send.pk), RCPT, MID))
    assert mailbox.poll(dovecot.url("imap+starttls")).events == 1
    assert unseen(imap) == []


def test_an_unverified_certificate_is_refused(dovecot, settings):
    settings.HERALD_BOUNCE_MAILBOX_CAFILE = ""
    with pytest.raises(ssl.SSLCertVerificationError):
        mailbox.poll(dovecot.url("imaps"))


@pytest.mark.parametrize("url,says", [
    ("ftp://u:p@host/", "scheme 'ftp'"), ("imaps://host/", "needs user, password and host"),
    ("imaps://u:p@host:port/", "port is not a number"),
])
def test_bad_mailbox_url_says_what_is_wrong(url, says):
    with pytest.raises(ImproperlyConfigured, match=says):
        mailbox.Mailbox.from_url(url)


@pytest.mark.django_db(transaction=True)
def test_periodic_task_polls_the_configured_mailbox(dovecot, imap, bob_send, settings):
    from herald.celery import app
    from tracking.tasks import POLL_TASK, poll_bounce_mailbox, schedule

    settings.HERALD_BOUNCE_MAILBOX = dovecot.url("imaps")
    settings.HERALD_BOUNCE_MAILBOX_INTERVAL = 120
    append(imap, samples.postfix(tokens.verp_address(bob_send.pk), RCPT, MID))
    assert poll_bounce_mailbox.apply().get() == {"processed": 1, "events": 1, "failed": 0}
    schedule(app, settings)
    entry = app.conf.beat_schedule.pop("tracking: poll the bounce mailbox")
    assert entry == {"task": POLL_TASK, "schedule": 120.0}
