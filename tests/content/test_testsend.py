"""Test sends through the configured relay: real SMTP servers on loopback."""


import pytest
from aiosmtpd.smtp import AuthResult

from delivery.models import Relay
from delivery.testsend import send_test
from tests.support.smtp import Rules, Sink
from tests.support.tls import make_certificate, server_context


def relay_for(sink, **extra):
    return Relay.objects.create(name=f"relay {sink.port}", host="127.0.0.1", port=sink.port,
                                security=extra.pop("security", Relay.Security.NONE), **extra)


@pytest.mark.django_db
def test_sends_the_real_message_to_each_address(sink, campaign, alice):
    relay_for(sink)
    results = send_test(campaign, ["alice@example.com", "stranger@example.org"])
    assert [r.ok for r in results] == [True, True], results
    sink.wait_for(2, timeout=10)
    by_rcpt = {item.rcpt_tos[0]: item.message for item in sink.received}
    assert by_rcpt["alice@example.com"]["Subject"] == "Hello Alice", "an existing contact's fields are used"
    assert by_rcpt["stranger@example.org"]["Subject"] == "Hello", "an unknown address gets empty fields"
    assert by_rcpt["alice@example.com"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert sink.received[0].mail_from.startswith("bounces+")


@pytest.mark.django_db
def test_per_address_errors_and_bad_input(campaign):
    with Sink(rules=Rules(rcpt={"gone@example.com": "550 5.1.1 no such user"})) as server:
        relay_for(server)
        results = send_test(campaign, ["ok@example.com", "gone@example.com", "not an address"])
        by_address = {r.address: r for r in results}
        assert by_address["ok@example.com"].ok
        assert not by_address["gone@example.com"].ok
        assert by_address["gone@example.com"].detail == f"550 5.1.1 no such user from 127.0.0.1:{server.port}"
        assert by_address["not an address"].detail.startswith("not a valid address")
        server.wait_for(1, timeout=10)
    with pytest.raises(ValueError, match="at most 10"):
        send_test(campaign, [f"a{i}@example.com" for i in range(11)])


@pytest.mark.django_db
def test_relay_authentication_failure_is_reported(campaign):
    def refuse(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=False, handled=False)

    with Sink(authenticator=refuse, auth_require_tls=False) as server:
        relay_for(server, username="herald", password="wrong")
        [result] = send_test(campaign, ["alice@example.com"])
    assert not result.ok
    assert result.detail.startswith("535 5.7.8") and result.detail.endswith(f"from 127.0.0.1:{server.port}")


@pytest.mark.django_db
def test_without_relay_uses_email_host(settings, sink, campaign):
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", sink.port
    [result] = send_test(campaign, ["alice@example.com"])
    assert result.ok, result
    sink.wait_for(1, timeout=10)


@pytest.mark.django_db
def test_unreachable_relay(campaign):
    from tests.support.smtp import free_port

    Relay.objects.create(name="down", host="127.0.0.1", port=free_port(), security=Relay.Security.NONE)
    [result] = send_test(campaign, ["alice@example.com"])
    assert not result.ok and result.detail.startswith("cannot connect to 127.0.0.1:")


@pytest.fixture
def tls_context(tmp_path):
    return server_context(*make_certificate(tmp_path))


@pytest.mark.django_db
def test_starttls_relay_checks_the_certificate(tls_context, campaign):
    with Sink(tls_context=tls_context, require_starttls=True) as server:
        relay = relay_for(server, security=Relay.Security.STARTTLS, verify_certificate=True)
        [refused] = send_test(campaign, ["alice@example.com"])
        assert not refused.ok and "certificate" in refused.detail.lower()
        relay.verify_certificate = False
        relay.save()
        [accepted] = send_test(campaign, ["alice@example.com"])
        assert accepted.ok, accepted
        server.wait_for(1, timeout=10)
