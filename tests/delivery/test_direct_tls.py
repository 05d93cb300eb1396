"""Direct mode: one recipient domain's broken TLS never halts a campaign (opportunistic TLS, as Postfix's "may")."""

import pytest

from campaigns.models import Campaign
from delivery import lifecycle
from delivery.smtp import pool
from tests.delivery.conftest import drain, statuses
from tests.delivery.servers import DNSServer, DroppingSink, RefusingTLSSink
from tests.support.tls import make_certificate, old_protocol_context, server_context

pytestmark = pytest.mark.django_db


@pytest.fixture
def direct_to(settings):
    """Point direct delivery at one loopback MX: every domain in ``domains`` has it as its MX host."""

    def route(server, domains):
        records = {("mx.broken.test", "A"): ["127.0.0.1"]}
        for domain in domains:
            records[(domain, "MX")] = ["10 mx.broken.test."]
        dns = DNSServer(records).__enter__()
        settings.HERALD_DNS_NAMESERVERS = [dns.address]
        settings.HERALD_DIRECT_PORT = server.port
        return dns

    servers = []
    yield lambda server, domains: servers.append(route(server, domains)) or servers[-1]
    for dns in servers:
        dns.__exit__(None, None, None)


def test_an_mx_answering_454_to_starttls_gets_the_mail_in_plaintext(certificate, direct_to, make_campaign, redis_client):
    with RefusingTLSSink(tls_context=server_context(*certificate)) as mx:
        direct_to(mx, ["refuses.test"])
        campaign = make_campaign(["ann@refuses.test", "bob@refuses.test"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        assert sorted(mx.recipients()) == ["ann@refuses.test", "bob@refuses.test"]
        assert mx.tls_sessions == [False, False]
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.FINISHED
        assert set(statuses(campaign.pk).values()) == {"sent"}

        # Later sessions remember the failure and do not try STARTTLS again.
        pool.close_all()
        refused = mx.starttls_refused
        later = make_campaign(["eve@refuses.test"], name="Later news")
        lifecycle.start_campaign(later.pk)
        drain(later.pk)
        assert "eve@refuses.test" in mx.recipients()
        assert mx.starttls_refused == refused
        assert redis_client.keys("*tls-failed:mx.broken.test")


def test_an_mx_speaking_an_old_tls_version_gets_the_mail_in_plaintext(certificate, direct_to, make_campaign):
    with DroppingSink(tls_context=old_protocol_context(*certificate)) as mx:
        direct_to(mx, ["oldtls.test"])
        campaign = make_campaign(["ann@oldtls.test"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        assert mx.recipients() == ["ann@oldtls.test"]
        assert mx.tls_sessions == [False]
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.FINISHED


def test_an_expired_self_signed_certificate_is_not_checked_without_a_policy(tmp_path, direct_to, make_campaign):
    expired = make_certificate(tmp_path, names=("mx.broken.test",), expired=True)
    with DroppingSink(tls_context=server_context(*expired)) as mx:
        direct_to(mx, ["expired.test"])
        campaign = make_campaign(["ann@expired.test"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        assert mx.recipients() == ["ann@expired.test"]
        assert mx.tls_sessions == [True]  # encrypted, unverified: better than plaintext
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.FINISHED

