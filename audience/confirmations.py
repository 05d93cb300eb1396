"""Confirmation mails of double opt-in signups, stored in batches by the workers rather than by the signup itself.

A signup records only that a mail is due (a ConfirmationDue row, in the
signup's own transaction) and, now and then, wakes a worker; the worker
renders the mails, stores them and their Sends, hands them to the engine and
deletes the rows it stored, all in one transaction. A form that takes hundreds
of signups a second so pays one message batch per few hundred signups instead
of one per signup, and a signup is kept (and its mail owed) even while the
broker is down.

Waking costs a signup nothing it does not do anyway: in the round trip to
Redis that counts it against the rate limits (signup.gate), it also tries to
set WAKE_KEY. The one that sets it publishes the task once its signup is
committed; the others find it set and rely on that pass. The task deletes the
key before it reads the rows, so a signup after that sets it again. A signup
that found the key set just before the task deleted it, and committed only
after the task had read, is seen by the pass the task publishes to follow
itself FOLLOW_UP_SECONDS later. Beat runs the task every few seconds as well,
which covers a lost task or a crashed worker.
"""

import logging

from celery import shared_task
from django.conf import settings
from django.db import connection, transaction
from jinja2 import TemplateError
from redis.exceptions import RedisError

from audience import mail, tokens
from audience.models import ConfirmationDue, SignupForm
from audience.texts import texts
from campaigns.models import Contact, MailingList
from campaigns.rendering import ContactData
from delivery.throttle import client as redis_client

log = logging.getLogger(__name__)

WAKE_KEY = "herald:confirmations:wake"
# A woken pass that never ran (its task lost) blocks no later wake-up for longer than this.
WAKE_SECONDS = 30
# A pass that stored mail is followed by one more this much later (see above).
FOLLOW_UP_SECONDS = 2.0
TASK = "audience.send_confirmations"
TAG = "signup-confirmation"
BATCH = 500


def wake():
    """After a commit that made a confirmation due, from a signup that did not claim the wake-up beforehand
    (see signup.gate): publish the task unless a pass is already due to run."""
    try:
        if not redis_client().set(WAKE_KEY, 1, nx=True, ex=WAKE_SECONDS):
            return
    except RedisError:
        log.warning("Could not reach Redis to wake the confirmation sender; beat's pass sends the mail")
        return
    publish()


def publish(countdown: float | None = None):
    """Publish the sender's task, for the holder of the wake-up (see the module's text)."""
    try:
        send_confirmations.apply_async(countdown=countdown, priority=0)
    except Exception:  # the broker is down: the rows wait for beat's pass, and the next signup tries again
        log.exception("Could not publish the confirmation sender's task; beat's pass sends the mail")
        try:
            redis_client().delete(WAKE_KEY)
        except RedisError:
            pass


@shared_task(name=TASK)
def send_confirmations():
    """Woken by signups, and beat's pass: store the due confirmation mails and hand them to the engine.

    A pass that found mail to store is followed by one more a moment later, for a signup that saw the
    wake-up taken just before this pass took it back, and committed only after this pass had looked.
    """
    stored = send_due()
    if stored:
        publish(countdown=FOLLOW_UP_SECONDS)
    return stored


def send_due(batch: int = BATCH) -> int:
    """Store every due confirmation mail, a batch per transaction, and hand them to the engine; returns how many."""
    try:
        redis_client().delete(WAKE_KEY)
    except RedisError:
        pass
    total = 0
    while True:
        stored, more = _one_batch(batch)
        total += stored
        if not more:
            return total


def _one_batch(batch: int) -> tuple[int, bool]:
    locking = {"skip_locked": True} if connection.features.has_select_for_update_skip_locked else {}
    with transaction.atomic():
        rows = list(ConfirmationDue.objects.select_for_update(**locking).order_by("id")
                    .values_list("id", "contact_id", "form_id", "list_ids")[:batch])
        if not rows:
            return 0, False
        contacts = {row[0]: row[1:] for row in Contact.objects.filter(pk__in={r[1] for r in rows})
                    .values_list("pk", "email", "first_name", "last_name", "attributes", "status")}
        forms = SignupForm.objects.in_bulk({r[2] for r in rows})
        names = dict(MailingList.objects.filter(pk__in={pk for r in rows for pk in r[3]}).values_list("pk", "name"))
        messages = []
        for _, contact_id, form_id, list_ids in rows:
            contact, form = contacts.get(contact_id), forms.get(form_id)
            if contact is None or form is None or contact[4] == Contact.Status.BLOCKLISTED:
                continue  # gone, or blocklisted since: nothing is owed
            messages.append(_message(form, contact_id, contact, list_ids, names))
        mail.send_many(messages, TAG)
        ConfirmationDue.objects.filter(pk__in=[r[0] for r in rows]).delete()
    return len(messages), len(rows) == batch


def _message(form, contact_id, contact, list_ids, names):
    email, first, last, attributes, _ = contact
    url = f"{settings.HERALD_BASE_URL}/s/c/{tokens.confirm_token(contact_id, form.pk, list_ids)}/"
    context = {"contact": ContactData(email, first, last, attributes or {}), "confirm_url": url,
               "lists": ", ".join(sorted(names[pk] for pk in list_ids if pk in names)), "form": {"name": form.name}}
    words = texts(form.language)
    try:
        subject = mail.render_text(form.confirm_subject or words["confirm_subject"], **context)
        body = mail.render_text(form.confirm_body or words["confirm_body"], **context)
    except TemplateError:
        # The form's own text fails for this contact (checked on save, so only a value it cannot
        # take): the person still gets the link, in the words of the form's language.
        log.exception("Form %s: its confirmation mail did not render; the default text is sent", form.slug)
        subject = mail.render_text(words["confirm_subject"], **context)
        body = mail.render_text(words["confirm_body"], **context)
    return form.from_email, form.from_name, email.strip(), subject, body
