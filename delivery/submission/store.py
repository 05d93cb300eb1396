"""Durable acceptance: a batch of messages and their ledger rows in one transaction.

The server answers 250 only after ``store_batch`` returned, that is after
PostgreSQL committed (and, with synchronous_commit on, flushed its WAL). Messages
that arrive while a commit is in flight wait for the next one: one commit
serves many clients, which is what lets the server accept far more messages
per second than the disk can do fsyncs.
"""

import logging
from dataclasses import dataclass, field

import psycopg
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from campaigns.models import Contact, Suppression, email_key
from delivery.models import Send
from delivery.signals import send_outcome
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
    if not connection.in_atomic_block:  # a worker thread's own connection, between batches
        close_old_connections()
    keys = {email_key(r) for item in items for r in item.rcpt_tos}
    now = timezone.now()
    insert = _insert_unnest if connection.vendor == "postgresql" else _insert_orm
    with transaction.atomic():
        ids = _new_ids(OutboundMessage, len(items))
        messages = []
        for item, pk in zip(items, ids, strict=True):
            messages.append({
                "id": pk, "credential_id": item.credential_id, "mail_from": item.mail_from,
                "from_header": item.from_header[:998], "subject": item.subject[:998], "message_id": item.message_id[:255],
                "raw": item.raw, "size": len(item.raw), "recipients": len(item.rcpt_tos), "tag": item.tag[:100],
                "peer": item.peer[:64], "created_at": now,
            })
        insert(OutboundMessage, messages)
        for item, row in zip(items, messages, strict=True):
            item.outbound_id = row["id"]
        # Set-based look-ups: one query each per batch, never one per recipient.
        suppressed = dict(Suppression.objects.filter(email_key__in=keys).values_list("email_key", "reason"))
        contacts = dict(Contact.objects.filter(email_key__in=keys).values_list("email_key", "id"))
        sends = []
        send_ids = iter(_new_ids(Send, sum(len(item.rcpt_tos) for item in items)))
        for item in items:
            for rcpt in item.rcpt_tos:
                key = email_key(rcpt)
                reason = suppressed.get(key)
                sends.append({
                    "id": next(send_ids), "campaign_id": None, "contact_id": contacts.get(key),
                    "email": rcpt, "domain": recipient_domain(rcpt),
                    "status": Send.Status.SKIPPED if reason else Send.Status.QUEUED,
                    "smtp_reply": f"Not sent: the address is suppressed ({reason})" if reason else "",
                    "outbound_id": item.outbound_id, "next_attempt_at": now, "created_at": now, "updated_at": now,
                })
        stored = insert(Send, sends)
    announce_skipped([row for row in sends if row["status"] == Send.Status.SKIPPED])
    by_message = {item.outbound_id: item for item in items}
    for pk, row in zip(stored, sends, strict=True):
        by_message[row["outbound_id"]].send_ids.append(pk)
    return [pk for pk, row in zip(stored, sends, strict=True) if row["status"] == Send.Status.QUEUED]


def announce_skipped(rows: list[dict]) -> None:
    """Tell listeners (tracking records Events) that suppressed recipients were not sent, and why."""
    for row in rows:
        send = Send(**{k: v for k, v in row.items()})
        send_outcome.send(sender=Send, send=send, outcome="skipped", code=None, reply=row["smtp_reply"])


def _new_ids(model, count: int) -> list[int | None]:
    """Primary keys taken from the table's sequence up front, so rows map to items whatever order they insert in."""
    if connection.vendor != "postgresql":
        return [None] * count
    with connection.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                    [model._meta.db_table, count])
        return [row[0] for row in cur.fetchall()]


def _insert_orm(model, rows: list[dict]) -> list[int]:
    created = model.objects.bulk_create([model(**{k: v for k, v in row.items() if v is not None or k != "id"}) for row in rows])
    for row, obj in zip(rows, created, strict=True):
        row["id"] = obj.pk
    return [obj.pk for obj in created]


def _insert_unnest(model, rows: list[dict]) -> list[int]:
    """One INSERT ... SELECT FROM unnest(arrays) per table: a fraction of bulk_create's per-row cost.

    Rows carry their ids (from _new_ids), so nothing depends on insertion order.

    Columns are taken from the model, so a field added later (with a default)
    is filled from its default rather than breaking the insert.
    """
    given = rows[0].keys()
    columns, arrays, casts = [], [], []
    for model_field in model._meta.concrete_fields:
        if model_field.attname in given:
            values = [row[model_field.attname] for row in rows]
        else:
            default = model_field.get_db_prep_save(model_field.get_default(), connection)
            values = [default] * len(rows)
        columns.append(connection.ops.quote_name(model_field.column))
        arrays.append(values)
        casts.append(f"%b::{_array_type(model_field)}[]")
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT * FROM unnest({', '.join(casts)})"
    )
    # Django binds parameters on the client (quoting a 10 KB message into the
    # SQL text); a plain psycopg cursor on the same connection and transaction
    # sends them separately, bytea in binary.
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cur:
        cur.execute(sql, arrays)
    return [row["id"] for row in rows]


def _array_type(field) -> str:
    db_type = field.db_type(connection)
    return {"bigserial": "bigint", "serial": "integer"}.get(db_type, db_type)


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
