"""Durable acceptance: a batch of messages and their ledger rows in one transaction.

The server answers 250 only after ``store_batch`` returned, that is after
PostgreSQL committed (and, with synchronous_commit on, flushed its WAL). Messages
that arrive while a commit is in flight wait for the next one: one commit
serves many clients, which is what lets the server accept far more messages
per second than the disk can do fsyncs.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from campaigns.models import Contact, Suppression, email_key
from delivery.models import Send
from delivery.signals import send_outcome
from submission.models import OutboundMessage

log = logging.getLogger(__name__)


@dataclass
class Accepted:
    """A message as received, waiting to be stored."""

    credential_id: int
    mail_from: str
    rcpt_tos: list
    raw: bytes
    from_header: str = ""
    from_domain: str = ""
    subject: str = ""
    message_id: str = ""
    tag: str = ""
    peer: str = ""
    # X-Herald-Template: the template to render in place of this message (see submission.templated).
    template: str = ""
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
    keys = sorted({email_key(r) for item in items for r in item.rcpt_tos})
    now = timezone.now()
    postgres = connection.vendor == "postgresql"
    # Inside a caller's transaction (a signup storing its confirmation mail) no savepoint of its own:
    # a failure here rolls the caller's work back with it, and two round trips are saved.
    with transaction.atomic(savepoint=False):
        if postgres:
            message_ids, send_ids, suppressed, contacts = _prepare_postgres(items, keys)
        else:
            message_ids, send_ids = [None] * len(items), None
            suppressed = dict(Suppression.objects.filter(email_key__in=keys).values_list("email_key", "reason"))
            contacts = dict(Contact.objects.filter(email_key__in=keys).values_list("email_key", "id"))
        messages = [_message_row(item, pk, now) for item, pk in zip(items, message_ids, strict=True)]
        if postgres:
            for item, row in zip(items, messages, strict=True):
                item.outbound_id = row["id"]
            sends = _send_rows(items, send_ids, suppressed, contacts, now)
            _insert_postgres(messages, sends)
        else:
            _insert_orm(OutboundMessage, messages)
            for item, row in zip(items, messages, strict=True):
                item.outbound_id = row["id"]
            sends = _send_rows(items, None, suppressed, contacts, now)
            _insert_orm(Send, sends)
    by_message = {item.outbound_id: item for item in items}
    for row in sends:
        by_message[row["outbound_id"]].send_ids.append(row["id"])
    announce_skipped([row for row in sends if row["status"] == Send.Status.SKIPPED])
    return [row["id"] for row in sends if row["status"] == Send.Status.QUEUED]


def _message_row(item: Accepted, pk, now) -> dict:
    return {
        "id": pk, "credential_id": item.credential_id, "mail_from": item.mail_from,
        "from_header": item.from_header[:998], "from_domain": item.from_domain[:253],
        "subject": item.subject[:998], "message_id": item.message_id[:255],
        "raw": item.raw, "size": len(item.raw), "recipients": len(item.rcpt_tos), "tag": item.tag[:100],
        "peer": item.peer[:64], "created_at": now,
    }


def _send_rows(items, ids, suppressed, contacts, now) -> list[dict]:
    ids = iter(ids) if ids is not None else None
    rows = []
    for item in items:
        for rcpt in item.rcpt_tos:
            key = email_key(rcpt)
            reason = suppressed.get(key)
            rows.append({
                "id": next(ids) if ids else None, "campaign_id": None, "contact_id": contacts.get(key),
                "email": rcpt, "domain": recipient_domain(rcpt),
                "status": Send.Status.SKIPPED if reason else Send.Status.QUEUED,
                "smtp_reply": f"Not sent: the address is suppressed ({reason})" if reason else "",
                "outbound_id": item.outbound_id, "next_attempt_at": now, "created_at": now, "updated_at": now,
            })
    return rows


def announce_skipped(rows: list[dict]) -> None:
    """Tell listeners (tracking records Events) that suppressed recipients were not sent, and why."""
    for row in rows:
        send = Send(**{k: v for k, v in row.items()})
        send_outcome.send(sender=Send, send=send, outcome="skipped", code=None, reply=row["smtp_reply"])


# --- PostgreSQL: three round trips per batch (look-ups, one INSERT, COMMIT) -----------------
#
# A batch's fixed cost is paid by every message in it, and with many clients
# batches are small; so the look-ups share one query and both tables one
# statement. Ids come from the sequences up front, so rows map to their
# messages whatever order they are inserted in. Parameters travel separately
# from the SQL text, bytea in binary (Django would quote 10 KB into the query).

def _cursor():
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _prepare_postgres(items, keys):
    """New ids for both tables, and the recipients' suppressions and contacts, in one query."""
    recipients = sum(len(item.rcpt_tos) for item in items)
    sql = f"""
        SELECT 'm', nextval(pg_get_serial_sequence('{OutboundMessage._meta.db_table}', 'id'))::text, ''
          FROM generate_series(1, %(messages)s)
        UNION ALL
        SELECT 's', nextval(pg_get_serial_sequence('{Send._meta.db_table}', 'id'))::text, ''
          FROM generate_series(1, %(recipients)s)
        UNION ALL
        SELECT 'x', email_key, reason FROM {Suppression._meta.db_table} WHERE email_key = ANY(%(keys)s)
        UNION ALL
        SELECT 'c', email_key, id::text FROM {Contact._meta.db_table} WHERE email_key = ANY(%(keys)s)
    """  # noqa: S608 - table names from the models, values as parameters
    message_ids, send_ids, suppressed, contacts = [], [], {}, {}
    with _cursor() as cur:
        cur.execute(sql, {"messages": len(items), "recipients": recipients, "keys": keys})
        for kind, a, b in cur.fetchall():
            if kind == "m":
                message_ids.append(int(a))
            elif kind == "s":
                send_ids.append(int(a))
            elif kind == "x":
                suppressed[a] = b
            else:
                contacts[a] = int(b)
    return message_ids, send_ids, suppressed, contacts


def _unnest(model, rows: list[dict], params: dict, prefix: str) -> str:
    """``INSERT INTO table (...) SELECT * FROM unnest(arrays)``, every column of the model.

    A field added to the model later (with a default) is filled from its default.
    """
    given = rows[0].keys()
    columns, casts = [], []
    for n, model_field in enumerate(model._meta.concrete_fields):
        if model_field.attname in given:
            values = [row[model_field.attname] for row in rows]
        else:
            values = [model_field.get_db_prep_save(model_field.get_default(), connection)] * len(rows)
        name = f"{prefix}{n}"
        params[name] = values
        columns.append(connection.ops.quote_name(model_field.column))
        casts.append(f"%({name})b::{_array_type(model_field)}[]")
    table = connection.ops.quote_name(model._meta.db_table)
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({', '.join(casts)})"  # noqa: S608


def _insert_postgres(messages: list[dict], sends: list[dict]) -> None:
    params = {}
    sql = _unnest(OutboundMessage, messages, params, "m")
    if sends:
        sql = f"WITH stored AS ({sql}) " + _unnest(Send, sends, params, "s")
    with _cursor() as cur:
        cur.execute(sql, params)


def _array_type(model_field) -> str:
    db_type = model_field.db_type(connection)
    return {"bigserial": "bigint", "serial": "integer"}.get(db_type, db_type)


def _insert_orm(model, rows: list[dict]) -> None:
    created = model.objects.bulk_create([model(**{k: v for k, v in row.items() if k != "id"}) for row in rows])
    for row, obj in zip(rows, created, strict=True):
        row["id"] = obj.pk


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


def stored_not_handed_off(now=None) -> list[int]:
    """Queued sends of submitted messages that are due and became so within the sweeper's grace time.

    Among them is everything an earlier run of the server committed and did not
    hand off before it died (older rows are the sweeper's). Some may already be
    on the queue: a second task for a row finds it claimed and does nothing.
    """
    now = now or timezone.now()
    return list(
        Send.objects.filter(
            status=Send.Status.QUEUED, outbound_id__isnull=False,
            next_attempt_at__lte=now, next_attempt_at__gte=now - timedelta(seconds=settings.HERALD_ORPHAN_GRACE),
        ).order_by("id").values_list("id", flat=True)
    )


def hand_off_leftovers() -> None:
    """At start, as Postfix's queue manager does: hand the engine what the last run stored but did not hand off."""
    try:
        ids = stored_not_handed_off()
    except Exception:
        log.exception("could not look for sends an earlier run stored; the sweeper will enqueue them")
        return
    if ids:
        log.info("handing %d stored sends to the engine that an earlier run may not have handed off", len(ids))
        hand_to_engine(ids)
