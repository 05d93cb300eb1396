"""A submitted message is DKIM-signed only for the From domain its login was allowed, never another tenant's."""

from email import message_from_bytes, policy

import dkim as dkimpy
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from campaigns.models import ApiToken
from delivery import dkim, engine, routing
from delivery.models import Send, SendingDomain
from submission.models import OutboundMessage
from tests.submission.conftest import ALICE_SECRET, connect, make_credential, message
from tests.support.smtp import Sink

pytestmark = pytest.mark.django_db(transaction=True)

# The From header of the report: getaddresses() reads a@tenant-a.example, the
# text after the last "@" is tenant-b.example.
FORGED_FROM = '"x" <a@tenant-a.example> (@tenant-b.example>'


def signing_domains(*names):
    rows = []
    for name in names:
        private, public = dkim.generate_key(dkim.RSA)
        rows.append(SendingDomain.objects.create(domain=name, selector="s1", algorithm=dkim.RSA,
                                                 private_key=private, public_key=public))
    return rows


def dns_for(rows):
    records = {f"{r.selector}._domainkey.{r.domain}.".encode(): dkim.txt_value(r.algorithm, r.public_key).encode()
               for r in rows}
    return lambda name, timeout=5: records.get(name)


def signature_tags(data: bytes) -> dict:
    value = str(message_from_bytes(data, policy=policy.default)["DKIM-Signature"]).replace("\r\n", "")
    return {k.strip(): v.strip() for k, v in (part.split("=", 1) for part in value.split(";") if "=" in part)}


@pytest.fixture
def tenants(server, loopback_relay):
    make_credential(username="tenant-a", domains="tenant-a.example")
    make_credential(username="tenant-b", domains="tenant-b.example")
    return signing_domains("tenant-a.example", "tenant-b.example")


def deliver_to(sink, relay):
    relay.port = sink.port
    relay.save()
    routing.forget_relay()
    engine.send_batch(list(Send.objects.values_list("id", flat=True)))


def test_forged_from_header_is_signed_for_the_login_domain_only(server, client_tls, tenants, loopback_relay):
    with connect(server, client_tls, username="tenant-a", secret=ALICE_SECRET) as smtp:
        smtp.sendmail("a@tenant-a.example", ["bob@dest.test"], message(sender=FORGED_FROM))
    outbound = OutboundMessage.objects.get()
    assert outbound.from_domain == "tenant-a.example"

    with Sink() as sink:
        deliver_to(sink, loopback_relay)
        sink.wait_for(1, timeout=30)
    data = sink.received[0].data
    assert data.count(b"DKIM-Signature:") == 1
    assert signature_tags(data)["d"] == "tenant-a.example"
    assert dkimpy.verify(data, dnsfunc=dns_for(tenants))

    # The messages API reports the domain the message was checked and signed for.
    user = User.objects.create_user("operator", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="submission"))
    _, token = ApiToken.issue(user)
    api = Client(headers={"Authorization": f"Bearer {token}"})
    shown = api.get(f"/api/v1/messages/{outbound.pk}").json()
    assert shown["from_domain"] == "tenant-a.example" and "tenant-b" not in shown["from_domain"]


def test_a_domain_taken_away_from_the_login_is_no_longer_signed_for(server, client_tls, tenants, loopback_relay):
    with connect(server, client_tls, username="tenant-a", secret=ALICE_SECRET) as smtp:
        smtp.sendmail("a@tenant-a.example", ["bob@dest.test"], message(sender=FORGED_FROM))
    # The operator moves tenant-a.example to another login before the message goes out.
    outbound = OutboundMessage.objects.get()
    outbound.credential.allowed_domains = "tenant-c.example"
    outbound.credential.save()
    with Sink() as sink:
        deliver_to(sink, loopback_relay)
        sink.wait_for(1, timeout=30)
    assert b"DKIM-Signature:" not in sink.received[0].data
