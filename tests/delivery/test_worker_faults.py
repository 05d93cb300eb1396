"""Real Celery workers: a pause that stops a batch between two messages,
and a SIGKILLed worker whose claims come back in seconds."""

import collections
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from delivery import dispatch, engine, ledger, lifecycle
from delivery.heartbeat import HEARTBEAT_TTL
from delivery.models import Send
from tests.delivery.workers import Worker
from tests.support.smtp import Rules, Sink
from tests.support.wait import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def status_of(campaign):
    campaign.refresh_from_db()
    return campaign.status


def claimed(campaign):
    return Send.objects.filter(campaign=campaign, status=Send.Status.SENDING).count()


def test_pause_at_message_2_of_200_stops_the_batch_between_two_messages(tmp_path, make_relay, make_campaign):
    addresses = [f"p{i:03d}@example.com" for i in range(200)]
    with Sink(rules=Rules(delay=0.25)) as server:  # 50 s for the whole batch, until the pause
        make_relay(server.port)
        campaign = make_campaign(addresses)
        worker = Worker("pause", tmp_path, HERALD_BATCH_SIZE=200).wait_ready()
        try:
            lifecycle.start_campaign(campaign.pk)
            server.wait_for(2, timeout=60)
            lifecycle.pause_campaign(campaign.pk)
            paused_at, at_pause = time.monotonic(), len(server.recipients())
            wait_until(lambda: claimed(campaign) == 0, timeout=30, interval=0.05, message="the batch handed back")
            stopped_after = time.monotonic() - paused_at
            after_pause = len(server.recipients()) - at_pause
            counts = lifecycle.counts(campaign.pk)

            server.rules.delay = 0  # the pause is measured; the rest need not take 50 s to prove exactly-once
            lifecycle.resume_campaign(campaign.pk)
            wait_until(lambda: status_of(campaign) == Campaign.Status.FINISHED, timeout=120, message="campaign finished")
        finally:
            worker.stop()
        received = server.recipients()

    # The message being answered and the one whose envelope went with it (pipelining).
    assert after_pause <= 2
    assert stopped_after < 1 + 2 * 0.25
    assert counts["sent"] == at_pause + after_pause and counts["queued"] == 200 - counts["sent"]
    assert sorted(received) == sorted(addresses)  # each exactly once, after the resume too


def test_a_sigkilled_workers_claims_come_back_within_seconds(tmp_path, make_relay, make_campaign):
    addresses = [f"k{i:03d}@d{i % 2}.example" for i in range(400)]
    with Sink(rules=Rules(delay=0.02)) as server:
        make_relay(server.port)
        campaign = make_campaign(addresses)
        first = Worker("doomed", tmp_path, HERALD_BATCH_SIZE=100).wait_ready()
        second = None
        try:
            lifecycle.start_campaign(campaign.pk)
            assert ledger.release_dead() == []  # beat's first look at the heartbeats
            server.wait_for(40, timeout=60)
            first.kill()
            killed_at = time.monotonic()
            held = claimed(campaign)
            assert held > 0 and len(server.recipients()) < 400, "the worker must die mid-batch"
            server.rules.delay = 0  # it did: the survivor need not be slowed down

            back = []
            wait_until(lambda: back.extend(ledger.release_dead()) or claimed(campaign) == 0,
                       timeout=60, interval=0.5, message="the dead worker's claims handed back")
            came_back_after = time.monotonic() - killed_at
            # The task the dead worker had reserved stays unacknowledged in Redis:
            # its rows are still queued, and the sweeper finds them after a grace time.
            later = timezone.now() + timedelta(seconds=ledger.orphan_grace() + 1)
            dispatch.enqueue_sends(back + ledger.sweep(now=later))
            second = Worker("survivor", tmp_path, HERALD_BATCH_SIZE=100).wait_ready()
            wait_until(lambda: status_of(campaign) == Campaign.Status.FINISHED, timeout=120, message="campaign finished")
        finally:
            first.stop()
            if second:
                second.stop()
        received = server.recipients()

    assert len(back) == held
    assert came_back_after < HEARTBEAT_TTL + 5 < ledger.lease_seconds()
    counts = collections.Counter(received)
    assert set(counts) == set(addresses)
    # Only the messages sent since the last write back (one chunk) may go out twice.
    assert sum(n - 1 for n in counts.values()) <= engine.WRITE_CHUNK
    assert lifecycle.counts(campaign.pk)["sent"] == 400
