"""ESP tracking webhooks (Amazon SES, SendGrid, Mailgun, Postmark) through django-anymail.

anymail answers the webhook URLs under /webhooks/anymail/ (mounted only with a
secret: tracking.webhooks_urls), checks each ESP's basic auth or signature, and
normalises the payload into an ``AnymailTrackingEvent``; this receiver turns
that into the same Event rows the pixel, the redirect and the bounce server
write, with the same policy.

An authenticated ESP is still no proof that an event is about Herald's mail:
the ESP account may carry other applications' messages. An event applies to
a Send only when Herald's send id in the metadata or the message's own
Message-ID names one whose recipient is the event's; anything else is recorded
as an unverified Event (no Send) and suppresses or unsubscribes no one.
"""

import hashlib
import logging
import re

from anymail.signals import EventType, tracking
from django.conf import settings
from django.core import checks
from django.dispatch import receiver

from campaigns.models import email_key
from delivery.models import Send
from tracking import bounces
from tracking.events import record
from tracking.feedback import apply_policy
from tracking.machine import is_machine_agent
from tracking.models import Event
from tracking.unsubscribe import unsubscribe
from tracking.webhooks_urls import mailgun_signing_key, webhook_secrets

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
    if event.event_type == EventType.UNSUBSCRIBED and send is not None:
        unsubscribe(send, source=_source(esp_name), user_agent=event.user_agent or "")
        return
    if event.event_type == EventType.UNSUBSCRIBED:
        type = Event.Type.UNSUBSCRIBE
    elif event.event_type == EventType.BOUNCED:
        type = _bounce_type(event)
    else:
        type = _SIMPLE.get(event.event_type)
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
    if created and send is None:
        log.info("unverified %s %s event for %r: no Send of this Herald; recorded, nobody suppressed",
                 esp_name, event.event_type, recipient[:200])
    elif created:
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
    """The Send an ESP event is about: Herald's send id in the metadata, or the message's Message-ID.

    The Send's recipient must be the event's (when it names one); the newest
    send to the address is never assumed.
    """
    metadata = event.metadata or {}
    send_id = str(metadata.get("herald_send_id", "") or "")
    candidates = []
    if send_id.isdigit():
        candidates = list(Send.objects.filter(pk=int(send_id)))
    if not candidates:
        # Amazon SES keeps the message's own Message-ID header in the notification.
        esp = event.esp_event if isinstance(event.esp_event, dict) else {}
        mail = esp.get("mail") if isinstance(esp.get("mail"), dict) else {}
        header_id = (mail.get("commonHeaders") or {}).get("messageId")
        ids = {str(c).strip().strip("<>") for c in (header_id, event.message_id) if c}
        ids = [i for i in ids if i]
        if ids:
            candidates = list(Send.objects.filter(message_id__in=ids + [f"<{i}>" for i in ids]).order_by("-pk")[:100])
    recipient = email_key(event.recipient or "")
    if recipient:
        return next((s for s in candidates if email_key(s.email) == recipient), None)
    return candidates[0] if len(candidates) == 1 else None


@checks.register(checks.Tags.security, deploy=True)
def check_webhook_secret(app_configs=None, **kwargs):
    """ESP webhooks need a strong shared secret: without one they are not served at all."""
    level = checks.Warning if settings.DEBUG else checks.Error
    secrets = webhook_secrets()
    if not secrets:
        if mailgun_signing_key():
            return [level(
                "MAILGUN_WEBHOOK_SIGNING_KEY is set but ANYMAIL_WEBHOOK_SECRET is not, so no ESP webhook is served "
                "(404) and the ESP's bounces and complaints are lost.",
                hint="Set ANYMAIL_WEBHOOK_SECRET to a random user:password (e.g. herald:<32 random characters>) and "
                     "give the ESP the webhook URL with those credentials.",
                id="tracking.E001",
            )]
        return []
    weak = [s for s in secrets if ":" not in s or len(s.partition(":")[2]) < 16]
    if weak:
        return [level(
            "ANYMAIL_WEBHOOK_SECRET must be user:password with a password of at least 16 random characters; "
            "anyone who guesses it can report bounces and complaints for Herald's recipients.",
            hint="python3 -c 'import secrets; print(\"herald:\" + secrets.token_urlsafe(32))'",
            id="tracking.E002",
        )]
    return []
