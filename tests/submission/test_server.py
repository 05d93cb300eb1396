"""The submission server as a mail client sees it: smtplib over loopback with real TLS."""

import smtplib

import pytest

from campaigns.models import Contact, Suppression
from delivery.models import Send
from submission.models import OutboundMessage
from tests.submission.conftest import ALICE_SECRET, connect, make_credential, message

pytestmark = pytest.mark.django_db(transaction=True)


def test_message_is_stored_with_one_queued_send_per_recipient(server, client_tls, alice):
    carol = Contact.objects.create(email="Carol@Dest.test")
    raw = message(extra="X-Herald-Tag: receipts\r\n")
    with connect(server, client_tls) as smtp:
        refused = smtp.sendmail("alice@example.com", ["bob@Dest.TEST", "carol@dest.test"], raw)
    assert refused == {}
    stored = OutboundMessage.objects.get()
    assert bytes(stored.raw) == raw
    assert (stored.credential, stored.mail_from, stored.tag, stored.recipients) == (alice, "alice@example.com", "receipts", 2)
    assert stored.message_id.startswith("<") and stored.message_id.endswith("@example.com>")
    sends = {s.email: s for s in Send.objects.filter(outbound_id=stored.pk)}
    assert set(sends) == {"bob@Dest.TEST", "carol@dest.test"}
    assert all(s.status == Send.Status.QUEUED and s.campaign_id is None and s.domain == "dest.test" for s in sends.values())
    assert sends["carol@dest.test"].contact == carol and sends["bob@Dest.TEST"].contact is None


def test_reply_names_the_stored_message(server, client_tls, alice):
    with connect(server, client_tls) as smtp:
        smtp.mail("alice@example.com")
        smtp.rcpt("bob@dest.test")
        code, reply = smtp.data(message())
    assert code == 250
    assert reply.decode().endswith(f"queued as {OutboundMessage.objects.get().pk}")


def test_auth_login_works_as_well_as_plain(server, client_tls, alice):
    with connect(server, client_tls, login=False) as smtp:
        smtp.user, smtp.password = "alice", ALICE_SECRET
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235
        smtp.sendmail("alice@example.com", ["bob@dest.test"], message())
    assert Send.objects.count() == 1


def test_auth_is_offered_only_after_starttls(server, client_tls, alice):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN")[0] == 530
        assert smtp.docmd("MAIL", "FROM:<alice@example.com>")[0] == 530
        smtp.starttls(context=client_tls)
        smtp.ehlo("client.test")
        assert smtp.has_extn("auth")
        assert {"PLAIN", "LOGIN"} <= set(smtp.esmtp_features["auth"].split())
        assert smtp.has_extn("size") and smtp.has_extn("smtputf8") and smtp.has_extn("8bitmime")


def test_mail_from_without_auth_is_refused(server, client_tls, alice):
    with connect(server, client_tls, login=False) as smtp:
        code, reply = smtp.mail("alice@example.com")
    assert code == 530 and b"5.7.0" in reply
    assert not OutboundMessage.objects.exists()


def test_wrong_password_is_refused_and_repeated_failures_block_the_address(server, client_tls, alice, settings):
    def plain_login(secret):
        with connect(server, client_tls, login=False) as smtp:
            smtp.user, smtp.password = "alice", secret
            return smtp.auth("PLAIN", smtp.auth_plain)

    for _ in range(5):
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            plain_login("not-the-secret")
        assert failed.value.smtp_code == 535
    with pytest.raises(smtplib.SMTPAuthenticationError) as blocked:
        plain_login(ALICE_SECRET)
    assert blocked.value.smtp_code == 454
    assert b"Too many failed logins from 127.0.0.1" in blocked.value.smtp_error


def test_unknown_user_and_disabled_credential_cannot_log_in(server, client_tls, alice):
    make_credential("mallory", "mallory-secret-long-enough", enabled=False)
    for username, secret in (("nobody", ALICE_SECRET), ("mallory", "mallory-secret-long-enough")):
        with connect(server, client_tls, login=False) as smtp:
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                smtp.login(username, secret)
            assert failed.value.smtp_code == 535


def test_envelope_sender_outside_the_credential_domains_is_refused(server, client_tls, alice):
    with connect(server, client_tls) as smtp:
        code, reply = smtp.mail("alice@elsewhere.test")
    assert code == 553
    assert b"5.7.1" in reply and b"example.com" in reply
    assert not OutboundMessage.objects.exists()


def test_from_header_outside_the_credential_domains_is_refused(server, client_tls, alice):
    with connect(server, client_tls) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@example.com", ["bob@dest.test"], message(sender="CEO <ceo@bank.test>"))
    assert refused.value.smtp_code == 550
    assert b"5.7.1 From address <ceo@bank.test> is not allowed" in refused.value.smtp_error
    assert not OutboundMessage.objects.exists() and not Send.objects.exists()


def test_oversize_message_is_refused_and_size_is_advertised(tls_files, redis_client, transactional_db, client_tls, settings):
    from submission.server import SubmissionServer, tls_context

    settings.HERALD_SUBMISSION_MAX_SIZE = 20_000
    make_credential()
    srv = SubmissionServer("127.0.0.1", 0, context=tls_context(*tls_files)).start_in_thread()
    try:
        with connect(srv, client_tls) as smtp:
            assert smtp.esmtp_features["size"] == "20000"
            big = message(body="x" * 70 + "\r\n") * 1 + ("y" * 70 + "\r\n").encode() * 400
            with pytest.raises(smtplib.SMTPSenderRefused) as declared:
                smtp.sendmail("alice@example.com", ["bob@dest.test"], big)
            assert declared.value.smtp_code == 552
            # A client that does not declare the size is stopped at the end of DATA.
            smtp.docmd("RSET")
            smtp.docmd("MAIL", "FROM:<alice@example.com>")
            smtp.docmd("RCPT", "TO:<bob@dest.test>")
            code, _ = smtp.data(big)
            assert code == 552
    finally:
        srv.stop_thread()
    assert not OutboundMessage.objects.exists()


def test_smtputf8_and_8bit_messages_are_accepted(server, client_tls, alice):
    raw = message(sender="Jürgen <jürgen@example.com>", to="zoë@dest.test", subject="Grüße", body="Schöne Grüße\r\n")
    with connect(server, client_tls) as smtp:
        smtp.sendmail("jürgen@example.com", ["zoë@dest.test"], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    stored = OutboundMessage.objects.get()
    assert bytes(stored.raw) == raw
    assert Send.objects.get().email == "zoë@dest.test"


def test_implicit_tls(implicit_server, client_tls, alice):
    with smtplib.SMTP_SSL("127.0.0.1", implicit_server.port, context=client_tls, timeout=30) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("auth") and not smtp.has_extn("starttls")
        smtp.login("alice", ALICE_SECRET)
        smtp.sendmail("alice@example.com", ["bob@dest.test"], message())
    assert Send.objects.get().email == "bob@dest.test"


def test_suppressed_recipient_is_recorded_as_skipped_with_the_reason(server, client_tls, alice):
    Suppression.objects.create(email="gone@dest.test", reason=Suppression.Reason.HARD_BOUNCE)
    with connect(server, client_tls) as smtp:
        smtp.sendmail("alice@example.com", ["gone@dest.test", "bob@dest.test"], message())
    gone = Send.objects.get(email="gone@dest.test")
    assert gone.status == Send.Status.SKIPPED and "suppressed (hard_bounce)" in gone.smtp_reply
    assert Send.objects.get(email="bob@dest.test").status == Send.Status.QUEUED


def test_credential_rate_limit_defers_further_messages(server, client_tls, db):
    make_credential(rate_limit=2)
    with connect(server, client_tls) as smtp:
        for _ in range(2):
            smtp.sendmail("alice@example.com", ["bob@dest.test"], message())
        code, reply = smtp.mail("alice@example.com")
    assert code == 450 and b"4.7.1" in reply and b"rate limit" in reply
    assert OutboundMessage.objects.count() == 2


def test_default_tag_applies_when_the_message_has_none(server, client_tls, db):
    make_credential(default_tag="app")
    with connect(server, client_tls) as smtp:
        smtp.sendmail("alice@example.com", ["bob@dest.test"], message())
        smtp.sendmail("alice@example.com", ["bob@dest.test"], message(extra="X-Herald-Tag: reset\r\n"))
    assert sorted(OutboundMessage.objects.values_list("tag", flat=True)) == ["app", "reset"]


def test_lines_starting_with_a_dot_arrive_intact(server, client_tls, alice):
    raw = message(body=".hidden line\r\n..two dots\r\nend\r\n")
    with connect(server, client_tls) as smtp:
        smtp.sendmail("alice@example.com", ["bob@dest.test"], raw)
    assert bytes(OutboundMessage.objects.get().raw) == raw


def test_message_without_from_header_is_refused(server, client_tls, alice):
    with connect(server, client_tls) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@example.com", ["bob@dest.test"], b"Subject: anonymous\r\n\r\nhi\r\n")
    assert refused.value.smtp_code == 550 and b"no From header" in refused.value.smtp_error


def test_skipped_recipient_is_announced_to_listeners(server, client_tls, alice):
    from delivery.signals import send_outcome

    heard = []

    def listener(sender, send, outcome, reply="", **kwargs):
        heard.append((send.email, outcome, reply))

    send_outcome.connect(listener, dispatch_uid="test-skipped")
    try:
        Suppression.objects.create(email="gone@dest.test", reason=Suppression.Reason.COMPLAINT)
        with connect(server, client_tls) as smtp:
            smtp.sendmail("alice@example.com", ["gone@dest.test"], message())
    finally:
        send_outcome.disconnect(dispatch_uid="test-skipped")
    assert heard == [("gone@dest.test", "skipped", "Not sent: the address is suppressed (complaint)")]
