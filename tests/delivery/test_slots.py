"""Reserved send slots: a send that cannot go now waits for its turn, in the ledger or as one task per slot batch."""

import base64
import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import engine, ledger, lifecycle, routing, throttle
from delivery.models import DomainThrottle, Period, Send
from delivery.throttle import Limit, reserve, take_tokens
from tests.delivery.conftest import statuses
from tests.support.wait import wait_until


def test_sends_without_a_token_get_slots_and_newcomers_queue_behind_them():
    limit = Limit("domain:slots.example", rate=2, burst=3)
    start = time.monotonic()
    first = reserve(limit, 5)
    assert first.granted == 3
    assert first.waits(2) == pytest.approx([0.5, 1.0], abs=0.05)
    # Once the slots' tokens are in the bucket, they are kept for the sends holding the slots.
    wait_until(lambda: time.monotonic() - start >= 1.05, interval=0.01)
    newcomer = reserve(limit, 1)
    assert newcomer.granted == 0 and 0 < newcomer.first < 0.5
    assert reserve(limit, 2, held=True).granted == 2


def test_the_bucket_still_bounds_sends_that_come_late_for_their_slots():
    limit = Limit("domain:late.example", rate=1 / 60, burst=2)
    assert reserve(limit, 2).granted == 2
    slots = reserve(limit, 3)
    assert slots.granted == 0 and slots.first == pytest.approx(60, abs=1)
    # Coming back early (or late, all at once) takes no more than the bucket holds: none yet.
    again = reserve(limit, 3, held=True)
    assert again.granted == 0 and again.first > slots.first + 2 * 60 - 1  # behind the slots already promised


def test_slots_given_back_move_the_queue_up():
    limit = Limit("domain:stopped.example", rate=1 / 60, burst=1)
    assert reserve(limit, 11).granted == 1  # ten slots, up to ten minutes ahead
    throttle.unreserve(limit, 10)
    assert reserve(limit, 1).first == pytest.approx(60, abs=1)


def test_plain_tokens_keep_the_reservations_alive():
    limit = Limit("domain:busy.example", rate=1 / 3600, burst=1)
    reserve(limit, 3)
    take_tokens(limit, 1)  # a test send: must not shorten the life of the schedule
    assert throttle.client().ttl(throttle.PREFIX + "bucket:" + limit.key) > 2 * 3600


@pytest.fixture
def slow_campaign(relay, make_campaign):
    DomainThrottle.objects.create(name="slow", domains="slow.example", rate=1, period=Period.SECOND, burst=1)
    campaign = make_campaign([f"s{i:02d}@slow.example" for i in range(60)])
    lifecycle.start_campaign(campaign.pk)
    return campaign


@pytest.mark.django_db
def test_near_slots_go_to_the_broker_as_slot_batches_and_far_ones_wait_in_the_ledger(sink, slow_campaign):
    ids = list(Send.objects.order_by("id").values_list("id", flat=True))
    before = timezone.now()
    requeue = engine.send_batch(ids)
    assert len(sink.recipients()) == 1
    # One task per slot (a bucket of one), each due at its slot, none further than the horizon.
    countdowns = [countdown for _, countdown, reserved in requeue if reserved]
    assert countdowns and len(requeue) == len(countdowns)
    assert countdowns == sorted(countdowns) and countdowns[-1] <= ledger.SLOT_HORIZON < countdowns[-1] + 1
    assert all(len(batch) == 1 for batch, _, _ in requeue)
    published = {i for batch, _, _ in requeue for i in batch}
    parked = Send.objects.filter(parked=True)
    assert parked.count() == 59 - len(requeue) and not published & set(parked.values_list("id", flat=True))
    assert all(s.next_attempt_at > before + timedelta(seconds=ledger.SLOT_HORIZON) for s in parked)
    assert set(statuses(slow_campaign.pk).values()) == {"sent", "queued"}

    # They are handed to the broker when their slot comes near, each once.
    later = timezone.now() + timedelta(seconds=20)
    due = ledger.due_slots(now=later)
    left = Send.objects.filter(parked=True).count()
    assert 15 < len(due) < 25 and left == 59 - len(requeue) - len(due)
    assert all(reserved and len(batch) == 1 and 0 <= countdown <= ledger.SLOT_HORIZON for batch, countdown, reserved in due)
    assert ledger.due_slots(now=later) == []


@pytest.mark.django_db
def test_a_paused_campaign_gives_its_slots_back(sink, slow_campaign):
    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    lifecycle.pause_campaign(slow_campaign.pk)
    assert ledger.due_slots() == []
    assert not Send.objects.filter(parked=True).exists()
    # The queue behind the paused campaign's fifty-nine slots moved up to the front, those of its slot
    # batches on the broker (which find nothing to claim) as well.
    assert reserve(routing.limit_for("slow.example"), 1).first < 5
    lifecycle.resume_campaign(slow_campaign.pk)
    assert statuses(slow_campaign.pk)["s59@slow.example"] == "queued"


@pytest.mark.django_db
def test_the_sweeper_leaves_a_moving_campaign_alone_and_rescues_a_stalled_one(relay, make_campaign, settings):
    settings.HERALD_ORPHAN_GRACE = 60
    moving = make_campaign([f"m{i}@example.com" for i in range(5)], name="Moving")
    stalled = make_campaign([f"s{i}@example.com" for i in range(5)], name="Stalled")
    for campaign in (moving, stalled):
        lifecycle.start_campaign(campaign.pk)
    long_ago = timezone.now() - timedelta(seconds=600)
    Send.objects.update(next_attempt_at=long_ago)
    ledger.mark_progress(ledger.claim(list(Send.objects.filter(campaign=moving, email="m0@example.com")
                                          .values_list("id", flat=True))))
    throttle.client().set(ledger.PROGRESS_KEY + str(stalled.pk), time.time() - 120)

    chunks = list(ledger.sweep_chunks(size=2))
    rescued = [i for chunk in chunks for i in chunk]
    assert sorted(rescued) == sorted(Send.objects.filter(campaign=stalled).values_list("id", flat=True))
    assert max(len(chunk) for chunk in chunks) <= 2
    assert Send.objects.filter(campaign=moving, status="queued", next_attempt_at=long_ago).count() == 4
    assert ledger.sweep() == []  # rescued rows get a fresh grace time


@pytest.mark.django_db
def test_a_batch_asks_redis_for_the_relay_generation_once(relay, make_campaign, monkeypatch):
    calls = []
    real = routing._generation
    monkeypatch.setattr(routing, "_generation", lambda: calls.append(1) or real())
    campaign = make_campaign([f"r{i}@d{i % 10}.example" for i in range(100)])
    lifecycle.start_campaign(campaign.pk)
    assert len(calls) <= 1  # planning the batches
    calls.clear()
    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    assert set(statuses(campaign.pk).values()) == {"sent"}
    assert len(calls) <= 2  # once at the start, and at most once a second after


def _queued_ids(redis_client, queue):
    ids = []
    for raw in redis_client.lrange(queue, 0, -1):
        message = json.loads(raw)
        ids.extend(json.loads(base64.b64decode(message["body"]))[0][0])
    return sorted(ids)


@pytest.mark.django_db(transaction=True)
def test_a_slow_domain_goes_to_the_broker_ahead_of_the_bulk(relay, make_campaign, redis_client):
    """Published in audience order, a throttled domain's batches would come off the queue only at its share of the
    engine's pace (10 % of a campaign sent at 400/s: 40/s, whatever its limit). Its batches go first, reserve their
    slots at once, and it sends at its own rate from the start."""
    DomainThrottle.objects.create(name="slow", domains="slow.example", rate=10, period=Period.SECOND, burst=10)
    DomainThrottle.objects.create(name="fast", domains="fast.example", rate=1000, period=Period.SECOND, burst=1000)
    slow = [f"s{i}@slow.example" for i in range(100)]  # ten seconds of its rate
    fast = [f"f{i}@fast.example" for i in range(50)]  # a twentieth of a second of its rate
    others = [f"o{i}@d{i % 5}.example" for i in range(1000)]  # no limit
    campaign = make_campaign(others[:500] + slow + fast + others[500:])
    redis_client.delete("celery", "celery\x06\x163", "celery\x06\x166")
    lifecycle.start_campaign(campaign.pk)

    def ids_of(addresses):
        return sorted(Send.objects.filter(campaign=campaign, email__in=addresses).values_list("id", flat=True))

    assert _queued_ids(redis_client, "celery\x06\x163") == ids_of(slow)
    assert _queued_ids(redis_client, "celery\x06\x166") == ids_of(others + fast)
