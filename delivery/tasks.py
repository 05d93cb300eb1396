"""Thin Celery tasks around the engine; the behaviour lives in delivery.engine and delivery.lifecycle."""

import logging

import redis
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_shutdown
from django.conf import settings
from django.db import InterfaceError, OperationalError

from delivery import dispatch, engine, ledger, lifecycle
from delivery.smtp import pool

log = logging.getLogger(__name__)

# A restarting Redis or PostgreSQL delays a batch; it is not lost.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, InterfaceError, OperationalError)
# A batch normally takes seconds. One still running at half its lease is
# stopped (a template stuck in a long operation the render budgets cannot
# interrupt, a server that answers at a crawl): its rows go back to the queue.
# The hard limit ends the process before the lease runs out, so no other
# worker is ever handed rows that this one is still sending.
BATCH_SOFT_LIMIT = max(30, settings.HERALD_SEND_LEASE // 2)
BATCH_HARD_LIMIT = max(BATCH_SOFT_LIMIT + 10, settings.HERALD_SEND_LEASE * 9 // 10)


@shared_task(name="delivery.send_batch", autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=None,
             soft_time_limit=BATCH_SOFT_LIMIT, time_limit=BATCH_HARD_LIMIT)
def send_batch(send_ids, reserved=False):
    try:
        requeue = engine.send_batch(send_ids, reserved=reserved)
    except SoftTimeLimitExceeded:
        # The engine released the rows it still held (and paused the campaign
        # if a render was stuck): whatever is still queued goes round again.
        log.warning("batch of %d sends stopped at the %d s time limit; unsent rows are queued again",
                    len(send_ids), BATCH_SOFT_LIMIT)
        dispatch.enqueue_sends(send_ids, 5.0)
        return
    # Rows waiting for reserved slots go back as their slot batches; others regrouped.
    dispatch.enqueue_slots([item for item in requeue if item[2:3] == (True,)])
    for ids, countdown, *_ in (item for item in requeue if item[2:3] != (True,)):
        dispatch.enqueue_sends(ids, countdown)


@shared_task(name="delivery.sweep")
def sweep():
    for ids in ledger.sweep_chunks():
        dispatch.enqueue_sends(ids)


@shared_task(name="delivery.release_dead")
def release_dead():
    dispatch.enqueue_sends(ledger.release_dead())


@shared_task(name="delivery.due_retries")
def due_retries():
    dispatch.enqueue_slots(ledger.due_slots())
    dispatch.enqueue_sends(ledger.due_retries())
    # Local-time waves and quiet hours: rows held until their time go now.
    dispatch.enqueue_sends(ledger.due_waves())


@shared_task(name="delivery.start_campaign", autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60,
             max_retries=None)
def start_campaign(campaign_id):
    """Snapshot a starting campaign's audience and enqueue it; run again, it resumes where it stopped."""
    lifecycle.prepare(campaign_id)


@shared_task(name="delivery.dispatch_scheduled")
def dispatch_scheduled():
    from delivery import scheduler

    scheduler.dispatch_due()


@worker_init.connect
def _refuse_an_unsafe_lease(**kwargs):
    problem = engine.lease_problem()
    if problem:
        # Celery logs and ignores a signal handler's Exception; this stops the worker.
        raise SystemExit(f"refusing to start: {problem}")


@worker_process_shutdown.connect
def _close_connections(**kwargs):
    pool.close_all()
