"""Turning parsed bounce and complaint reports into Events and suppressions.

Policy: a hard bounce or a complaint suppresses the address at once; soft
bounces suppress it after HERALD_SOFT_BOUNCE_LIMIT of them within
HERALD_SOFT_BOUNCE_WINDOW_DAYS; a delay is recorded and nothing more; a policy
refusal (the receiver rejected the sender or the message) is recorded without
suppressing the recipient, whose mailbox is fine.

Trust: anyone can mail the bounce mailbox or the bounce domain, so what a
report says is believed only when it is tied to a Send of this Herald by

- a valid VERP token (signed with SECRET_KEY, so only Herald can make one, and
  each one went out in the envelope of exactly one Send), or
- the exact Message-ID of a Send (Herald writes 72 random bits into each) whose
  recipient is the one the report names; a report that names nobody (a
  redacted complaint) matches through a Message-ID only one Send carries.

A report tied to no Send is recorded as an unverified Event (no Send, no
contact, no campaign) and suppresses no one, whatever address it names. So is
a report whose token names one Send but whose text names another recipient:
the two disagree, and Herald acts on neither.

Every Event keeps the reason the parser gave for its type (the DSN field, the
reply code or the words that decided), so an operator can see why.
"""

import hashlib
import logging
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.models import Suppression, email_key
from campaigns.suppression import suppress
from delivery.models import Send
from tracking import bounces, breaker
from tracking.events import record
from tracking.models import Event
from tracking.unsubscribe import unsubscribe

log = logging.getLogger(__name__)

_EVENT_TYPE = {
    bounces.HARD: Event.Type.BOUNCE,
    bounces.SOFT: Event.Type.SOFT_BOUNCE,
    bounces.DELAYED: Event.Type.DELAYED,
    bounces.POLICY: Event.Type.REJECTED,
    bounces.COMPLAINT: Event.Type.COMPLAINT,
}
_RAW_LIMIT = 64 * 1024


def process_message(raw: bytes, envelope_rcpt: str = "", source: str = "bounce-server") -> list:
    """Parse one inbound message and apply what it reports; returns the new Events.

    All of a message's Events and suppressions commit together, or not at all.
    """
    with transaction.atomic():
        return _process_message(raw, envelope_rcpt, source)


def _process_message(raw, envelope_rcpt, source):
    local = envelope_rcpt.partition("@")[0].lower()
    if local.startswith("unsubscribe+"):
        send_id = bounces.token_in(envelope_rcpt.encode(), purpose="unsubscribe")
        send = Send.objects.select_related("campaign").filter(pk=send_id).first() if send_id else None
        if send is None:
            log.info("mailto unsubscribe for an unknown send: %s", envelope_rcpt)
            return []
        event, created = unsubscribe(send, source="mailto", raw=raw[:_RAW_LIMIT].decode("utf-8", "replace"))
        return [event] if created else []
    events = []
    for report in bounces.parse(raw, envelope_rcpt):
        event = apply(report, raw, source)
        if event is not None:
            events.append(event)
    return events


def apply(report, raw: bytes = b"", source: str = "bounce-server"):
    """Record one Report and apply the suppression policy; None when it changes nothing."""
    type = _EVENT_TYPE.get(report.kind)
    if type is None:
        return None
    send = find_send(report)
    reason = report.reason
    if send is not None and report.recipient_named and report.recipient \
            and email_key(report.recipient) != email_key(send.email):
        reason = f"names {report.recipient[:80]}, but the token's send went elsewhere; {reason}"
        log.info("%s report names %r, not the recipient of send %s: recorded, nobody suppressed",
                 report.kind, report.recipient[:200], send.pk)
        send = None
    email = send.email if send is not None else report.recipient
    if not email:
        log.info("%s report matches no send and names no recipient; dropped", report.kind)
        return None
    if send is not None:
        key = f"{type}:{send.pk}:{report.status or report.feedback_type or report.kind}"
    else:
        key = f"{type}:{email.lower()}:{report.message_id or hashlib.sha256(raw).hexdigest()[:32]}"
    event, created = record(
        type, send, key=key, email=email, status=report.status[:16], diagnostic=report.diagnostic,
        source=source, raw=raw[:_RAW_LIMIT].decode("utf-8", "replace"), reason=reason[:255],
    )
    if not created:
        return None
    if send is None:
        log.info("unverified %s report for %r from %s: no Send of this Herald; recorded, nobody suppressed",
                 report.kind, email[:200], source)
    apply_policy(event)
    return event


def apply_policy(event):
    """Suppress the address of a new bounce or complaint Event when the policy says so,
    and count it against its campaign's circuit breakers once it is committed.

    Only an Event tied to a Send counts: an unverified one (no Send) suppresses
    no one and is not counted toward anyone's soft bounces.
    """
    if event.send_id is None:
        return
    transaction.on_commit(partial(breaker.observe, event))
    if event.type == Event.Type.BOUNCE:
        suppress(event.email, Suppression.Reason.HARD_BOUNCE, _detail(event), event.pk)
    elif event.type == Event.Type.COMPLAINT:
        suppress(event.email, Suppression.Reason.COMPLAINT, _detail(event), event.pk)
    elif event.type == Event.Type.SOFT_BOUNCE:
        since = timezone.now() - timedelta(days=settings.HERALD_SOFT_BOUNCE_WINDOW_DAYS)
        count = Event.objects.filter(email=event.email, type=Event.Type.SOFT_BOUNCE, created_at__gte=since,
                                     send__isnull=False).count()
        if count >= settings.HERALD_SOFT_BOUNCE_LIMIT:
            suppress(event.email, Suppression.Reason.SOFT_BOUNCE, f"{count} soft bounces; last: {_detail(event)}", event.pk)


def _detail(event):
    return " ".join(p for p in (event.status, event.diagnostic) if p)[:500] or event.source


def find_send(report):
    """The Send a report is about, or None when nothing ties it to one (see the module docstring)."""
    if report.send_id is not None:
        send = Send.objects.filter(pk=report.send_id).first()
        if send is not None:
            return send
    if not report.message_id:
        return None
    # Submitted messages keep their application's Message-ID, which several Sends may share.
    candidates = list(Send.objects.filter(message_id__in=[report.message_id, f"<{report.message_id}>"])
                      .order_by("-pk")[:100])
    if report.recipient_named:
        return next((s for s in candidates if email_key(s.email) == email_key(report.recipient)), None)
    return candidates[0] if len(candidates) == 1 else None
