"""Postfix, configured to relay through Herald with SASL over STARTTLS, as an operator would set it up."""

import pytest

from delivery.models import Send
from submission.models import OutboundMessage
from tests.submission.conftest import ALICE_SECRET, message
from tests.submission.postfix import PrivatePostfix
from tests.support.smtp import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def postfix(server):
    instance = PrivatePostfix(server.port, free_port(), "alice", ALICE_SECRET).start()
    yield instance
    instance.stop()


def test_postfix_relays_through_herald_with_sasl(postfix, alice):
    raw = message(to="bob@dest.test, carol@dest.test", extra="X-Herald-Tag: from-postfix\r\n")
    result = postfix.sendmail("alice@example.com", ["bob@dest.test", "carol@dest.test"], raw)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: Send.objects.count() == 2, timeout=60, message=f"Postfix to relay into Herald; log:\n{postfix.log()}")
    stored = OutboundMessage.objects.get()
    assert stored.mail_from == "alice@example.com" and stored.tag == "from-postfix"
    assert b"Received:" in bytes(stored.raw)  # Postfix's own trace header: it really went through Postfix
    assert sorted(Send.objects.values_list("email", flat=True)) == ["bob@dest.test", "carol@dest.test"]
    log = postfix.log()
    assert "TLS connection established to 127.0.0.1" in log and "status=sent" in log
