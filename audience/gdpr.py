"""A person's data: all of it as one JSON document (export), or none of it left (erase).

Erasing keeps what the statistics count (each Send row and its Events stay,
with their campaign, status and times) and removes everything that says who
it was: the contact and its subscriptions, the address on every send and
event, event payloads (raw bounce and complaint messages, user agents,
diagnostics, URLs), the stored copies of single messages to them, and the
admin history's name for them. The suppression list keeps only a keyed hash
of the address, so the same address imported again is never mailed. The
audit log records that an erasure happened and who did it, never whom.
"""

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Q
from django.dispatch import Signal

from audience import timeline
from campaigns import audit
from campaigns.models import Contact, Subscription, Suppression
from campaigns.suppression import record_erasure
from delivery.models import Send
from submission.models import OutboundMessage
from tracking.models import Event

# Sent inside the erasure's transaction, before the contact is deleted, with contact_id, address and
# send_ids: apps above this one (automations, outgoing webhooks) remove what they hold of the person.
erasing = Signal()

SUBSCRIPTION_FIELDS = ("mailing_list_id", "status", "source", "source_detail", "consent_ip", "consent_user_agent",
                       "consent_text", "confirmed_at", "created_at", "updated_at", "resubscribed_at",
                       "resubscribe_reason")


def _sends(contact):
    addresses = {contact.email, contact.email_key}
    return Send.objects.filter(Q(contact_id=contact.pk) | Q(email__in=addresses))


def export(contact) -> dict:
    """Everything Herald holds about one person."""
    subs = Subscription.objects.filter(contact=contact).select_related("mailing_list").order_by("id")
    sends = list(_sends(contact).order_by("id").values(
        "id", "campaign_id", "campaign__name", "email", "status", "attempts", "smtp_code", "smtp_reply", "message_id",
        "created_at", "sent_at", "outbound_id"))
    events = Event.objects.filter(Q(contact_id=contact.pk) | Q(send_id__in=[s["id"] for s in sends])).order_by("id")
    return {
        "contact": {"id": contact.pk, "email": contact.email, "first_name": contact.first_name,
                    "last_name": contact.last_name, "attributes": contact.attributes, "status": contact.status,
                    "paused_until": contact.paused_until, "created_at": contact.created_at,
                    "updated_at": contact.updated_at},
        "subscriptions": [{"list": s.mailing_list.name, **{f: getattr(s, f) for f in SUBSCRIPTION_FIELDS}} for s in subs],
        "sends": sends,
        "events": list(events.values("id", "type", "send_id", "campaign_id", "created_at", "machine", "url",
                                     "status", "diagnostic", "reason", "user_agent", "source")),
        "suppressions": list(Suppression.objects.filter(email_key=contact.email_key).values(
            "reason", "detail", "created_at")),
        "history": [item for item in timeline.entries(contact.pk, limit=10_000)[0]
                    if item["kind"] in ("change", "preferences")],
    }


def erase(contact) -> None:
    """Remove the person's personal data everywhere; the counts of sends and events stay as they were."""
    key, address, contact_id = contact.email_key, contact.email, contact.pk
    with transaction.atomic():
        sends = _sends(contact)
        send_ids = list(sends.values_list("id", flat=True))
        outbound_ids = {i for i in sends.exclude(outbound_id=None).values_list("outbound_id", flat=True)}
        # Not yet sent: never to be sent. Final rows keep their status for the statistics.
        Send.objects.filter(id__in=send_ids, status__in=[Send.Status.QUEUED, Send.Status.DEFERRED]).update(
            status=Send.Status.CANCELLED, smtp_reply="cancelled: the recipient's data was erased")
        Send.objects.filter(id__in=send_ids).update(email="", smtp_reply="", contact=None)
        Event.objects.filter(Q(contact_id=contact_id) | Q(send_id__in=send_ids) | Q(email__in={address, key})).update(
            email="", raw="", diagnostic="", user_agent="", url="", reason="", key=None, contact=None)
        if outbound_ids:
            OutboundMessage.objects.filter(id__in=outbound_ids).update(raw=b"", subject="", size=0)
        contact_type = ContentType.objects.get_for_model(Contact)
        LogEntry.objects.filter(content_type=contact_type, object_id=str(contact_id)).update(
            object_repr="(erased)", change_message="")
        erasing.send(sender=Contact, contact_id=contact_id, address=address, send_ids=send_ids)
        record_erasure(address)
        contact.delete()
        # Who and when; not whom. (Rate-limit counters in Redis hold only hashes of the address.)
        audit.record("contact.erase", sends=len(send_ids))
