"""The sending-domain API: keys generated or imported, DNS record shown, private key never returned."""

import pytest
from django.contrib.auth.models import User

from campaigns.models import ApiToken
from delivery import dkim
from delivery.models import SendingDomain


@pytest.fixture
def auth(db):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(User.objects.create_superuser('root', '', 'x'))[1]}"}


def test_create_generates_a_key_and_never_returns_it(client, auth):
    response = client.post("/api/v1/sending-domains", {"domain": "Example.com", "algorithm": dkim.ED25519},
                           content_type="application/json", **auth)
    assert response.status_code == 201
    body = response.json()
    assert body["domain"] == "example.com" and body["has_private_key"] is True
    assert body["dns_record"]["name"] == "herald._domainkey.example.com"
    assert body["dns_record"]["value"] == f"v=DKIM1; k=ed25519; p={body['public_key']}"
    assert "private_key" not in body and "PRIVATE" not in response.content.decode()
    listed = client.get("/api/v1/sending-domains", **auth)
    assert "PRIVATE" not in listed.content.decode()


def test_import_rotate_and_errors(client, auth):
    pem, public = dkim.generate_key(dkim.RSA)
    created = client.post("/api/v1/sending-domains", {"domain": "example.org", "private_key": pem},
                          content_type="application/json", **auth).json()
    assert created["public_key"] == public and created["algorithm"] == dkim.RSA
    rotated = client.patch(f"/api/v1/sending-domains/{created['id']}", {"generate_key": True},
                           content_type="application/json", **auth).json()
    assert rotated["public_key"] != public
    bad = client.patch(f"/api/v1/sending-domains/{created['id']}", {"private_key": "not a key"},
                       content_type="application/json", **auth)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("private_key:")
    assert SendingDomain.objects.get().public_key == rotated["public_key"], "nothing stored is lost"
    dup = client.post("/api/v1/sending-domains", {"domain": "example.org"}, content_type="application/json", **auth)
    assert dup.status_code == 409
    assert client.delete(f"/api/v1/sending-domains/{created['id']}", **auth).status_code == 204
