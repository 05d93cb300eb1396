from celery import shared_task

from audience import confirmations, purge


@shared_task(name="audience.purge_unconfirmed")
def purge_unconfirmed():
    """Beat: forget signups that were never confirmed within HERALD_UNCONFIRMED_PURGE_DAYS."""
    return purge.purge_unconfirmed()


@shared_task(name=confirmations.TASK)
def send_confirmations():
    """Woken by signups, and beat's pass: store the due confirmation mails and hand them to the engine.

    A pass that found mail to store is followed by one more a moment later, for a signup that saw the
    wake-up taken just before this pass took it back, and committed only after this pass had looked.
    """
    stored = confirmations.send_due()
    if stored:
        confirmations.publish(countdown=confirmations.FOLLOW_UP_SECONDS)
    return stored
