"""What enrols contacts: each trigger polled from the data, whatever wrote it.

Subscriptions arrive through forms, confirmations, imports (SQL of their own)
and the API; clicks through the tracking fast path. Rather than hook each
writer, the beat tick looks at what changed since the automation's watermark
(less a margin for transactions that committed late), and the enrolment's
trigger key makes an overlap harmless.
"""

import datetime
from datetime import timedelta

from django.db import transaction
from django.db.models import DateTimeField, Q
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce, Substr
from django.utils import timezone

from automations.enrol import enrol
from automations.models import Automation, ContactEvent
from campaigns.audience import LIVE
from campaigns.models import Contact, Subscription
from delivery import localtime
from segments.compiler import Compiler
from tracking.models import Event

# A row written by a transaction that started before the last poll and
# committed after it carries a time before the watermark: look back this far.
LAG = timedelta(minutes=5)


def poll(now=None) -> int:
    """Run every polled trigger of the automations that are not drafts; how many were enrolled."""
    now = now or timezone.now()
    count = 0
    for automation in Automation.objects.exclude(status=Automation.Status.DRAFT):
        handler = POLLED.get(automation.trigger)
        if handler is None:
            continue
        with transaction.atomic():
            automation = Automation.objects.select_for_update(skip_locked=True).filter(pk=automation.pk).first()
            if automation is None:
                continue  # another tick is polling it
            if automation.watermark is None:
                # Activated just now: only what happens from here on enrols (not the list's whole past).
                Automation.objects.filter(pk=automation.pk).update(watermark=now)
                if automation.trigger in (Automation.Trigger.SUBSCRIBED, Automation.Trigger.CLICKED):
                    continue
            count += handler(automation, now)
            Automation.objects.filter(pk=automation.pk).update(watermark=now)
    return count


def _window(automation, now):
    return (automation.watermark or now) - LAG, now


def subscribed(automation, now) -> int:
    start, end = _window(automation, now)
    rows = (Subscription.objects.filter(LIVE, mailing_list_id=automation.mailing_list_id)
            .annotate(at=Coalesce("confirmed_at", "created_at", output_field=DateTimeField()))
            .filter(at__gt=start, at__lte=end).values_list("id", "contact_id", "at"))
    keys = {contact: f"sub:{pk}:{int(at.timestamp())}" for pk, contact, at in rows}
    return enrol(automation, keys, now, keys=keys)


def clicked(automation, now) -> int:
    start, end = _window(automation, now)
    rows = (Event.objects.filter(type=Event.Type.CLICK, url=automation.link_url, machine=False,
                                 created_at__gt=start, created_at__lte=end, contact__isnull=False)
            .values_list("id", "contact_id", "url"))
    keys, payloads = {}, {}
    for pk, contact, url in rows:
        keys.setdefault(contact, f"click:{pk}")
        payloads.setdefault(contact, {"url": url})
    return enrol(automation, keys, now, keys=keys, payloads=payloads)


def segment(automation, now) -> int:
    """Contacts now in the segment; the re-entry rule (and a daily key) decide who enters again."""
    if automation.segment_id is None:
        return 0
    rules = automation.segment.rules or {"match": "all", "rules": []}
    compiler = Compiler(now)
    compiler.inside.append(automation.segment_id)
    ids = list(Contact.objects.filter(compiler.compile(rules)).values_list("id", flat=True))
    day = now.date().isoformat()
    return enrol(automation, ids, now, keys={pk: f"segment:{day}" for pk in ids})


def zone_of(attributes) -> datetime.tzinfo:
    """The contact's time zone, as for a campaign sent at local time: its ``timezone`` attribute (an IANA
    name), else the zone of its ``country``, else the operator's (TIME_ZONE)."""
    attributes = attributes if isinstance(attributes, dict) else {}
    return localtime.zone_for(_text(attributes.get("timezone")), _text(attributes.get("country")), None)


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def date_reached(automation, now) -> int:
    """Contacts whose date attribute is today where they live, and whose local hour has come.

    A day is a day in the contact's zone: someone in Auckland has their birthday
    up to a day before someone in Honolulu, so candidates are read for the three
    UTC days around now and each one's local date decides.
    """
    name = automation.date_attribute
    days = [(now + timedelta(days=d)).date() for d in (-1, 0, 1)]
    value = KeyTextTransform(name, "attributes")
    if automation.date_yearly:
        wanted = Q(md__in=[d.strftime("%m-%d") for d in days])
        rows = Contact.objects.annotate(md=Substr(value, 6, 5)).filter(wanted)
    else:
        rows = Contact.objects.annotate(md=value).filter(md__in=[d.isoformat() for d in days])
    keys = {}
    for pk, attributes in rows.filter(status=Contact.Status.ACTIVE).values_list("id", "attributes").iterator(2000):
        local = now.astimezone(zone_of(attributes))
        stored = str(attributes.get(name, ""))[:10]
        if local.hour < automation.date_hour:
            continue
        if automation.date_yearly and stored[5:10] == local.strftime("%m-%d"):
            keys[pk] = f"date:{local.year}"
        elif not automation.date_yearly and stored == local.date().isoformat():
            keys[pk] = "date:once"
    return enrol(automation, keys, now, keys=keys)


POLLED = {
    Automation.Trigger.SUBSCRIBED: subscribed,
    Automation.Trigger.CLICKED: clicked,
    Automation.Trigger.SEGMENT: segment,
    Automation.Trigger.DATE: date_reached,
}


def record_event(contact: Contact, name: str, payload: dict, now=None) -> tuple[ContactEvent, int]:
    """A custom event for a contact (from the API): stored, and every automation waiting for it enrols them."""
    now = now or timezone.now()
    with transaction.atomic():
        event = ContactEvent.objects.create(contact=contact, name=name, payload=payload, created_at=now)
        entered = 0
        for automation in Automation.objects.filter(trigger=Automation.Trigger.EVENT, event_name=name).exclude(
                status=Automation.Status.DRAFT):
            entered += enrol(automation, [contact.pk], now, payload=payload, keys={contact.pk: f"event:{event.pk}"})
    return event, entered


def enrol_segment(automation: Automation, segment, now=None) -> int:
    """An operator's manual enrolment of everyone in a segment (the re-entry rule still applies)."""
    now = now or timezone.now()
    compiler = Compiler(now)
    compiler.inside.append(segment.pk)
    ids = list(Contact.objects.filter(compiler.compile(segment.rules or {"match": "all", "rules": []}))
               .values_list("id", flat=True))
    return enrol(automation, ids, now)
