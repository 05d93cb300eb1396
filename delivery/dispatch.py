"""Putting sends on the Celery queue as batch tasks, grouped by domain group.

``enqueue_sends(send_ids)`` is public: anything that creates queued Send rows
(the audience snapshot, the SMTP submission server, retries, the sweeper)
hands them to the engine through it.
"""

from celery import current_app
from django.db import transaction
from django.db.models import Count
from redis.exceptions import RedisError

from delivery import planner, routing
from delivery.models import Send
from delivery.throttle import client as throttle_client

# How many send tasks were published, ever (monitoring and the scale benchmark).
PUBLISHED_KEY = "herald:published-batches"
# A campaign's own batches, all published when it starts, go on the broker at a
# lower priority than every other task (with Redis, Celery consumes priority 0
# first): slot batches, retries, submitted mail and beat's tasks do not wait
# behind a million-recipient campaign.
BULK_PRIORITY = 6
# Batches of a campaign's slow domain groups go ahead of its bulk (see slow_domains).
FEED_PRIORITY = 3
# A group is slow when its share would take longer than this at its own rate,
# and longer than the whole campaign at the sum of every group's rate.
SLOW_MIN_SECONDS = 1.0

# Found by name in the Celery app: delivery.tasks imports this module, so this
# module never imports it (delivery's AppConfig.ready registers the tasks).
SEND_BATCH = "delivery.send_batch"


def _publish(batches, countdown=0.0, reserved=False, priority=None):
    """Publish (group, ids) batches, all with one countdown, or (ids, countdown) slot batches when ``reserved``."""
    send_batch = current_app.tasks[SEND_BATCH]
    eager = send_batch.app.conf.task_always_eager
    if countdown and eager:
        # Eager mode ignores countdowns: publishing would spin on an empty
        # bucket. The rows stay queued and the sweeper brings them back.
        return 0
    count = 0
    # One producer (and broker connection) for the whole call rather than one
    # acquired from the pool per task. The short argsrepr spares Celery a
    # saferepr of hundreds of ids per task, which cost more than the publish
    # itself; monitoring shows the batch size and the id range instead.
    with send_batch.app.producer_or_acquire() as producer:
        for first, second in batches:
            ids, wait = (first, second) if reserved else (second, countdown)
            if wait and eager:
                continue
            send_batch.apply_async((ids,), {"reserved": True} if reserved else {}, countdown=wait or None,
                                   priority=priority, producer=producer, argsrepr=_argsrepr(ids), kwargsrepr="{}")
            count += 1
    _count_published(count)
    return count


def _count_published(count):
    if count:
        try:
            throttle_client().incrby(PUBLISHED_KEY, count)
        except RedisError:
            pass  # a lost count costs a figure, never a send


def _argsrepr(ids) -> str:
    return f"([{len(ids)} send ids {ids[0]}..{ids[-1]}],)" if ids else "([],)"


def enqueue_slots(slot_batches):
    """Enqueue [(ids, countdown, ...)] slot batches (see engine.hold_for_slots) as they are, one task each,
    once the current transaction commits: their rows come back for reserved slots."""
    batches = [(list(item[0]), item[1]) for item in slot_batches if item[0]]
    if batches:
        transaction.on_commit(lambda: _publish(batches, reserved=True))


def enqueue_sends(send_ids: list[int], countdown: float = 0.0, domains: list[str] | None = None):
    """Enqueue queued sends as batch tasks once the current transaction commits.

    ``domains``, the sends' recipient domains in the same order, spares reading them back.
    """
    ids = [int(i) for i in send_ids]
    if not ids:
        return

    def publish():
        routing.refresh()
        if domains is not None:
            rows = list(zip(ids, domains, strict=True))
        else:
            rows = []
        for start in range(0, len(ids) if domains is None else 0, 10000):
            rows.extend(Send.objects.filter(id__in=ids[start:start + 10000]).values_list("id", "domain"))
        rows.sort(key=lambda r: (r[1], r[0]))
        _publish(planner.batches(rows, routing.group_of), countdown)

    transaction.on_commit(publish)


def enqueue_campaign(campaign_id: int) -> int:
    """Enqueue every queued send of a campaign, streaming rows so memory stays flat.

    Parked sends keep their reserved slots: the due-retries tick hands them over.
    Batches are published in the order of the audience, not domain by domain,
    so the domain groups send side by side. Slow groups (see slow_domains) go
    first, ahead of the bulk: their batches are claimed at once and reserve
    their slots, so they send at their own rate from the start rather than at
    the pace their share of the audience comes off the queue, and finish no
    later than they must.
    """
    routing.refresh()
    queued = Send.objects.filter(campaign_id=campaign_id, status=Send.Status.QUEUED, parked=False)
    slow = slow_domains(queued)

    def stream(rows):
        return rows.order_by("id").values_list("id", "domain").iterator(chunk_size=5000)

    count = 0
    if slow:
        count += _publish(planner.batches(stream(queued.filter(domain__in=slow)), routing.group_of),
                          priority=FEED_PRIORITY)
    rest = queued.exclude(domain__in=slow) if slow else queued
    return count + _publish(planner.batches(stream(rest), routing.group_of), priority=BULK_PRIORITY)


def slow_domains(sends) -> list[str]:
    """The domains of the groups that would be starved if fed at the pace of the audience.

    Published in audience order, a group's batches come off the queue at its
    share of the engine's throughput, which is at most the sum of every group's
    rate. A group whose share takes longer at its own rate than the whole
    campaign would at that sum cannot be fed fast enough to use its rate. One
    aggregate query; a group without a limit is never slow.
    """
    by_domain = list(sends.order_by().values_list("domain").annotate(n=Count("id")))
    groups = {}
    for domain, n in by_domain:
        limit = routing.limit_for(domain)
        group = groups.setdefault(limit.key, {"rate": limit.rate, "n": 0, "domains": []})
        group["n"] += n
        group["domains"].append(domain)
    if not groups:
        return []
    total = sum(g["n"] for g in groups.values())
    rates = [g["rate"] for g in groups.values()]
    campaign_seconds = 0.0 if any(r <= 0 for r in rates) else total / sum(rates)
    floor = max(SLOW_MIN_SECONDS, campaign_seconds)
    return [d for g in groups.values() if g["rate"] > 0 and g["n"] / g["rate"] > floor for d in g["domains"]]
