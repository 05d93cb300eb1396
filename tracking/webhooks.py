"""ESP tracking webhooks (Amazon SES, SendGrid, Mailgun, Postmark) through django-anymail.

anymail answers the webhook URLs under /webhooks/anymail/, checks each ESP's
basic auth or signature, and normalises the payload into an
``AnymailTrackingEvent``; this receiver turns that into the same Event rows the
pixel, the redirect and the bounce server write, with the same policy.
"""

import hashlib
import logging
import re

from anymail.signals import EventType, tracking
from django.dispatch import receiver

from campaigns.models import Suppression
from campaigns.suppression import suppress
from delivery.models import Send
from tracking import bounces
from tracking.events import record
from tracking.feedback import apply_policy
from tracking.machine import is_machine_agent
from tracking.models import Event
from tracking.unsubscribe import unsubscribe

log = logging.getLogger(__name__)

_SOFT_WORDS = re.compile(r"\b(?:transient|soft ?bounce|temporary)\b", re.I)
_SIMPLE = {
    EventType.DEFERRED: Event.Type.DELAYED,
    EventType.COMPLAINED: Event.Type.COMPLAINT,
    EventType.OPENED: Event.Type.OPEN,
    EventType.CLICKED: Event.Type.CLICK,
    EventType.DELIVERED: Event.Type.DELIVERED,
    EventType.REJECTED: Event.Type.REJECTED,
    EventType.FAILED: Event.Type.FAILED,
}


@receiver(tracking, dispatch_uid="tracking.anymail")
def handle_esp_event(sender, event, esp_name, **kwargs):
    recipient = (event.recipient or "").strip()
    send = find_send(event)
    if send is None and not recipient:
        log.info("%s %s event names no recipient; dropped", esp_name, event.event_type)
        return
    if event.event_type == EventType.UNSUBSCRIBED:
        if send is not None:
            unsubscribe(send, source=_source(esp_name), user_agent=event.user_agent or "")
        else:
            suppress(recipient, Suppression.Reason.UNSUBSCRIBE, f"unsubscribed at {esp_name}")
        return
    type = _bounce_type(event) if event.event_type == EventType.BOUNCED else _SIMPLE.get(event.event_type)
    if type is None:
        return
    fields = {
        "email": send.email if send is not None else recipient,
        "source": _source(esp_name),
        "diagnostic": " ".join(p for p in (event.description, event.mta_response) if p)[:2000],
        "status": bounces.best_status("", event.mta_response or "")[:16],
        "user_agent": (event.user_agent or "")[:1000],
        "url": event.click_url or "",
        "machine": type in (Event.Type.OPEN, Event.Type.CLICK) and is_machine_agent(event.user_agent or ""),
        "raw": str(event.esp_event)[:64 * 1024],
    }
    created_event, created = record(type, send, key=_key(esp_name, event, type), **fields)
    if created:
        apply_policy(created_event)


def _bounce_type(event):
    """Hard or soft from what the ESP says; anymail's "bounced" covers both."""
    text = " ".join(p for p in (event.description, event.mta_response) if p)
    esp = event.esp_event if isinstance(event.esp_event, dict) else {}
    if _SOFT_WORDS.search(text) or esp.get("Type") == "SoftBounce":
        return Event.Type.SOFT_BOUNCE
    kind = bounces.classify("failed", "", text)
    return {bounces.SOFT: Event.Type.SOFT_BOUNCE, bounces.POLICY: Event.Type.REJECTED}.get(kind, Event.Type.BOUNCE)


def _source(esp_name):
    return re.sub(r"[^a-z0-9]+", "-", esp_name.lower()).strip("-")[:32]


def _key(esp_name, event, type):
    recipient = (event.recipient or "").lower()
    if event.event_id:
        return f"{_source(esp_name)}:{event.event_id}:{recipient}"
    digest = hashlib.sha256(f"{event.message_id}|{event.timestamp}|{event.click_url}".encode()).hexdigest()[:24]
    return f"{_source(esp_name)}:{type}:{recipient}:{digest}"


def find_send(event):
    """The Send an ESP event is about: Herald's send id in the metadata, the message id, or the newest send to the address."""
    metadata = event.metadata or {}
    send_id = str(metadata.get("herald_send_id", "") or "")
    if send_id.isdigit():
        send = Send.objects.filter(pk=int(send_id)).first()
        if send is not None:
            return send
    # Amazon SES keeps the message's own Message-ID header in the notification.
    esp = event.esp_event if isinstance(event.esp_event, dict) else {}
    mail = esp.get("mail") if isinstance(esp.get("mail"), dict) else {}
    header_id = (mail.get("commonHeaders") or {}).get("messageId")
    for candidate in (header_id, event.message_id):
        if not candidate:
            continue
        message_id = str(candidate).strip().strip("<>")
        send = Send.objects.filter(message_id__in=[message_id, f"<{message_id}>"]).order_by("-pk").first()
        if send is not None:
            return send
    if event.recipient:
        return Send.objects.filter(email=event.recipient.strip()).order_by("-pk").first()
    return None
