"""The bounce server is no relay (asked by a real client, swaks), limits message size, and survives fuzzed sessions."""

import socket
import subprocess

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.models import Suppression
from delivery.tokens import sign, verp_address
from tests.support.programs import program
from tests.support.smtp import free_port
from tracking.bounce_server import BounceServer
from tracking.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server():
    srv = BounceServer("127.0.0.1", free_port(), max_size=32 * 1024, max_connections=20, timeout=5)
    srv.start()
    yield srv
    srv.stop()


def swaks(server, to, *extra):
    result = subprocess.run([program("swaks"), "--server", "127.0.0.1", "--port", str(server.port),
                             "--from", "spammer@bad.example", "--to", to, "--helo", "mx.bad.example", "--timeout", "10", *extra],
                            capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("to", [
    "victim@elsewhere.example",
    f"victim%elsewhere.example@{django_settings.HERALD_BOUNCE_DOMAIN}",  # the percent hack
    f"@{django_settings.HERALD_BOUNCE_DOMAIN}:victim@elsewhere.example",  # a source route
    f"victim@elsewhere.example@{django_settings.HERALD_BOUNCE_DOMAIN}",
    f"bounces+{sign('bounce', 1)}@elsewhere.example",  # a valid token at another domain
    f"postmaster@{django_settings.HERALD_BOUNCE_DOMAIN}",
])
def test_a_real_client_asking_to_relay_is_refused(server, to):
    code, transcript = swaks(server, to)
    print(transcript[-600:])
    assert code != 0, "swaks reports success only when the message was accepted"
    assert "<** 5" in transcript or "<** 4" in transcript  # the server's refusal, as swaks prints it
    assert "250 2.0.0" not in transcript


def test_an_oversized_report_is_refused(server):
    code, transcript = swaks(server, verp_address(1), "--body", "x" * 80 * 1024)
    assert code != 0 and ("552" in transcript or "SIZE" in transcript.upper())
    assert Event.objects.count() == 0


VERB = st.sampled_from([b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY", b"EXPN",
                        b"AUTH PLAIN", b"STARTTLS", b"BDAT 10", b"QUIT", b"HELP", b"XCLIENT ADDR=1.2.3.4", b""])
ARG = st.one_of(
    st.sampled_from([b"<>", b"<victim@elsewhere.example>", b"<a@b>", b"<" + verp_address(1).encode() + b">",
                     b"<bounces+" + b"9" * 70 + b"@" + django_settings.HERALD_BOUNCE_DOMAIN.encode() + b">",
                     b"<x@y> SIZE=99999999999", b"<\x00@\xff>", b"\xff\xfe", b"A" * 1100]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
LINE = st.builds(lambda v, a: (v + b" " + a).strip(), VERB, ARG)
BODY = st.lists(st.one_of(st.binary(max_size=60).map(lambda b: b.replace(b"\r\n", b"")), st.just(b"."), st.just(b"..")),
                max_size=8)


@given(lines=st.lists(st.one_of(LINE, BODY.map(lambda b: b"\r\n".join(b))), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_sessions_get_answers_and_never_relay(server, lines):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        greeting = s.recv(512)
        assert greeting.startswith(b"220")
        s.sendall(b"\r\n".join(lines) + b"\r\n")
        s.shutdown(socket.SHUT_WR)
        replies = b""
        try:
            while chunk := s.recv(65536):
                replies += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    for line in replies.split(b"\r\n"):
        if line:
            assert line[:3].isdigit() and line[:1] in b"2345", f"not an SMTP reply: {line[:80]!r}"
    # Nothing reached anyone: no event for an address the server does not own, no suppression.
    assert not Event.objects.exclude(send_id=1).exists()
    assert Suppression.objects.count() == 0
    # And the server still serves the next client.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        assert s.recv(512).startswith(b"220")
        s.sendall(b"NOOP\r\n")
        assert s.recv(512).startswith(b"250")
