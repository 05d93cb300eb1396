"""Thin Celery tasks around the engine; the behaviour lives in delivery.engine and delivery.lifecycle."""

import redis
from celery import shared_task
from celery.signals import worker_init, worker_process_shutdown
from django.db import InterfaceError, OperationalError

from delivery import dispatch, engine, lifecycle
from delivery.smtp import pool

# A restarting Redis or PostgreSQL delays a batch; it is not lost.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, InterfaceError, OperationalError)


@shared_task(name="delivery.send_batch", autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=None)
def send_batch(send_ids):
    for ids, countdown in engine.send_batch(send_ids):
        dispatch.enqueue_sends(ids, countdown)


@shared_task(name="delivery.sweep")
def sweep():
    dispatch.enqueue_sends(engine.sweep())


@shared_task(name="delivery.release_dead")
def release_dead():
    dispatch.enqueue_sends(engine.release_dead())


@shared_task(name="delivery.due_retries")
def due_retries():
    dispatch.enqueue_sends(engine.due_retries())


@shared_task(name="delivery.start_campaign")
def start_campaign(campaign_id):
    lifecycle.start_campaign(campaign_id)


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
