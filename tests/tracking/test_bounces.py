"""Reading DSNs and ARF reports from several MTAs, and the suppression policy they trigger."""

import pytest
from django.test import override_settings

from campaigns.models import Contact, Suppression
from delivery import tokens
from tests.tracking import samples
from tests.tracking.conftest import make_send
from tracking import bounces
from tracking.feedback import process_message
from tracking.models import Event

RCPT = "bob@example.net"
MID = "spring-bob@shop.example"


def verp(send_id=42):
    return tokens.verp_address(send_id)


@pytest.mark.parametrize("message,kind,status", [
    (samples.postfix(verp(), RCPT, MID), "hard", "5.1.1"),
    (samples.postfix(verp(), RCPT, MID, status="4.2.2", text="Mailbox full"), "soft", "4.2.2"),
    (samples.exim(verp(), RCPT, MID), "hard", "5.1.1"),
    (samples.exim(verp(), RCPT, MID, code="550 5.7.1 Message rejected: sender IP on blocklist"), "policy", "5.7.1"),
    (samples.exchange(verp(), RCPT, MID), "hard", "5.1.10"),
    (samples.exchange(verp(), RCPT, MID, status="5.2.2", diagnostic="554 5.2.2 mailbox full;STOREDRV.Deliver"), "soft", "5.2.2"),
    (samples.gmail(verp(), RCPT, MID), "hard", "5.1.1"),
    (samples.gmail(verp(), RCPT, MID, action="delayed", status="4.4.1", diagnostic="421 4.4.1 timed out"), "delayed", "4.4.1"),
])
def test_dsn_of_each_mta_is_classified(message, kind, status):
    (report,) = bounces.parse(message, verp())
    assert (report.kind, report.status, report.recipient, report.send_id) == (kind, status, RCPT, 42)
    assert report.message_id == MID


def test_non_standard_bounce_is_identified_by_its_verp_token_and_text():
    (report,) = bounces.parse(samples.exim_plain(verp(), RCPT, MID), "")
    assert (report.send_id, report.kind, report.recipient) == (42, "soft", RCPT)
    (report,) = bounces.parse(samples.exim_plain(verp(), RCPT, MID, reason="550 No such user here"), "")
    assert report.kind == "hard"


def test_arf_complaint_maps_back_through_the_return_path_or_message_id():
    (report,) = bounces.parse(samples.arf(verp(), RCPT, MID), "")
    assert (report.kind, report.send_id, report.recipient, report.feedback_type) == ("complaint", 42, RCPT, "abuse")
    (redacted,) = bounces.parse(samples.arf(verp(), RCPT, MID, redacted=True), "")
    assert (redacted.kind, redacted.send_id, redacted.message_id) == ("complaint", None, MID)
    assert bounces.parse(samples.arf(verp(), RCPT, MID, feedback_type="not-spam"), "") == []


def test_auto_reply_is_not_a_bounce():
    assert bounces.parse(samples.out_of_office(verp(), RCPT), verp()) == []


def test_forged_token_identifies_nothing():
    forged = verp().replace("bounces+", "bounces+1")
    (report,) = bounces.parse(samples.postfix(forged, RCPT, MID), "")
    assert report.send_id is None


@pytest.mark.parametrize("junk", [
    b"", b"\x00\xff" * 500, b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n",
    samples.postfix(verp(), RCPT, MID)[:700], b"Subject: =?utf-8?b?////?=\r\n\r\n" + b"A" * 100000,
    b"Content-Type: message/delivery-status\r\n\r\nAction: failed\r\nStatus: 9.9.9.9.9\r\n",
])
def test_garbage_and_truncated_input_never_raises(junk):
    assert isinstance(bounces.parse(junk, "x@y"), list)


@pytest.mark.parametrize("status,text,kind", [
    ("5.1.1", "", "hard"), ("5.0.0", "550 5.1.1 user unknown", "hard"), ("4.7.0", "greylisted", "policy"),
    ("", "452 4.2.2 mailbox full", "soft"), ("", "user unknown", "hard"), ("", "Mailbox quota exceeded", "soft"),
    ("5.2.2", "", "soft"),
    ("5.7.1", "550 5.7.1 Client host blocked using zen.spamhaus.org", "policy"),  # a precise code outranks the words
    # ... except a plain "no such mailbox" that names no refusal of the sender: vpopmail files it under 5.7.17.
    ("5.0.0", "550 sorry, no mailbox here by that name. (#5.7.17)", "hard"),
    ("5.7.1", "550 5.7.1 user unknown; message rejected as spam", "policy"),
])
def test_classify_on_code_and_text(status, text, kind):
    assert bounces.classify("failed", status, text) == kind


@pytest.mark.django_db
class TestPolicy:
    def test_hard_bounce_suppresses_at_once_and_a_replay_records_nothing(self, bob, bob_send):
        message = samples.postfix(verp(bob_send.pk), RCPT, MID)
        (event,) = process_message(message, verp(bob_send.pk))
        assert (event.type, event.send_id, event.status, event.source) == ("bounce", bob_send.pk, "5.1.1", "bounce-server")
        suppression = Suppression.objects.get()
        assert (suppression.email, suppression.reason, suppression.source_event_id) == (RCPT, "hard_bounce", event.pk)
        bob.refresh_from_db()
        assert bob.status == Contact.Status.BLOCKLISTED
        assert process_message(message, verp(bob_send.pk)) == []
        assert Event.objects.count() == 1

    def test_complaint_suppresses_even_when_redacted(self, bob, bob_send):
        (event,) = process_message(samples.arf(verp(bob_send.pk), RCPT, MID, redacted=True), "", source="imap")
        assert (event.type, event.send_id, event.email) == ("complaint", bob_send.pk, RCPT)
        assert Suppression.objects.get().reason == "complaint"

    def test_delay_is_recorded_but_is_no_bounce(self, bob_send):
        message = samples.gmail(verp(bob_send.pk), RCPT, MID, action="delayed", status="4.4.1", diagnostic="timed out")
        (event,) = process_message(message, verp(bob_send.pk))
        assert event.type == "delayed"
        assert not Suppression.objects.exists()

    def test_policy_refusal_does_not_suppress_the_recipient(self, bob_send):
        message = samples.exim(verp(bob_send.pk), RCPT, MID, code="550 5.7.1 Rejected: sender IP on blocklist")
        (event,) = process_message(message, verp(bob_send.pk))
        assert event.type == "rejected"
        assert not Suppression.objects.exists()

    @override_settings(HERALD_SOFT_BOUNCE_LIMIT=3, HERALD_SOFT_BOUNCE_WINDOW_DAYS=30)
    def test_soft_bounces_suppress_after_the_configured_count(self, campaign, bob):
        from campaigns.models import Campaign

        for n in range(3):
            other = Campaign.objects.create(name=f"c{n}", subject="s", from_email="news@shop.example")
            send = make_send(other, bob)
            process_message(samples.exchange(verp(send.pk), RCPT, f"m{n}@shop.example", status="4.2.2",
                                             diagnostic="452 4.2.2 mailbox full"), verp(send.pk))
            assert Suppression.objects.exists() == (n == 2)
        suppression = Suppression.objects.get()
        assert suppression.reason == "soft_bounce" and "3 soft bounces" in suppression.detail
        bob.refresh_from_db()
        assert bob.status == Contact.Status.ACTIVE  # soft bounces do not blocklist, they only suppress

    def test_mailto_unsubscribe(self, bob, bob_send):
        rcpt = tokens.unsubscribe_mailto(bob_send.pk)
        (event,) = process_message(b"Subject: unsubscribe\r\n\r\n", rcpt)
        assert (event.type, event.source) == ("unsubscribe", "mailto")
        assert bob.subscriptions.get().status == "unsubscribed"
