"""Redis and PostgreSQL restarted under a running campaign (private servers), and one throttle held by three workers."""

import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

import psycopg
import pytest

from delivery.models import DomainThrottle, Period
from tests.delivery.workers import ROOT
from tests.resilience.conftest import BATCH, FAST, Stack, account, addresses, finished, make_campaign, relay_to
from tests.resilience.relay import FaultRelay
from tests.resilience.services import PrivatePostgres, PrivateRedis
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow]


def delivered(relay, n):
    return lambda: len(relay.recipients()) >= n


@pytest.mark.django_db(transaction=True)
def test_redis_restarted_mid_campaign_loses_nobody(tmp_path, redis_client):
    redis = PrivateRedis(tmp_path).start()
    stack = Stack(tmp_path, REDIS_URL=redis.url)
    expected = addresses(400)
    try:
        with FaultRelay(reply_delay=0.01) as relay:
            relay_to(relay.port)
            campaign = make_campaign(expected)
            stack.start_workers("a", "b")
            stack.start(campaign)
            wait_until(delivered(relay, 100), timeout=60, message="100 delivered")
            redis.kill()
            at = len(relay.recipients())
            time.sleep(2)  # the outage itself: Redis is down for two seconds
            redis.start()
            injected = [f"Redis killed after {at} delivered, empty again 2 s later (queue, leases, buckets gone)"]
            wait_until(lambda: finished(campaign), timeout=120, message="campaign finished after the Redis restart")
            # PostgreSQL stayed up, so every answer the relay gave was recorded: nothing is sent twice.
            account(campaign, expected, relay.recipients(), injected, bound=0)
    finally:
        stack.stop()
        redis.kill()


def _pg_counts(url, campaign_id):
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status, count(*) FROM delivery_send WHERE campaign_id = %s GROUP BY status",
                            [campaign_id]).fetchall()
        status = conn.execute("SELECT status, status_reason FROM campaigns_campaign WHERE id = %s", [campaign_id]).fetchone()
    return dict(rows), status


def test_postgresql_restarted_mid_campaign_loses_nobody(tmp_path, redis_client):
    pg = PrivatePostgres().start()
    stack = None
    try:
        pg.create_database()
        env = dict(os.environ, DATABASE_URL=pg.url, **{k: str(v) for k, v in FAST.items()})
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        expected = addresses(400)
        with FaultRelay(reply_delay=0.01) as relay:
            out = subprocess.run([sys.executable, "-m", "tests.resilience.ticker", "--setup", str(len(expected)),
                                  "--relay-port", str(relay.port)], cwd=ROOT, env=env, check=True, capture_output=True)
            campaign_id = int(out.stdout.split()[-1])
            stack = Stack(tmp_path, DATABASE_URL=pg.url)
            stack.start_workers("a", "b")

            class Campaign:  # what Stack.start needs
                pk = campaign_id

            stack.start(Campaign)
            wait_until(delivered(relay, 100), timeout=60, message="100 delivered")
            pg.stop()
            at = len(relay.recipients())
            time.sleep(2)  # the outage itself
            pg.start()
            injected = [f"PostgreSQL stopped (fast) after {at} delivered, started again 2 s later"]
            wait_until(lambda: _pg_counts(pg.url, campaign_id)[1][0] == "finished", timeout=120,
                       message="campaign finished after the PostgreSQL restart")
            counts, (status, reason) = _pg_counts(pg.url, campaign_id)
            seen = Counter(relay.recipients())
            duplicates = sum(n - 1 for n in seen.values())
            print(f"\ninjected: {injected[0]}\ncampaign {status}; counts {counts}")
            # Workers ride out the restart while recording outcomes, so duplicates stay
            # well below the bound (one claimed batch per worker process).
            print(f"receiving server: {len(relay.recipients())} messages, {len(seen)} recipients of {len(expected)}, "
                  f"{duplicates} duplicates (bound {2 * BATCH})")
            assert counts == {"sent": len(expected)}
            assert set(seen) == set(expected)
            assert duplicates <= 2 * BATCH
    finally:
        if stack:
            stack.stop()
        pg.destroy()


LIMITS = {"a.example": (5, 5), "b.example": (10, 5), "c.example": (20, 10)}  # domain: (per second, bucket)


def most_in_window(times, width):
    times = sorted(times)
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.django_db(transaction=True)
def test_three_workers_hold_three_domain_limits_at_the_receiving_server(stack):
    expected = [f"r{i}@{d}" for d, (rate, _) in LIMITS.items() for i in range(rate * 6)]
    for domain, (rate, burst) in LIMITS.items():
        DomainThrottle.objects.create(name=domain, domains=domain, rate=rate, period=Period.SECOND, burst=burst)
    with FaultRelay() as relay:
        relay_to(relay.port)
        campaign = make_campaign(expected)
        stack.env["HERALD_BATCH_SIZE"] = "10"
        stack.start_workers("a", "b", "c")
        stack.start(campaign)
        wait_until(lambda: finished(campaign), timeout=90, message="campaign finished")
        account(campaign, expected, relay.recipients(), ["three workers, three domain limits"], bound=0)
        times = defaultdict(list)
        for d in relay.deliveries:
            times[d.rcpt.rpartition("@")[2]].append(d.at)
    for domain, (rate, burst) in LIMITS.items():
        t = sorted(times[domain])
        one_second = most_in_window(t, 1.0)
        sustained = (len(t) - burst) / (t[-1] - t[0])
        print(f"{domain}: limit {rate}/s bucket {burst}; at the server: most in any 1 s {one_second}, "
              f"sustained {sustained:.1f}/s over {t[-1] - t[0]:.1f} s")
        # A token bucket lets through at most its bucket plus one second of rate in any one second.
        assert one_second <= burst + rate
        assert sustained <= rate * 1.1
