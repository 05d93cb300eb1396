"""Real workers against a destination that says "421 slow down": after five messages per connection, or above 40 a second.

The domain has no configured limit: Herald learns from the 421s. After the
first few it sends at most five messages per connection, or below the
server's rate, over fewer connections, and every recipient gets the campaign
once.
"""

import pytest

from delivery import lifecycle
from tests.delivery.servers import DNSServer
from tests.resilience.conftest import finished, make_campaign
from tests.support.busy import BusyServer
from tests.support.wait import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RECIPIENTS = 600


def direct_to(stack, server, dns):
    """Direct delivery (no relay): busy.test's MX is the busy server."""
    stack.env.update(HERALD_DNS_NAMESERVERS=dns.address, HERALD_DIRECT_PORT=str(server.port), HERALD_MTA_STS="false")


def test_a_domain_saying_421_after_five_messages_per_connection_is_slowed_down(stack):
    expected = [f"r{i}@busy.test" for i in range(RECIPIENTS)]
    records = {("busy.test", "MX"): ["10 mx.busy.test."], ("mx.busy.test", "A"): ["127.0.0.1"]}
    with BusyServer(per_connection=5) as server, DNSServer(records) as dns:
        direct_to(stack, server, dns)
        campaign = make_campaign(expected)
        stack.start_workers("a", "b")
        stack.start(campaign)
        wait_until(lambda: finished(campaign), timeout=120, message="campaign finished")
        print(f"\n{server.throttled} replies 421 over {server.connections} connections "
              f"(at most {server.most_open} at once) for {len(server.received)} messages")
        counts = lifecycle.counts(campaign.pk)
        assert counts["sent"] == RECIPIENTS, counts
        assert server.counts() == {a: 1 for a in expected}
        # Today's engine keeps opening connections at full speed: a 421 every
        # sixth message. Slowing down after the first few keeps them to a handful.
        assert server.throttled <= 6



def test_a_domain_saying_421_above_a_rate_is_sent_to_below_it(stack):
    expected = [f"r{i}@busy.test" for i in range(RECIPIENTS)]
    records = {("busy.test", "MX"): ["10 mx.busy.test."], ("mx.busy.test", "A"): ["127.0.0.1"]}
    with BusyServer(per_second=40) as server, DNSServer(records) as dns:
        direct_to(stack, server, dns)
        campaign = make_campaign(expected)
        stack.start_workers("a", "b")
        stack.start(campaign)
        wait_until(lambda: finished(campaign), timeout=120, message="campaign finished")
        print(f"\n{server.throttled} replies 421 over {server.connections} connections "
              f"(at most {server.most_open} at once) for {len(server.received)} messages")
        assert lifecycle.counts(campaign.pk)["sent"] == RECIPIENTS
        assert server.counts() == {a: 1 for a in expected}
        # Today's engine sends at full speed into the full window: a 421 for
        # nearly every connection. Slowing down keeps them to a handful.
        assert server.throttled <= 10
