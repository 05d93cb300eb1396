from celery import shared_task

from audience import purge
from audience.confirmations import send_confirmations  # noqa: F401  (registered with the others)


@shared_task(name="audience.purge_unconfirmed")
def purge_unconfirmed():
    """Beat: forget signups that were never confirmed within HERALD_UNCONFIRMED_PURGE_DAYS."""
    return purge.purge_unconfirmed()
