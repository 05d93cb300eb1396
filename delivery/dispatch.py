"""Putting sends on the Celery queue as batch tasks, grouped by domain group.

``enqueue_sends(send_ids)`` is public: anything that creates queued Send rows
(the audience snapshot, the SMTP submission server, retries, the sweeper)
hands them to the engine through it.
"""

from celery import current_app
from django.db import transaction

from delivery import planner, routing
from delivery.models import Send

# Found by name in the Celery app: delivery.tasks imports this module, so this
# module never imports it (delivery's AppConfig.ready registers the tasks).
SEND_BATCH = "delivery.send_batch"


def _publish(batches, countdown=0.0):
    send_batch = current_app.tasks[SEND_BATCH]
    if countdown and send_batch.app.conf.task_always_eager:
        # Eager mode ignores countdowns: publishing would spin on an empty
        # bucket. The rows stay queued and the sweeper brings them back.
        return 0
    count = 0
    # One producer (and broker connection) for the whole call rather than one
    # acquired from the pool per task. The short argsrepr spares Celery a
    # saferepr of hundreds of ids per task, which cost more than the publish
    # itself; monitoring shows the batch size and the id range instead.
    with send_batch.app.producer_or_acquire() as producer:
        for _group, ids in batches:
            send_batch.apply_async((ids,), countdown=countdown or None, producer=producer,
                                   argsrepr=_argsrepr(ids), kwargsrepr="{}")
            count += 1
    return count


def _argsrepr(ids) -> str:
    return f"([{len(ids)} send ids {ids[0]}..{ids[-1]}],)" if ids else "([],)"


def enqueue_sends(send_ids: list[int], countdown: float = 0.0):
    """Enqueue queued sends as batch tasks once the current transaction commits."""
    ids = [int(i) for i in send_ids]
    if not ids:
        return

    def publish():
        rows = []
        for start in range(0, len(ids), 10000):
            rows.extend(Send.objects.filter(id__in=ids[start:start + 10000]).values_list("id", "domain"))
        rows.sort(key=lambda r: (r[1], r[0]))
        _publish(planner.batches(rows, routing.group_of), countdown)

    transaction.on_commit(publish)


def enqueue_campaign(campaign_id: int) -> int:
    """Enqueue every queued send of a campaign, streaming rows so memory stays flat."""
    rows = (
        Send.objects.filter(campaign_id=campaign_id, status=Send.Status.QUEUED)
        .order_by("domain", "id")
        .values_list("id", "domain")
        .iterator(chunk_size=5000)
    )
    return _publish(planner.batches(rows, routing.group_of))
