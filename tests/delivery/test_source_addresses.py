"""Direct delivery from a pool of source addresses: each bound with its HELO name, each with its own limits."""

import collections

import pytest

from campaigns.models import Campaign
from delivery import lifecycle
from delivery.models import DomainThrottle, Period, RelayGroup, RoutingRule
from tests.delivery.servers import DNSServer, DroppingSink
from tests.delivery.test_workers import finished, max_in_one_second
from tests.delivery.workers import Worker
from tests.support.wait import wait_until

SOURCES = "127.0.0.2 mta2.herald.test\n127.0.0.3 mta3.herald.test"


@pytest.fixture
def mx_dns(settings):
    """pool.test's MX host is 127.0.0.1; the sources' reverse DNS names them, and one name resolves elsewhere."""
    records = {
        ("pool.test", "MX"): ["10 mx.pool.test."],
        ("mx.pool.test", "A"): ["127.0.0.1"],
        ("2.0.0.127.in-addr.arpa", "PTR"): ["mta2.herald.test."],
        ("3.0.0.127.in-addr.arpa", "PTR"): ["mta3.herald.test."],
        ("mta2.herald.test", "A"): ["127.0.0.2"],
        ("mta3.herald.test", "A"): ["127.0.0.9"],
    }
    with DNSServer(records) as dns:
        settings.HERALD_DNS_NAMESERVERS = [dns.address]
        yield dns


def direct_from(sources):
    group = RelayGroup.objects.create(name="our addresses", direct=True, sources=sources)
    RoutingRule.objects.create(group=group)
    return group


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_direct_delivery_binds_each_source_address_with_its_helo_and_its_own_limit(tmp_path, mx_dns, make_campaign,
                                                                                   settings):
    with DroppingSink() as mx:
        settings.HERALD_DIRECT_PORT = mx.port
        direct_from(SOURCES)
        # A provider's limit holds per sending address, as providers count it.
        DomainThrottle.objects.create(name="pool", domains="pool.test", rate=4, period=Period.SECOND, burst=2)
        addresses = [f"r{i}@pool.test" for i in range(32)]
        campaign = make_campaign(addresses)
        env = {"HERALD_BATCH_SIZE": 8, "HERALD_DNS_NAMESERVERS": mx_dns.address, "HERALD_DIRECT_PORT": mx.port}
        workers = [Worker(f"source{i}", tmp_path, **env) for i in range(2)]
        try:
            for w in workers:
                w.wait_ready()
            lifecycle.start_campaign(campaign.pk)
            mx.wait_for(32, timeout=60)
            wait_until(lambda: finished(campaign), timeout=30, message="campaign finished")
        finally:
            for w in workers:
                w.stop()

        assert sorted(mx.recipients()) == sorted(addresses)
        by_source = collections.defaultdict(list)
        for item in mx.received:
            by_source[item.peer[0]].append(item.at)
        assert set(by_source) == {"127.0.0.2", "127.0.0.3"}
        for times in by_source.values():
            assert max_in_one_second(times) <= 4 + 2
        helos = {(server.session.peer[0], server.session.host_name) for server in mx.sessions}
        assert helos == {("127.0.0.2", "mta2.herald.test"), ("127.0.0.3", "mta3.herald.test")}
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.FINISHED


@pytest.mark.django_db
def test_the_admin_warns_when_a_helo_name_is_not_what_reverse_dns_gives(admin_client, mx_dns):
    response = admin_client.post("/admin/delivery/relaygroup/add/", {
        "name": "ours", "direct": "on", "sources": SOURCES + "\n127.0.0.4 mta4.herald.test\n127.0.0.2 wrong.herald.test",
    }, follow=True)
    assert response.status_code == 200
    warnings = [str(m) for m in response.context["messages"]]
    # 127.0.0.2 greeting as mta2 is right (PTR and A agree); as another name it is not.
    assert len([w for w in warnings if "127.0.0.2: " in w]) == 1
    assert any("127.0.0.3: its reverse DNS names mta3.herald.test, which does not resolve back to it" in w
               for w in warnings)
    assert any("127.0.0.4: no reverse DNS (PTR) record" in w for w in warnings)
    assert any("127.0.0.2: HELO name wrong.herald.test does not match its reverse DNS (mta2.herald.test)" in w
               for w in warnings)
    assert RelayGroup.objects.get(name="ours").source_list()[0] == ("127.0.0.2", "mta2.herald.test")


@pytest.mark.django_db
def test_a_source_address_that_is_not_an_address_is_refused(admin_client):
    response = admin_client.post("/admin/delivery/relaygroup/add/", {"name": "ours", "direct": "on",
                                                                      "sources": "mail.example.com helo"})
    assert response.status_code == 200
    assert "line 1: &#x27;mail.example.com&#x27; is not an IPv4 or IPv6 address" in response.content.decode()
    assert not RelayGroup.objects.exists()
