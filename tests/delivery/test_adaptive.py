"""Slowing down when a destination asks to, in the real Redis, against real SMTP servers.

Time passes in Redis (its own clock): where a test needs a quiet period to
have passed, it moves the stored time of the last throttle reply back.
"""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import adaptive, engine, ledger, lifecycle, routing, throttle
from delivery.heartbeat import heartbeat
from delivery.models import DomainThrottle, Period, Send
from delivery.smtp import BUSY_SLOT_SECONDS, pool
from delivery.throttle import Limit, take_tokens
from tests.delivery.conftest import drain, statuses
from tests.support.busy import BusyServer
from tests.support.smtp import Rules, Sink

pytestmark = pytest.mark.django_db


def hold_slots(pool_key, n):
    for i in range(n):
        assert throttle.acquire_slot(pool_key, n, f"conn-{i}", 60)


def refill_slowed_buckets():
    """Pretend the slower pace's next tokens are due (instead of waiting for them)."""
    r = throttle.client()
    for key in r.keys(adaptive.BUCKET + "*"):
        r.hset(key, "tokens", 1000)


def direct_route(pool_key):
    return routing.Route(pool_key, [], cap=5, idle_timeout=30, max_messages=100, relay=None, relay_limit=None)


def quiet_for(key, seconds):
    """Pretend the last throttle reply for ``key`` came ``seconds`` ago."""
    r = throttle.client()
    last = float(r.hget(adaptive.STATE + key, "last"))
    r.hset(adaptive.STATE + key, mapping={"last": last - seconds, "cut": last - seconds})


def test_a_throttle_reply_halves_a_limited_groups_rate_and_connections_once_per_moment():
    hold_slots("mx:mx.example.com", 4)
    first = adaptive.slow_down("throttle:7", limit_rate=100, cap=5, pool_key="mx:mx.example.com")
    assert (first.rate, first.connections, first.cut) == (50, 2, True)
    # The rest of the same burst of 421s counts once.
    again = adaptive.slow_down("throttle:7", limit_rate=100, cap=5, pool_key="mx:mx.example.com")
    assert (again.rate, again.connections, again.cut) == (50, 2, False)
    quiet_for("throttle:7", adaptive.HOLD)
    third = adaptive.slow_down("throttle:7", limit_rate=100, cap=5, pool_key="mx:mx.example.com")
    assert (third.rate, third.connections) == (25, 1)
    quiet_for("throttle:7", adaptive.HOLD)
    assert adaptive.slow_down("throttle:7", limit_rate=100, cap=5, pool_key="mx:mx.example.com").connections == 1


def test_an_unlimited_group_slows_down_from_the_rate_it_was_sent_at():
    for _ in range(20):
        adaptive.count(["domain:free.example"], 10)  # 200 messages within moments
    slowed = adaptive.slow_down("domain:free.example", pool_key="mx:free")
    # At least 200 messages over the (bias-corrected) averaging window, halved.
    assert slowed.rate >= 200 / adaptive.SEEN_TAU / 2
    assert slowed.connections == 1
    assert adaptive.slow_down("domain:never-sent.example").rate == adaptive.MIN_RATE


def test_a_slowed_group_admits_sends_at_its_slower_rate_then_recovers_gradually():
    pace = adaptive.Pace(direct_route("mx:x"), Limit("throttle:9", rate=10, burst=10))
    assert pace.admit(50) == (50, 0.0)  # not slowed: everything goes
    adaptive.slow_down("throttle:9", limit_rate=10, cap=4)
    granted, wait = pace.admit(50)
    # Nothing for a pause after the throttle reply, then five a second.
    assert granted == 0 and adaptive.PAUSE < wait <= adaptive.PAUSE + 1 / 5 + 0.01
    assert pace.connections == {"throttle:9": 1} and pace.rate == 5

    quiet_for("throttle:9", adaptive.QUIET + 0.01)
    assert adaptive.state("throttle:9").rate == pytest.approx(6)  # one step: a tenth of the ceiling
    quiet_for("throttle:9", adaptive.STEP * 3)
    assert adaptive.state("throttle:9").rate == pytest.approx(9)
    quiet_for("throttle:9", adaptive.STEP * 10)
    assert adaptive.state("throttle:9") is None  # back at its ceiling: forgotten
    assert pace.admit(50) == (50, 0.0)


def test_greylisting_and_a_full_mailbox_slow_nobody_down(make_relay, make_campaign):
    rules = Rules(data={"grey@example.com": "451 4.7.1 Greylisted, please try again later",
                        "full@example.com": "452 4.2.2 Mailbox full"})
    with Sink(rules=rules) as server:
        relay = make_relay(server.port)
        campaign = make_campaign(["grey@example.com", "full@example.com", "fine@example.com"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
    assert statuses(campaign.pk) == {"grey@example.com": "deferred", "full@example.com": "deferred",
                                     "fine@example.com": "sent"}
    assert adaptive.state("domain:example.com") is None
    assert adaptive.state(f"relay:{relay.pk}") is None


def test_a_421_in_the_relays_own_session_slows_the_relay_not_the_domain(make_relay, make_campaign, settings):
    settings.HERALD_RETRY_FIRST_DELAY = 0
    with BusyServer(per_connection=2, at="mail") as server:
        relay = make_relay(server.port)
        campaign = make_campaign([f"s{i}@example.com" for i in range(5)])
        lifecycle.start_campaign(campaign.pk)
        engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    assert server.throttled == 1 and len(server.received) == 2
    assert adaptive.state(f"relay:{relay.pk}") is not None
    assert adaptive.state("domain:example.com") is None


def test_a_421_after_a_message_through_a_relay_slows_the_recipients_domain(make_relay, make_campaign):
    with BusyServer(per_connection=2, at="dot") as server:
        relay = make_relay(server.port)
        campaign = make_campaign([f"d{i}@example.com" for i in range(5)])
        lifecycle.start_campaign(campaign.pk)
        engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    assert server.throttled == 1
    assert adaptive.state("domain:example.com") is not None
    assert adaptive.state(f"relay:{relay.pk}") is None


def test_a_domain_saying_421_after_five_messages_gets_five_per_connection(make_relay, make_campaign, settings):
    settings.HERALD_RETRY_FIRST_DELAY = 0
    addresses = [f"b{i:02d}@example.com" for i in range(40)]
    with BusyServer(per_connection=5, at="dot") as server:
        make_relay(server.port)
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        for _ in range(200):
            ledger.due_retries(now=timezone.now() + timedelta(hours=1))
            ids = list(Send.objects.filter(status="queued").values_list("id", flat=True))
            if not ids:
                break
            refill_slowed_buckets()
            engine.send_batch(ids)
    assert server.counts() == {a: 1 for a in addresses}
    # The sixth message of the first two connections; then five a connection.
    assert server.throttled == 2
    assert set(statuses(campaign.pk).values()) == {"sent"}


def test_a_per_connection_limit_is_learned_from_two_connections_ending_alike():
    assert adaptive.learn_session("relay:1", 37) == 0  # a relay restarting mid-session teaches nothing
    assert adaptive.learn_session("relay:1", 5) == 0
    assert adaptive.learn_session("relay:1", 5) == 5
    assert adaptive.learn_session("relay:1", 12) == 5  # the lowest count believed holds
    assert adaptive.Pace(direct_route("relay:1"), Limit("domain:example.com", 0, 0)).messages_per_connection(100) == 5


def test_relay_tokens_taken_for_sends_with_no_connection_slot_are_given_back(make_relay, make_campaign):
    with Sink() as server:
        relay = make_relay(server.port, max_connections=1, rate=10, rate_period=Period.MINUTE)
        assert throttle.acquire_slot(f"relay:{relay.pk}", 1, "another-worker", 60)
        campaign = make_campaign(["a@example.com", "b@example.com"])
        lifecycle.start_campaign(campaign.pk)
        engine.send_batch(list(Send.objects.values_list("id", flat=True)))
        assert server.recipients() == []
    assert take_tokens(Limit(f"relay:{relay.pk}", 10 / 60, 10), 10).granted == 10


def test_a_connection_in_use_keeps_its_slot_only_while_its_worker_beats(make_relay):
    with Sink() as server:
        make_relay(server.port, max_connections=1)
        route = routing.route_for("example.com")
        conn = engine._connect(route)
        key = throttle.PREFIX + "conn:" + route.pool_key
        # A short slot, so a killed worker's connection stops counting within seconds...
        expires = throttle.client().zscore(key, conn.holder)
        assert expires - time.time() <= BUSY_SLOT_SECONDS + 1
        # ...renewed by the heartbeat timer for as long as the connection is in use.
        throttle.client().zadd(key, {conn.holder: time.time() + 1})
        conn.hold.renewed -= BUSY_SLOT_SECONDS
        heartbeat._renew_due()
        assert throttle.client().zscore(key, conn.holder) > time.time() + BUSY_SLOT_SECONDS - 2
        assert not throttle.acquire_slot(route.pool_key, 1, "another-worker", 60)
        pool.put(conn, route.max_messages)
        assert conn.hold is None  # idle in the pool: no longer renewed


def test_the_give_up_clock_starts_at_the_first_attempt_not_the_first_claim(make_relay, make_campaign, settings):
    settings.HERALD_GIVE_UP_AFTER = 3600
    with Sink(rules=Rules(data={"patient@example.com": "451 4.3.0 busy, try later"})) as server:
        make_relay(server.port)
        campaign = make_campaign(["patient@example.com"])
        lifecycle.start_campaign(campaign.pk)
        ids = list(Send.objects.values_list("id", flat=True))
        # Claimed and handed back (no token) all through a long throttled backlog.
        start = timezone.now()
        ledger.release(ledger.claim(ids, now=start), 3600, now=start)
        later = start + timedelta(seconds=3600 + 60)
        ledger.release(ledger.claim(ids, now=later - timedelta(seconds=1)), 0.0, now=later - timedelta(seconds=1))
        drain(campaign.pk, now=later)
    send = Send.objects.get()
    assert send.status == "deferred" and send.attempts == 1  # not "gave up" on its first 4xx
    assert send.first_attempt_at == later
    assert send.next_attempt_at > later


def test_a_limited_group_slowed_by_a_421_sends_the_rest_at_the_slower_pace(make_relay, make_campaign):
    row = DomainThrottle.objects.create(name="example", domains="example.com", rate=100, period=Period.SECOND)
    with Sink() as server:
        make_relay(server.port)
        campaign = make_campaign([f"t{i}@example.com" for i in range(30)])
        lifecycle.start_campaign(campaign.pk)
        # The engine sends in the order of the sends' ids, which the snapshot does not tie to the contacts':
        # the first message it sends is the one answered 421, so the rest are still to send.
        first = Send.objects.order_by("id").values_list("email", flat=True).first()
        server.rules.data[first] = "421 4.7.0 too many messages, slow down"
        engine.send_batch(list(Send.objects.values_list("id", flat=True)))
        queued = list(Send.objects.filter(status="queued").values_list("id", flat=True))
        requeue = engine.send_batch(queued)
    slowed = adaptive.state(f"throttle:{row.pk}")
    assert slowed.rate == 50 and slowed.connections == 1
    sent_now = len(queued) - sum(len(ids) for ids, _ in requeue)
    assert sent_now <= 50 and requeue  # no more than the slower pace's bucket at once
