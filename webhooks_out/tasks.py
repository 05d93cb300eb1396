"""Periodic work of outgoing webhooks."""

from celery import shared_task
from django.db import close_old_connections

from webhooks_out import deliver


@shared_task(name="webhooks_out.deliver", ignore_result=True)
def deliver_due():
    """Post what endpoints are owed (beat runs this every few seconds; overlapping runs claim different rows)."""
    close_old_connections()
    deliver.enforce_limit()
    return deliver.deliver_due()


@shared_task(name="webhooks_out.purge", ignore_result=True)
def purge():
    close_old_connections()
    return deliver.purge()
