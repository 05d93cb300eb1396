"""Putting contacts into an automation, under its re-entry rule, in set-based chunks."""

from datetime import timedelta

from django.db.models import Count, Max, Q
from django.utils import timezone

from automations.models import Automation, Enrolment
from campaigns.audience import suppressed
from campaigns.models import Contact

CHUNK = 5000


def first_position(automation: Automation) -> int | None:
    return automation.current_steps().values_list("position", flat=True).first()


def enrol(automation: Automation, contacts, now=None, *, payload=None, payloads=None, keys=None) -> int:
    """Enrol ``contacts`` (ids); how many were let in (a concurrent enrolment of the same one may still win).

    ``payload``: one dict for all, ``payloads``: {contact id: dict}; ``keys``: {contact id:
    what enrolled them}, so the same happening (a subscription, a click, a posted
    event) never enrols twice whatever polls overlap. Unmailable contacts (not
    active, or suppressed) do not enter. Re-entry: once ever, once per N days
    (counted from the last entry), or every time.
    """
    if automation.status == Automation.Status.DRAFT:
        return 0
    start = first_position(automation)
    if start is None:
        return 0
    now = now or timezone.now()
    ids = sorted({int(c) for c in contacts})
    entered = 0
    for i in range(0, len(ids), CHUNK):
        entered += _enrol_chunk(automation, ids[i:i + CHUNK], start, now, payload or {}, payloads or {}, keys or {})
    return entered


def _enrol_chunk(automation, ids, start, now, payload, payloads, keys) -> int:
    mailable = set(Contact.objects.filter(id__in=ids, status=Contact.Status.ACTIVE).exclude(suppressed())
                   .values_list("id", flat=True))
    history = {
        row["contact_id"]: row for row in
        Enrolment.objects.filter(automation=automation, contact_id__in=ids).values("contact_id").annotate(
            last=Max("occurrence"), last_at=Max("entered_at"),
            active=Count("id", filter=Q(status=Enrolment.Status.ACTIVE)))
    }
    since = now - timedelta(days=automation.reentry_days)
    rows = []
    for contact_id in ids:
        if contact_id not in mailable:
            continue
        past = history.get(contact_id)
        if past is not None:
            if automation.reentry == Automation.Reentry.ONCE:
                continue
            if automation.reentry == Automation.Reentry.INTERVAL and past["last_at"] > since:
                continue
        data = payloads.get(contact_id, payload)
        rows.append(Enrolment(
            automation=automation, contact_id=contact_id, occurrence=(past["last"] if past else 0) + 1,
            trigger_key=keys.get(contact_id, "")[:100], version=automation.version, position=start, due_at=now,
            payload=data, entered_at=now, updated_at=now))
    # A concurrent enrolment of the same contact (same occurrence or same key) wins; this one is dropped.
    Enrolment.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
