"""Periodic work of automations: triggers polled, due steps advanced."""

from celery import shared_task
from django.db import close_old_connections

from automations import sweep, triggers


@shared_task(name="automations.tick", ignore_result=True)
def tick():
    """Enrol whom the triggers found, let unmailable contacts leave, advance what is due.

    Two ticks at once are harmless: each claims different enrolments, and an
    email step's key never lets one be sent twice.
    """
    close_old_connections()
    entered = triggers.poll()
    left = sweep.exit_unmailable()
    advanced = sweep.advance()
    return {"entered": entered, "left": left, "advanced": advanced}
