"""DKIM signatures that dkimpy verifies against the published key (no DNS: a dnsfunc answers)."""

from email import message_from_bytes, policy

import dkim as dkimpy
import pytest

from campaigns.models import Campaign
from delivery import dkim
from delivery.message import compile_campaign
from delivery.models import SendingDomain
from tests.content.conftest import FakeSend


def dns_answering(domain_row):
    record = dkim.txt_value(domain_row.algorithm, domain_row.public_key).encode()

    def dnsfunc(name, timeout=5):
        expected = f"{domain_row.selector}._domainkey.{domain_row.domain}.".encode()
        return record if name == expected else None

    return dnsfunc


@pytest.fixture(params=[dkim.RSA, dkim.ED25519])
def signing_domain(request, db):
    private, public = dkim.generate_key(request.param)
    return SendingDomain.objects.create(domain="example.com", selector="s2026", algorithm=request.param,
                                        private_key=private, public_key=public)


def test_messages_are_signed_and_verify(signing_domain, campaign, alice):
    built = compile_campaign(campaign).build(FakeSend(9, alice.email), alice)
    assert built.data.startswith(b"DKIM-Signature: v=1; a=" + signing_domain.algorithm.encode())
    assert dkimpy.verify(built.data, dnsfunc=dns_answering(signing_domain))
    signature = message_from_bytes(built.data, policy=policy.default)["DKIM-Signature"]
    tags = dict(part.strip().split("=", 1) for part in str(signature).replace("\r\n", "").split(";") if "=" in part)
    signed = tags["h"].replace(" ", "").split(":")
    for name in ("from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post",
                 "feedback-id", "x-herald-campaign"):
        assert name in signed
    assert tags["d"] == "example.com" and tags["s"] == "s2026"


def test_tampering_breaks_the_signature(signing_domain, campaign, alice):
    built = compile_campaign(campaign).build(FakeSend(9, alice.email), alice)
    dns = dns_answering(signing_domain)
    assert not dkimpy.verify(built.data.replace(b"Subject: Hello Alice", b"Subject: Hello Mallory"), dnsfunc=dns)
    assert not dkimpy.verify(built.data.replace(b"Dear Alice", b"Dear Mallo"), dnsfunc=dns)


def test_other_from_domains_are_not_signed(signing_domain, db, alice):
    other = Campaign.objects.create(name="o", subject="s", from_email="news@elsewhere.org", html_body="<p>x</p>")
    assert not compile_campaign(other).build(FakeSend(1, alice.email), alice).data.startswith(b"DKIM-Signature")


def test_private_key_is_stored_encrypted(signing_domain):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT private_key FROM delivery_sendingdomain WHERE id = %s", [signing_domain.pk])
        stored = cursor.fetchone()[0]
    assert stored.startswith("fernet:") and "PRIVATE KEY" not in stored
    assert SendingDomain.objects.get(pk=signing_domain.pk).private_key.startswith("-----BEGIN PRIVATE KEY-----")


def test_dns_record_splits_long_values():
    _private, public = dkim.generate_key(dkim.RSA)
    record = dkim.dns_record("example.com", "herald", dkim.RSA, public)
    assert record["name"] == "herald._domainkey.example.com"
    assert record["value"] == f"v=DKIM1; k=rsa; p={public}"
    assert all(len(chunk) <= 255 for chunk in record["zone_line"].split('"')[1::2])
    _private, public = dkim.generate_key(dkim.ED25519)
    assert dkim.txt_value(dkim.ED25519, public).startswith("v=DKIM1; k=ed25519; p=") and len(public) == 44
