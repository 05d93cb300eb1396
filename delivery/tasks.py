"""Thin Celery tasks around the engine; the behaviour lives in delivery.engine and delivery.lifecycle."""

from celery import shared_task
from celery.signals import worker_process_shutdown

from delivery import dispatch, engine, lifecycle
from delivery.smtp import pool


@shared_task(name="delivery.send_batch")
def send_batch(send_ids):
    for ids, countdown in engine.send_batch(send_ids):
        dispatch.enqueue_sends(ids, countdown)


@shared_task(name="delivery.sweep")
def sweep():
    dispatch.enqueue_sends(engine.sweep())


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


@worker_process_shutdown.connect
def _close_connections(**kwargs):
    pool.close_all()
