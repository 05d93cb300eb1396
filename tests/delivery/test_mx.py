"""Direct delivery to MX hosts found with dnspython, from a DNS server the test runs on loopback."""

import pytest

from campaigns.models import Suppression
from delivery import lifecycle, mx, routing
from delivery.models import Send
from tests.delivery.conftest import drain
from tests.delivery.servers import DNSServer, DroppingSink
from tests.support.tls import server_context

pytestmark = pytest.mark.django_db


@pytest.fixture
def dns_server(settings, sink):
    records = {
        # Preference 10 points at ::1, where nothing listens: the next MX takes it.
        ("shop.test", "MX"): ["10 mx1.hosting.test.", "20 mx2.hosting.test."],
        ("brand.test", "MX"): ["20 mx2.hosting.test.", "10 mx1.hosting.test."],
        ("mx1.hosting.test", "AAAA"): ["::1"],
        ("mx2.hosting.test", "A"): ["127.0.0.1"],
        ("plain.test", "A"): ["127.0.0.1"],  # no MX: the domain itself
        ("nomail.test", "MX"): ["0 ."],
    }
    with DNSServer(records) as server:
        settings.HERALD_DNS_NAMESERVERS = [server.address]
        settings.HERALD_DIRECT_PORT = sink.port
        yield server


def test_mx_hosts_are_ordered_by_preference_and_cached(dns_server):
    assert mx.lookup("brand.test") == (["mx1.hosting.test", "mx2.hosting.test"], ["::1", "127.0.0.1"])
    asked = len(dns_server.queries)
    mx.lookup("brand.test")
    assert len(dns_server.queries) == asked  # answered from the TTL cache
    assert mx.lookup("plain.test") == (["plain.test"], ["127.0.0.1"])
    with pytest.raises(mx.NoRoute, match="null MX") as null:
        mx.lookup("nomail.test")
    assert null.value.permanent
    with pytest.raises(mx.NoRoute, match="does not exist"):
        mx.lookup("missing.test")


def test_domains_sharing_mx_hosts_share_one_limit(dns_server):
    assert routing.group_of("shop.test") == routing.group_of("brand.test") != routing.group_of("plain.test")


def test_direct_mode_delivers_through_the_next_mx_and_bounces_dead_domains(dns_server, sink, make_campaign):
    campaign = make_campaign(["ann@shop.test", "bob@plain.test", "eve@missing.test", "joe@nomail.test"])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    assert sorted(sink.recipients()) == ["ann@shop.test", "bob@plain.test"]
    result = {s.email: (s.status, s.smtp_reply) for s in Send.objects.all()}
    assert result["ann@shop.test"][0] == "sent"
    assert result["eve@missing.test"][0] == "bounced" and "does not exist" in result["eve@missing.test"][1]
    assert result["joe@nomail.test"][0] == "bounced"


def test_direct_mode_uses_starttls_when_the_mx_offers_it(settings, certificate, make_campaign):
    with DroppingSink(tls_context=server_context(*certificate)) as server:
        records = {("secure.test", "MX"): ["10 mx.secure.test."], ("mx.secure.test", "A"): ["127.0.0.1"]}
        with DNSServer(records) as dns_server:
            settings.HERALD_DNS_NAMESERVERS = [dns_server.address]
            settings.HERALD_DIRECT_PORT = server.port
            campaign = make_campaign(["ann@secure.test"])
            lifecycle.start_campaign(campaign.pk)
            drain(campaign.pk)
        assert server.recipients() == ["ann@secure.test"]
        assert server.tls_sessions == [True]


@pytest.mark.parametrize("failure", [DNSServer.TIMEOUT, DNSServer.SERVFAIL])
def test_a_dns_failure_for_a_domain_without_mx_defers_and_never_suppresses(settings, sink, make_campaign, failure):
    records = {("slow.test", "A"): failure, ("fine.test", "A"): ["127.0.0.1"]}  # neither has an MX record
    with DNSServer(records) as server:
        settings.HERALD_DNS_NAMESERVERS = [server.address]
        settings.HERALD_DNS_TIMEOUT = 1
        settings.HERALD_DIRECT_PORT = sink.port
        campaign = make_campaign(["ann@slow.test", "bob@fine.test"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
    assert sink.recipients() == ["bob@fine.test"]
    ann = Send.objects.get(email="ann@slow.test")
    assert ann.status == "deferred" and ann.next_attempt_at is not None
    assert "5.1.2" not in ann.smtp_reply and "slow.test" in ann.smtp_reply
    assert not Suppression.objects.filter(email_key="ann@slow.test").exists()
