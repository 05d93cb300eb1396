"""Durable acceptance: a batch of messages and their ledger rows in one transaction.

The server answers 250 only after ``store_batch`` returned, that is after
PostgreSQL committed (and, with synchronous_commit on, flushed its WAL). Messages
that arrive while a commit is in flight wait for the next one: one commit
serves many clients, which is what lets the server accept far more messages
per second than the disk can do fsyncs.
"""

import logging
from dataclasses import dataclass, field

from django.db import close_old_connections, transaction
from django.utils import timezone

from campaigns.models import Contact, Suppression, email_key
from delivery.models import Send
from delivery.submission.models import OutboundMessage

log = logging.getLogger(__name__)


@dataclass
class Accepted:
    """A message as received, waiting to be stored."""

    credential_id: int
    mail_from: str
    rcpt_tos: list
    raw: bytes
    from_header: str = ""
    subject: str = ""
    message_id: str = ""
    tag: str = ""
    peer: str = ""
    # Filled by store_batch.
    outbound_id: int | None = None
    send_ids: list = field(default_factory=list)


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def store_batch(items: list[Accepted]) -> list[int]:
    """Store messages and one Send per recipient, all or nothing; return the ids of the queued sends.

    The caller hands those to the engine after answering the clients. Should
    that hand-off never happen (a crash right after the commit), the engine's
    sweeper enqueues queued rows whose next_attempt_at has long passed.
    """
    close_old_connections()
    keys = {email_key(r) for item in items for r in item.rcpt_tos}
    now = timezone.now()
    with transaction.atomic():
        messages = OutboundMessage.objects.bulk_create(
            [
                OutboundMessage(
                    credential_id=i.credential_id,
                    mail_from=i.mail_from,
                    from_header=i.from_header[:998],
                    subject=i.subject[:998],
                    message_id=i.message_id[:255],
                    raw=i.raw,
                    size=len(i.raw),
                    recipients=len(i.rcpt_tos),
                    tag=i.tag[:100],
                    peer=i.peer[:64],
                )
                for i in items
            ]
        )
        # Set-based look-ups: one query each per batch, never one per recipient.
        suppressed = dict(Suppression.objects.filter(email_key__in=keys).values_list("email_key", "reason"))
        contacts = dict(Contact.objects.filter(email_key__in=keys).values_list("email_key", "id"))
        rows, owners = [], []
        for item, message in zip(items, messages, strict=True):
            item.outbound_id = message.pk
            for rcpt in item.rcpt_tos:
                key = email_key(rcpt)
                reason = suppressed.get(key)
                rows.append(
                    Send(
                        campaign=None,
                        contact_id=contacts.get(key),
                        email=rcpt,
                        domain=recipient_domain(rcpt),
                        status=Send.Status.SKIPPED if reason else Send.Status.QUEUED,
                        smtp_reply=f"Not sent: the address is suppressed ({reason})" if reason else "",
                        outbound_id=message.pk,
                        next_attempt_at=now,
                    )
                )
                owners.append(item)
        sends = Send.objects.bulk_create(rows)
    for item, send in zip(owners, sends, strict=True):
        item.send_ids.append(send.pk)
    return [s.pk for s in sends if s.status == Send.Status.QUEUED]


def hand_to_engine(send_ids: list[int]) -> None:
    """Enqueue committed sends. A failure here loses nothing: the rows stay queued in the ledger."""
    try:
        from delivery.dispatch import enqueue_sends
    except ImportError:
        log.warning("delivery.dispatch is not available; %d sends stay queued", len(send_ids))
        return
    try:
        enqueue_sends(send_ids)
    except Exception:
        log.exception("could not enqueue %d committed sends; they stay queued in the ledger", len(send_ids))
