"""Test sends through the configured relay: real SMTP servers on loopback."""

import datetime
import ipaddress
import ssl

import pytest
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from delivery.models import Relay
from delivery.testsend import send_test
from tests.support.smtp import Rules, Sink


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
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


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
