"""Debian's swaks, a widely used SMTP test client, against the submission server."""

import subprocess

import pytest

from delivery.models import Send
from submission.models import OutboundMessage
from tests.submission.conftest import ALICE_SECRET
from tests.support.programs import program

pytestmark = pytest.mark.django_db(transaction=True)


def swaks(server, *args, auth="LOGIN", secret=ALICE_SECRET):
    return subprocess.run(
        [program("swaks"), "--server", "127.0.0.1", "--port", str(server.port), "--tls", "--auth", auth,
         "--auth-user", "alice", "--auth-password", secret, "--ehlo", "client.test", "--timeout", "30", *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("auth", ["LOGIN", "PLAIN"])
def test_swaks_delivers_a_tagged_message(server, alice, auth):
    result = swaks(server, "--from", "alice@example.com", "--to", "bob@dest.test,carol@dest.test",
                   "--header", "X-Herald-Tag: signup", "--h-From", "Alice <alice@example.com>", auth=auth)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    message = OutboundMessage.objects.get()
    assert message.tag == "signup"
    assert sorted(Send.objects.values_list("email", flat=True)) == ["bob@dest.test", "carol@dest.test"]


def test_swaks_sees_the_refusals(server, alice):
    wrong = swaks(server, "--from", "alice@example.com", "--to", "bob@dest.test", secret="wrong")
    assert wrong.returncode != 0 and "535 5.7.8" in wrong.stdout
    forged = swaks(server, "--from", "alice@example.com", "--to", "bob@dest.test", "--h-From", "ceo@bank.test")
    assert forged.returncode != 0 and "550 5.7.1 From address <ceo@bank.test> is not allowed" in forged.stdout
    assert not OutboundMessage.objects.exists()
