"""Real Celery workers: a domain limit held across two of them, and a SIGKILLed worker that loses nobody."""

import collections
from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from delivery import dispatch, engine, ledger, lifecycle
from delivery.models import DomainThrottle, Period, Send
from tests.delivery.servers import DroppingSink
from tests.delivery.workers import Worker
from tests.support.smtp import Rules
from tests.support.wait import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def finished(campaign):
    campaign.refresh_from_db()
    return campaign.status == Campaign.Status.FINISHED


def max_in_one_second(times):
    times = sorted(times)
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_two_workers_hold_a_five_per_second_domain_limit(tmp_path, relay, sink, make_campaign, settings):
    settings.HERALD_BATCH_SIZE = 6
    DomainThrottle.objects.create(name="example", domains="example.com", rate=5, period=Period.SECOND, burst=2)
    addresses = [f"r{i}@example.com" for i in range(30)]
    campaign = make_campaign(addresses)
    workers = [Worker(f"rate{i}", tmp_path, HERALD_BATCH_SIZE=6) for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        lifecycle.start_campaign(campaign.pk)
        sink.wait_for(30, timeout=60)
        wait_until(lambda: finished(campaign), timeout=30, message="campaign finished")
    finally:
        for w in workers:
            w.stop()

    times = [item.at for item in sink.received]
    assert sorted(sink.recipients()) == sorted(addresses)
    assert max_in_one_second(times) <= 5 + 2
    assert len({item.peer for item in sink.received}) >= 2  # both workers sent


def test_a_killed_worker_restarted_finishes_the_campaign(tmp_path, make_relay, make_campaign, settings):
    settings.HERALD_BATCH_SIZE = 100
    # Slow replies keep messages on the wire long enough to kill the worker mid-campaign.
    with DroppingSink(rules=Rules(delay=0.004)) as server:
        make_relay(server.port)
        addresses = [f"k{i}@d{i % 5}.example" for i in range(1000)]
        campaign = make_campaign(addresses)
        first = Worker("crash1", tmp_path, concurrency=2, HERALD_BATCH_SIZE=100).wait_ready()
        second = None
        try:
            lifecycle.start_campaign(campaign.pk)
            server.wait_for(200, timeout=60)
            first.kill()
            on_the_wire = Send.objects.filter(campaign=campaign, status="sending").count()
            assert 0 < len(server.recipients()) < 1000, "the worker must die mid-campaign"

            # The sweeper (run by beat every 30 s) finds the expired leases and forgotten rows.
            later = timezone.now() + timedelta(seconds=ledger.lease_seconds() + ledger.orphan_grace() + 1)
            dispatch.enqueue_sends(ledger.sweep(now=later))
            second = Worker("crash2", tmp_path, concurrency=2, HERALD_BATCH_SIZE=100).wait_ready()
            wait_until(lambda: finished(campaign), timeout=90, message="campaign finished after restart")
        finally:
            first.stop()
            if second:
                second.stop()
        received = server.recipients()

    counts = collections.Counter(received)
    assert set(counts) == set(addresses)  # nobody lost
    duplicates = sum(n - 1 for n in counts.values())
    # At most one unrecorded chunk per worker process (concurrency 2) can be resent.
    assert duplicates <= min(on_the_wire, 2 * engine.WRITE_CHUNK)
    assert lifecycle.counts(campaign.pk)["sent"] == 1000
