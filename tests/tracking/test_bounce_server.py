"""The bounce SMTP server over loopback: only its own addresses, limits, and hostile input."""

import smtplib
import socket

import pytest

from campaigns.models import Suppression
from delivery import tokens
from tests.support.smtp import free_port
from tests.support.wait import wait_until
from tests.tracking import samples
from tracking.bounce_server import BounceServer
from tracking.models import Event

pytestmark = pytest.mark.django_db(transaction=True)

RCPT = "bob@example.net"
MID = "spring-bob@shop.example"


@pytest.fixture
def server():
    srv = BounceServer("127.0.0.1", free_port(), max_size=64 * 1024, max_connections=3, timeout=10)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def smtp(server):
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    client.ehlo("mx.example.net")
    yield client
    try:
        client.quit()
    except smtplib.SMTPException:
        pass


def test_dsn_to_a_verp_address_is_recorded_and_suppresses(smtp, bob_send):
    verp = tokens.verp_address(bob_send.pk)
    refused = smtp.sendmail("", [verp], samples.postfix(verp, RCPT, MID))
    assert refused == {}
    event = Event.objects.get()
    assert (event.type, event.send_id, event.status, event.source) == ("bounce", bob_send.pk, "5.1.1", "bounce-server")
    assert Suppression.objects.get().email == RCPT


def test_mail_is_refused_for_any_other_domain_never_relayed(smtp):
    smtp.mail("")
    code, reply = smtp.rcpt("victim@elsewhere.example")
    assert code == 550 and b"5.7.1" in reply
    smtp.rset()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp.sendmail("spammer@bad.example", ["someone@gmail.com"], b"Subject: hi\r\n\r\nbuy now\r\n")


@pytest.mark.parametrize("local", ["bounces", "bounces+", "bounces+123-abcdefabcdefabcd", "postmaster", "unsubscribe+zz"])
def test_unknown_or_forged_bounce_addresses_are_refused(smtp, bob_send, local):
    smtp.mail("")
    code, reply = smtp.rcpt(f"{local}@{tokens.verp_address(1).split('@')[1]}")
    assert code == 550 and b"5.1.1" in reply
    assert not Event.objects.exists()


def test_token_of_the_wrong_purpose_is_refused(smtp, bob_send):
    open_token = tokens.sign("open", bob_send.pk)
    smtp.mail("")
    code, _ = smtp.rcpt(f"bounces+{open_token}@{tokens.verp_address(1).split('@')[1]}")
    assert code == 550


def test_mailto_unsubscribe_through_the_server(smtp, bob, bob_send):
    address = tokens.unsubscribe_mailto(bob_send.pk)
    smtp.sendmail(RCPT, [address], b"From: bob@example.net\r\nSubject: unsubscribe\r\n\r\n")
    assert bob.subscriptions.get().status == "unsubscribed"
    assert Event.objects.get().type == "unsubscribe"


def test_size_limit_is_announced_and_enforced(smtp, bob_send):
    assert smtp.has_extn("size") and int(smtp.esmtp_features["size"]) == 64 * 1024
    verp = tokens.verp_address(bob_send.pk)
    big = samples.postfix(verp, RCPT, MID) + b"X" * 900 * 100 + b"\r\n"
    # A client that declares the size is refused at MAIL; one that does not, after DATA.
    with pytest.raises(smtplib.SMTPSenderRefused) as exc:
        smtp.sendmail("", [verp], big)
    assert exc.value.smtp_code == 552
    smtp.rset()
    smtp.mail("")
    smtp.rcpt(verp)
    code, _ = smtp.data(b"\r\n".join([b"X" * 900] * 100))
    assert code == 552
    assert not Event.objects.exists()


def test_connections_beyond_the_cap_are_answered_421(server):
    held = [smtplib.SMTP("127.0.0.1", server.port, timeout=10) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            assert extra.recv(200).startswith(b"421 4.7.0")
    finally:
        for client in held:
            client.quit()
    # Once they are gone, new clients are served again.
    wait_until(lambda: server.limits.open == 0, timeout=10, message="connections closed")
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    assert client.noop()[0] == 250
    client.quit()


def test_garbage_and_truncated_sessions_get_answers_and_the_server_lives_on(server, smtp, bob_send):
    verp = tokens.verp_address(bob_send.pk)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.recv(200)
        raw.sendall(b"\x00\xff\xfe GARBAGE\r\n" + b"A" * 5000 + b"\r\n")
        assert raw.recv(200)[:1] in (b"5", b"2")
        raw.sendall(b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<" + verp.encode() + b">\r\nDATA\r\nSubject: half")
    # The client vanished mid-DATA. An overlong line is refused; binary junk and a
    # broken DSN get a 250 (nothing to record) and the session carries on.
    with pytest.raises(smtplib.SMTPDataError) as exc:
        smtp.sendmail("", [verp], b"\x00\x01\x02 not a message \xff" * 100)
    assert exc.value.smtp_code == 500
    smtp.rset()
    assert smtp.sendmail("", [verp], b"\x00\x01\x02 not a message \xff\r\n" * 100) == {}
    assert smtp.sendmail("", [verp], samples.gmail(verp, RCPT, MID)[:900]) == {}
    assert smtp.noop()[0] == 250
    code, _ = smtplib.SMTP("127.0.0.1", server.port, timeout=10).noop()
    assert code == 250
