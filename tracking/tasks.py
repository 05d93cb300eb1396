"""Periodic work of the tracking app."""

import logging

from celery import shared_task
from django.db import close_old_connections

from tracking import mailbox, rollups, warmup, winner

log = logging.getLogger(__name__)

POLL_TASK = "tracking.tasks.poll_bounce_mailbox"


@shared_task(name=POLL_TASK, ignore_result=True)
def poll_bounce_mailbox():
    """Read new messages of HERALD_BOUNCE_MAILBOX. Two overlapping polls may read one
    message twice; the Event key records its report once."""
    close_old_connections()
    result = mailbox.poll()
    log.info("bounce mailbox: %d message(s) processed, %d new event(s), %d failed",
             result.processed, result.events, len(result.failed))
    return {"processed": result.processed, "events": result.events, "failed": len(result.failed)}


@shared_task(name="tracking.warmup_step", ignore_result=True)
def warmup_step():
    """Grow, hold or step back each warm-up schedule once a day (beat runs this every minute)."""
    close_old_connections()
    return len(warmup.step())


@shared_task(name="tracking.choose_winners", ignore_result=True)
def choose_winners():
    """A/B tests whose wait is over get their winner, and their remainder is released (beat runs this every minute)."""
    close_old_connections()
    return len(winner.choose_due())


@shared_task(name="tracking.fold_tallies", ignore_result=True)
def fold_tallies():
    """Sum the statistics' rows added since the last fold into one per figure (beat runs this every minute)."""
    close_old_connections()
    return rollups.fold()


def schedule(app, settings):
    """Add the poll to beat's schedule when a mailbox is configured."""
    if settings.HERALD_BOUNCE_MAILBOX:
        app.conf.beat_schedule.setdefault(
            "tracking: poll the bounce mailbox",
            {"task": POLL_TASK, "schedule": float(settings.HERALD_BOUNCE_MAILBOX_INTERVAL)},
        )
