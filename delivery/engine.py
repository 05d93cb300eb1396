"""The worker side of the send path: claim a batch, build, take tokens, send, classify, write back.

``send_batch(ids)`` is what the Celery task runs; it is testable without
Celery. It returns the sends it handed back (no tokens, no connection slot)
with the countdown after which they should be tried, and never sleeps.
"""

import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, models, transaction
from django.utils import timezone

from campaigns.models import Campaign, Contact, Suppression, email_key
from campaigns.rendering import ContactData, ContentError
from campaigns.sandbox import BudgetExceeded, render_budget
from campaigns.suppression import suppress
from delivery import adaptive, routing, throttle
from delivery.classify import BOUNCED, DEFERRED, FAILED, SENT, classify_reply, next_attempt
from delivery.heartbeat import dead as heartbeat_dead
from delivery.heartbeat import heartbeat
from delivery.models import Send
from delivery.mx import NoRoute
from delivery.signals import send_outcome
from delivery.smtp import SMTPFailure, Timeouts, pool

log = logging.getLogger(__name__)

SEND = Send._meta.db_table
CAMPAIGN = Campaign._meta.db_table
CONTACT = Contact._meta.db_table
SUPPRESSION = Suppression._meta.db_table
PENDING = ("queued", "sending", "deferred")
# Outcomes are written back after this many messages or WRITE_SECONDS,
# whichever comes first, so a killed worker can have sent at most that many
# messages whose rows still say "sending" (the duplicate bound).
WRITE_CHUNK = 10
WRITE_SECONDS = 1.0
# Messages sent over one connection before it goes back to the pool (which
# refreshes its slot in Redis).
CONNECTION_CHUNK = 100
# Pause and cancel are seen between messages: a Redis flag, read at most this often.
STOP_CHECK_SECONDS = 0.1
STOP_KEY = throttle.PREFIX + "stop:"
# A relay that fails this many connection attempts in a row, for at least
# RELAY_DOWN_SECONDS, pauses its campaigns. A relay that is restarting or
# answers 421 for a minute comes back by itself: until then its sends are
# deferred with backoff (attempts are counted, nothing is burnt), and nobody
# has to resume anything.
RELAY_FAILURE_LIMIT = 5
RELAY_DOWN_SECONDS = 120
# A relay that refuses this many messages of one chunk at session level (a 4xx
# to MAIL) and takes none is down: the group's other relays take its messages.
SESSION_REFUSALS = 3
# How long a worker keeps trying to record outcomes while PostgreSQL restarts
# (well inside the lease, so no other worker has taken the rows meanwhile).
WRITE_RETRY_SECONDS = 30
# Wall-clock budget of the renders of one message (a normal one takes well
# under a millisecond); a message over it, or over the output or loop budget,
# pauses its campaign. A render still running when the task's soft time limit
# strikes, and running for at least STUCK_RENDER_SECONDS, does as well.
RENDER_SECONDS = 10.0
STUCK_RENDER_SECONDS = 1.0


def lease_seconds():
    return getattr(settings, "HERALD_SEND_LEASE", 1800)


def max_claims():
    return getattr(settings, "HERALD_SEND_MAX_CLAIMS", 5)


def worst_chunk_seconds():
    """The longest a chunk can take before its outcomes are written back: the
    time bound, then one more message that spends every SMTP timeout (MAIL,
    RCPT, DATA, and the final dot; RFC 5321 4.5.3.2).
    """
    t = Timeouts.from_settings()
    return WRITE_SECONDS + 2 * t.command + t.data_start + t.final_dot


def lease_problem():
    """Why HERALD_SEND_LEASE is unsafe, or None: a lease shorter than one chunk
    could expire while its outcomes are still to be written, even between renewals.
    """
    worst = worst_chunk_seconds()
    if lease_seconds() < worst:
        return (f"HERALD_SEND_LEASE is {lease_seconds()} s, shorter than the worst-case send chunk "
                f"({worst:g} s with the SMTP timeouts in effect): raise it, or cap the timeouts with HERALD_SMTP_TIMEOUT")
    return None


@dataclass
class Row:
    id: int
    campaign_id: int | None
    contact_id: int | None
    email: str
    domain: str
    attempts: int
    first_attempt_at: datetime | None
    outbound_id: int | None
    claims: int = 1
    token: int | None = None  # the claim's lease token
    # Read with the claim: what the template sees, and whether to send at all.
    contact_status: str | None = None
    first_name: str = ""
    last_name: str = ""
    attributes: dict | None = None
    contact_email: str = ""
    suppressed: bool = False

    @property
    def pk(self):
        return self.id

    def as_send(self, **extra):
        return Send(id=self.id, campaign_id=self.campaign_id, contact_id=self.contact_id, email=self.email,
                    domain=self.domain, attempts=self.attempts, first_attempt_at=self.first_attempt_at,
                    outbound_id=self.outbound_id, **extra)


@dataclass
class Result:
    row: Row
    status: str
    code: int | None = None
    reply: str = ""
    message_id: str = ""
    next_attempt_at: datetime | None = None
    attempted: bool = True


# --- the database side ---------------------------------------------------------

# SQLite holds at most this many bound parameters per statement in old builds.
SQLITE_CHUNK = 500


def _sqlite():
    return connection.vendor == "sqlite"


def _chunks(items, size=SQLITE_CHUNK):
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _marks(values):
    return ", ".join(["%s"] * len(values))


def _db_time(value):
    """A datetime as SQLite stores it (naive UTC text), so raw SQL compares like the ORM."""
    return connection.ops.adapt_datetimefield_value(value)


def claim(ids, now=None) -> list[Row]:
    """Take queued rows of running campaigns (or submitted messages) for this worker, atomically.

    The claim gets a fresh lease token and names this worker process, whose
    heartbeat is announced first: the sweeper never sees a claim of a worker
    it has not heard of.
    """
    now = now or timezone.now()
    owner = heartbeat.beat()
    token = secrets.randbits(62)
    if _sqlite():
        return _claim_sqlite(ids, now, token, owner)
    return _claim_postgres(ids, now, token, owner)


def _row(r, token, suppressed):
    return Row(*r[:9], token=token, contact_status=r[9], first_name=r[10] or "", last_name=r[11] or "",
               attributes=_attributes(r[12]), contact_email=r[13] or "", suppressed=suppressed)


def _attributes(value):
    """A contact's attributes as a dict: a raw cursor returns the JSON column as text (Django's
    PostgreSQL backend loads jsonb as a string; SQLite stores text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _claim_postgres(ids, now, token, owner) -> list[Row]:
    """One statement claims the rows and reads what building needs: the contact's
    fields and whether the address was suppressed since the snapshot.
    """
    with connection.cursor() as cur:
        cur.execute(
            f"""
            WITH c AS (
                SELECT s.id FROM {SEND} s
                WHERE s.id = ANY(%(ids)s) AND s.status = 'queued'
                  AND (s.campaign_id IS NULL OR EXISTS (
                       SELECT 1 FROM {CAMPAIGN} k WHERE k.id = s.campaign_id AND k.status = 'sending'))
                ORDER BY s.id
                FOR UPDATE OF s SKIP LOCKED),
            u AS (
                UPDATE {SEND} s SET status = 'sending', lease_expires_at = %(lease)s,
                       lease_token = %(token)s, lease_owner = %(owner)s, claims = s.claims + 1, updated_at = %(now)s
                FROM c WHERE s.id = c.id
                RETURNING s.id, s.campaign_id, s.contact_id, s.email, s.domain, s.attempts, s.first_attempt_at, s.outbound_id,
                          s.claims)
            SELECT u.id, u.campaign_id, u.contact_id, u.email, u.domain, u.attempts, u.first_attempt_at, u.outbound_id,
                   u.claims, ct.status, ct.first_name, ct.last_name, ct.attributes, ct.email,
                   EXISTS (SELECT 1 FROM {SUPPRESSION} p WHERE p.email_key = lower(trim(u.email)))
            FROM u LEFT JOIN {CONTACT} ct ON ct.id = u.contact_id
            ORDER BY u.id
            """,  # noqa: S608
            {"ids": list(ids), "now": now, "lease": now + timedelta(seconds=lease_seconds()),
             "token": token, "owner": owner},
        )
        rows = cur.fetchall()
    return [_row(r, token, r[14]) for r in rows]


def _claim_sqlite(ids, now, token, owner) -> list[Row]:
    """SQLite has one writer at a time: inside an IMMEDIATE transaction (the
    settings' transaction_mode) a conditional UPDATE ... RETURNING is an atomic
    claim, and no other worker can take the same row. What building needs is
    read after the commit, so the write lock is held only for the UPDATE.
    """
    lease, at = _db_time(now + timedelta(seconds=lease_seconds())), _db_time(now)
    claimed = []
    with transaction.atomic(), connection.cursor() as cur:
        for chunk in _chunks(ids):
            cur.execute(
                f"""
                UPDATE {SEND} AS s SET status = 'sending', lease_expires_at = %s,
                       lease_token = %s, lease_owner = %s, claims = s.claims + 1, updated_at = %s
                WHERE s.id IN ({_marks(chunk)}) AND s.status = 'queued'
                  AND (s.campaign_id IS NULL OR EXISTS (
                       SELECT 1 FROM {CAMPAIGN} k WHERE k.id = s.campaign_id AND k.status = 'sending'))
                RETURNING id
                """,  # noqa: S608
                [lease, token, owner, at, *chunk],
            )
            claimed.extend(r[0] for r in cur.fetchall())
    rows = []
    for chunk in _chunks(sorted(claimed)):
        rows.extend(
            Send.objects.filter(id__in=chunk).order_by("id").values_list(
                "id", "campaign_id", "contact_id", "email", "domain", "attempts", "first_attempt_at", "outbound_id",
                "claims", "contact__status", "contact__first_name", "contact__last_name", "contact__attributes", "contact__email",
            )
        )
    keys = {email_key(r[3]) for r in rows}
    suppressed = set()
    for chunk in _chunks(keys):
        suppressed.update(Suppression.objects.filter(email_key__in=chunk).values_list("email_key", flat=True))
    return [_row(r, token, email_key(r[3]) in suppressed) for r in rows]


def _by_token(rows):
    out = {}
    for r in rows:
        out.setdefault(r.token, []).append(r.id)
    return out.items()


def _held(ids, token):
    """The rows among ``ids`` that the claim with ``token`` still holds."""
    return Send.objects.filter(id__in=ids, lease_token=token, status="sending")


def release(rows, countdown=0.0, now=None):
    """Hand claimed rows back to the queue untouched (no attempt is counted).

    Only rows the claim still holds change; a hand-back is an outcome, so the
    claim count starts again.
    """
    if not rows:
        return
    now = now or timezone.now()
    for token, ids in _by_token(rows):
        _held(ids, token).update(
            status="queued", lease_expires_at=None, lease_token=None, lease_owner="", claims=0,
            next_attempt_at=now + timedelta(seconds=countdown), updated_at=now,
        )


def extend_lease(rows, now=None):
    if rows:
        now = now or timezone.now()
        for token, ids in _by_token(rows):
            _held(ids, token).update(lease_expires_at=now + timedelta(seconds=lease_seconds()))


def forgive(rows):
    """Count this claim as the first of ``rows``: they were only near a worker that died."""
    for token, ids in _by_token(rows):
        _held(ids, token).update(claims=1)


def _stale(results, written):
    """Outcomes of rows another claim has taken over: logged and counted, never written."""
    stale = [r for r in results if r.row.id not in written]
    if stale:
        log.warning("%d outcomes not recorded: the rows were claimed again after this worker's lease (%s)",
                    len(stale), ", ".join(f"send {r.row.id} {r.status} {r.code or ''}".strip() for r in stale[:20]))
        try:
            throttle.client().incrby(throttle.PREFIX + "stale-outcomes", len(stale))
        except Exception:
            pass
    return stale


def write_back(results, relay_id=None, now=None) -> set:
    """Record outcomes in one statement; only rows whose claim (lease token) this worker still holds change.

    Returns the ids written; the others are logged as stale.
    """
    if not results:
        return set()
    now = now or timezone.now()
    rows = [
        (r.row.id, r.status, r.code, r.reply[:2000], r.message_id[:255], r.next_attempt_at, 1 if r.attempted else 0,
         r.row.token)
        for r in results
    ]
    if _sqlite():
        written = _write_back_sqlite(rows, relay_id, now)
    else:
        written = _write_back_postgres(rows, relay_id, now)
    _stale(results, written)
    return written


def _write_back_postgres(rows, relay_id, now):
    cols = list(zip(*rows, strict=True))
    with connection.cursor() as cur:
        cur.execute(
            f"""
            UPDATE {SEND} s SET status = v.status, smtp_code = v.code, smtp_reply = v.reply,
                   message_id = CASE WHEN v.mid <> '' THEN v.mid ELSE s.message_id END,
                   next_attempt_at = v.nat, attempts = s.attempts + v.inc, lease_expires_at = NULL,
                   first_attempt_at = CASE WHEN v.inc = 1 THEN COALESCE(s.first_attempt_at, %(now)s)
                                           ELSE s.first_attempt_at END,
                   sent_at = CASE WHEN v.status = 'sent' THEN %(now)s ELSE s.sent_at END,
                   relay_id = COALESCE(%(relay)s, s.relay_id), claims = 0, updated_at = %(now)s
            FROM unnest(%(ids)s::bigint[], %(st)s::text[], %(code)s::int[], %(reply)s::text[], %(mid)s::text[],
                        %(nat)s::timestamptz[], %(inc)s::int[], %(tok)s::bigint[])
                 AS v(id, status, code, reply, mid, nat, inc, tok)
            WHERE s.id = v.id AND s.lease_token = v.tok AND s.status = 'sending'
            RETURNING s.id
            """,  # noqa: S608
            {"ids": list(cols[0]), "st": list(cols[1]), "code": list(cols[2]), "reply": list(cols[3]),
             "mid": list(cols[4]), "nat": list(cols[5]), "inc": list(cols[6]), "tok": list(cols[7]),
             "now": now, "relay": relay_id},
        )
        return {r[0] for r in cur.fetchall()}


def _write_back_sqlite(rows, relay_id, now):
    """One UPDATE per row in one transaction: SQLite commits once and has no array parameters."""
    at = _db_time(now)
    written = set()
    with transaction.atomic(), connection.cursor() as cur:
        for send_id, status, code, reply, mid, nat, inc, token in rows:
            cur.execute(
                f"""
                UPDATE {SEND} SET status = %s, smtp_code = %s, smtp_reply = %s,
                       message_id = CASE WHEN %s <> '' THEN %s ELSE message_id END,
                       next_attempt_at = %s, attempts = attempts + %s, lease_expires_at = NULL,
                       first_attempt_at = CASE WHEN %s = 1 THEN COALESCE(first_attempt_at, %s) ELSE first_attempt_at END,
                       sent_at = CASE WHEN %s = 'sent' THEN %s ELSE sent_at END,
                       relay_id = COALESCE(%s, relay_id), claims = 0, updated_at = %s
                WHERE id = %s AND lease_token = %s AND status = 'sending'
                """,  # noqa: S608
                (status, code, reply, mid, mid, _db_time(nat) if nat else None, inc, inc, at, status, at, relay_id, at,
                 send_id, token),
            )
            if cur.rowcount:
                written.add(send_id)
    return written


def settle_campaigns(campaign_ids, now=None):
    """Cancel leftovers of cancelled campaigns; finish running ones with nothing pending."""
    ids = [c for c in set(campaign_ids) if c is not None]
    if not ids:
        return
    now = now or timezone.now()
    current = dict(Campaign.objects.filter(id__in=ids).values_list("id", "status"))
    cancelled = [c for c, status in current.items() if status == Campaign.Status.CANCELLED]
    running = [c for c, status in current.items() if status == Campaign.Status.SENDING]
    if _sqlite():
        _settle_sqlite(cancelled, running, now)
        return
    with connection.cursor() as cur:
        if cancelled:
            cur.execute(
                f"""UPDATE {SEND} s SET status = 'cancelled', lease_expires_at = NULL, updated_at = %(now)s
                    FROM {CAMPAIGN} k WHERE k.id = s.campaign_id AND k.id = ANY(%(ids)s) AND k.status = 'cancelled'
                      AND s.status IN ('queued', 'deferred')""",  # noqa: S608
                {"ids": cancelled, "now": now},
            )
        if running:
            cur.execute(
                f"""UPDATE {CAMPAIGN} k SET status = 'finished', finished_at = %(now)s, updated_at = %(now)s
                    WHERE k.id = ANY(%(ids)s) AND k.status = 'sending'
                      AND NOT EXISTS (SELECT 1 FROM {SEND} s WHERE s.campaign_id = k.id
                                      AND s.status IN ('queued', 'sending', 'deferred'))""",  # noqa: S608
                {"ids": running, "now": now},
            )


def _settle_sqlite(cancelled, running, now):
    at = _db_time(now)
    with connection.cursor() as cur:
        for chunk in _chunks(cancelled):
            cur.execute(
                f"""UPDATE {SEND} AS s SET status = 'cancelled', lease_expires_at = NULL, updated_at = %s
                    WHERE s.campaign_id IN ({_marks(chunk)}) AND s.status IN ('queued', 'deferred')
                      AND EXISTS (SELECT 1 FROM {CAMPAIGN} k WHERE k.id = s.campaign_id AND k.status = 'cancelled')""",  # noqa: S608
                [at, *chunk],
            )
        for chunk in _chunks(running):
            cur.execute(
                f"""UPDATE {CAMPAIGN} AS k SET status = 'finished', finished_at = %s, updated_at = %s
                    WHERE k.id IN ({_marks(chunk)}) AND k.status = 'sending'
                      AND NOT EXISTS (SELECT 1 FROM {SEND} s WHERE s.campaign_id = k.id
                                      AND s.status IN ('queued', 'sending', 'deferred'))""",  # noqa: S608
                [at, at, *chunk],
            )


def pause_campaigns(campaign_ids, reason):
    ids = [c for c in set(campaign_ids) if c is not None]
    if ids:
        log.warning("pausing campaigns %s: %s", ids, reason)
        Campaign.objects.filter(id__in=ids, status="sending").update(
            status="paused", status_reason=reason[:2000], updated_at=timezone.now()
        )
        flag_stop(ids)


# --- pause and cancel in the middle of a batch ------------------------------------
#
# The database says whether a campaign runs; a Redis flag per stopped campaign
# lets a worker see a pause or cancel between two messages for the price of
# one Redis read, without a query per message. The flag is only a hint: a
# worker that sees it confirms with the database before it stops.

def flag_stop(campaign_ids):
    """Tell workers mid-batch to stop sending for these campaigns (after the database says so)."""
    try:
        r = throttle.client()
        for c in campaign_ids:
            # Outlives any batch that could have claimed rows before the stop.
            r.set(STOP_KEY + str(c), "1", ex=max(3600, 2 * lease_seconds()))
    except Exception as exc:  # the claims stop anyway; running batches finish what they hold
        log.warning("could not flag campaigns %s as stopped for running batches: %s", campaign_ids, exc)


def clear_stop(campaign_ids):
    try:
        throttle.client().delete(*[STOP_KEY + str(c) for c in campaign_ids])
    except Exception as exc:  # a stale flag costs a query per check, then is ignored
        log.warning("could not clear the stop flag of campaigns %s: %s", campaign_ids, exc)


class Stops:
    """Which of a batch's campaigns were paused or cancelled since the claim; cheap to ask often."""

    def __init__(self, rows):
        self.ids = sorted({r.campaign_id for r in rows if r.campaign_id is not None})
        self.keys = [STOP_KEY + str(c) for c in self.ids]
        self.checked = -math.inf
        self.stopped = set()

    def poll(self) -> set:
        now = time.monotonic()
        if not self.ids or now - self.checked < STOP_CHECK_SECONDS:
            return self.stopped
        self.checked = now
        try:
            flags = throttle.client().mget(self.keys)
        except Exception:
            return self.stopped  # Redis away: the throttle will say so soon enough
        flagged = {c for c, f in zip(self.ids, flags, strict=True) if f and c not in self.stopped}
        if flagged:
            running = set(Campaign.objects.filter(id__in=flagged, status="sending").values_list("id", flat=True))
            self.stopped |= flagged - running
        return self.stopped

    def __call__(self, item) -> bool:
        """For the SMTP client, before each message: False to send it."""
        return item[0].campaign_id in self.poll()


# --- building ------------------------------------------------------------------

_compiled = {}  # campaign id -> (updated_at, compiled)


def compiled_for(campaign_id, updated_at):
    """The campaign's message as frozen when it started, compiled once per process (looked up again when the row changes).

    Never the current draft: an edit made after the start (or of its layout)
    changes nothing that the remaining recipients get.
    """
    from delivery.message import compile_campaign

    hit = _compiled.get(campaign_id)
    if hit and hit[0] == updated_at:
        return hit[1]
    campaign = Campaign.objects.select_related("frozen_content").get(pk=campaign_id)
    if len(_compiled) > 64:
        _compiled.clear()
    compiled = compile_campaign(campaign.as_sent())
    _compiled[campaign_id] = (campaign.updated_at, compiled)
    return compiled


def _build_submitted(row):
    from delivery import submitted

    return submitted.build(row.as_send())


# --- classification --------------------------------------------------------------

def outcome_result(row, code, text, message_id, now):
    o = classify_reply(code, text)
    if o.status == SENT:
        return Result(row, SENT, code, o.reply, message_id), o
    if o.status == DEFERRED:
        # The give-up clock starts at the first attempt, not the first claim: a
        # send that waited out a long throttled backlog has all its retries.
        first = row.first_attempt_at if row.attempts and row.first_attempt_at else now
        at = next_attempt(first, row.attempts + 1, now)
        if at is None:
            return Result(row, FAILED, code, f"gave up after {settings.HERALD_GIVE_UP_AFTER}s: {o.reply}"), o
        return Result(row, DEFERRED, code, o.reply, next_attempt_at=at), o
    return Result(row, o.status, code, o.reply), o


def defer_all(rows, why, now):
    return [outcome_result(r, None, why, "", now)[0] for r in rows]


def _recorded(fn, *args):
    """Run a write of outcomes, riding out a PostgreSQL restart for up to WRITE_RETRY_SECONDS.

    The messages are already on the relay: an outcome lost here means the lease
    expires and they are sent a second time.
    """
    deadline = time.monotonic() + min(WRITE_RETRY_SECONDS, lease_seconds() / 2)
    delay = 0.2
    while True:
        try:
            return fn(*args)
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block or time.monotonic() > deadline:
                raise
            log.warning("database unavailable while recording %s outcomes; retrying in %.1fs", len(args[0]), delay)
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def finish(results, relay_id, now, batch=None):
    written = _recorded(write_back, results, relay_id, now) if results else set()
    if batch is not None:
        batch.on_wire.difference_update(r.row.id for r in results)
    results = [r for r in results if r.row.id in written]
    for r in results:
        if r.status == BOUNCED:
            suppress(r.row.email, "hard_bounce", detail=r.reply)
    for r in results:
        if r.status in (BOUNCED, FAILED):
            responses = send_outcome.send_robust(
                sender=Send, send=r.row.as_send(status=r.status, smtp_code=r.code, smtp_reply=r.reply),
                outcome=r.status, code=r.code, reply=r.reply,
            )
            for _, err in responses:
                if isinstance(err, Exception):
                    log.error("send_outcome receiver failed for send %s: %s", r.row.id, err)


# --- the batch -----------------------------------------------------------------

class Batch:
    """One claim being worked on: its stop flags, and the rows whose outcome is still unknown."""

    def __init__(self, rows):
        self.stops = Stops(rows)
        # Handed to the SMTP client, outcome not yet written back: these may
        # have been delivered, so they are never handed back for an immediate resend.
        self.on_wire = set()
        self.chunk = WRITE_CHUNK


def send_batch(send_ids, now=None, reserved=False):
    """Send what can be sent now; return [(ids, countdown)] or [(ids, countdown, reserved)] to enqueue again.

    ``reserved``: the rows come back for send slots reserved for them (see
    delivery.throttle), so they take the tokens promised to them.
    """
    routing.refresh()
    rows = claim(send_ids, now)
    if not rows:
        return _slots_coming(now)
    mark_progress(rows)
    batch = Batch(rows)
    # The lease is renewed on a timer, not between messages: one message may
    # spend many minutes in SMTP timeouts.
    hold = heartbeat.hold(rows, extend_lease, lease_seconds())
    requeue = []
    try:
        first, rest = _screen(rows, now, batch)
        routing.prepare(rows)
        key_of = {}  # one look-up per domain and way out, not per row
        for part in (first, rest):
            groups = {}
            for row in part:
                plan = routing.plan_for(row)
                target = plan.pick(row.id, routing.down())
                if (row.domain, target) not in key_of:
                    key_of[row.domain, target] = routing.batch_key(row.domain, target)
                groups.setdefault((key_of[row.domain, target], target), (plan, []))[1].append(row)
            for (_, target), (plan, group_rows) in groups.items():
                requeue.extend(_send_group(group_rows, now, batch, reserved, target, plan))
        settle_campaigns({r.campaign_id for r in rows})
    except Exception:
        # Redis or PostgreSQL went away mid-batch: hand back what was never
        # tried if we can; otherwise the lease expires and the sweeper does it.
        # Rows whose outcome could not be recorded stay claimed until their
        # lease expires: they may have been delivered.
        untried = [r for r in rows if r.id not in batch.on_wire]
        try:
            release(untried, 5.0)
        except Exception:
            log.warning("could not release %d sends; their lease will expire", len(untried))
        if batch.on_wire:
            log.warning("%d sends may have been delivered without their outcome recorded; "
                        "they stay claimed until their lease expires", len(batch.on_wire))
        raise
    finally:
        heartbeat.release(hold)
    return requeue + _slots_coming(now)


def _slots_coming(now=None):
    """Parked slot batches whose slot comes within SLOT_HORIZON, for the broker: every batch a worker ends
    hands them over (at most once per HANDOVER_SECONDS across all workers), so the broker only ever holds a
    few seconds of slot batches; beat's due-retries tick does it too, for when no batch runs."""
    try:
        if not throttle.client().set(HANDOVER_KEY, "1", nx=True, px=int(HANDOVER_SECONDS * 1000)):
            return []
        return due_slots(now, stopped=False)
    except Exception as exc:  # Redis or PostgreSQL away: beat's tick hands them over later
        log.debug("slot batches not handed over: %s", exc)
        return []


def _screen(rows, now, batch):
    """Rows claimed before whose worker died without an outcome: ([row to send alone], rest).

    Such a row may be the message that killed the worker, or only have been
    in the same batch. The first of them is sent alone, before the others,
    and keeps its count; the others start counting again, and every outcome
    of the batch is written back on its own, so only the row that kills the
    worker is left without one. A row that killed its worker
    HERALD_SEND_MAX_CLAIMS times fails instead of killing more.
    """
    suspects = [r for r in rows if r.claims > 1]
    if not suspects:
        return [], rows
    batch.chunk = 1
    limit = max_claims()
    poisoned = [r for r in suspects if r.claims > limit]
    if poisoned:
        t = now or timezone.now()
        finish([Result(r, FAILED, reply=f"claimed {r.claims - 1} times without an outcome: the worker died each time",
                       attempted=False) for r in poisoned], None, t, batch)
    suspects = [r for r in suspects if r.claims <= limit]
    if not suspects:
        return [], [r for r in rows if r.claims <= limit]
    first, others = suspects[0], suspects[1:]
    forgive(others)
    for r in others:
        r.claims = 1
    return [first], [r for r in rows if r.claims <= limit and r is not first]


# Reserved slots up to this far ahead go to the broker as countdown tasks (one
# per slot batch); later ones wait in the ledger, parked, and are handed to the
# broker when they come this close: by every batch that ends, and by the
# due-retries tick. So the broker holds at most this many seconds of a
# throttled domain's backlog, however long the backlog is. Few countdown tasks
# matter: a worker holds them in memory and fetches as many more tasks.
SLOT_HORIZON = 3.0
HANDOVER_KEY = throttle.PREFIX + "slots-handover"
HANDOVER_SECONDS = 0.5
# Countdowns end this much after the slot: a worker whose clock runs a little
# ahead of Redis's still finds the token there.
SLOT_MARGIN = 0.05


def _send_group(rows, now=None, batch=None, reserved=False, target=None, plan=None):
    domain = rows[0].domain
    try:
        route = routing.route_for(domain, target, plan)
    except NoRoute as exc:
        now = now or timezone.now()
        code, text = (550, f"5.1.2 {exc}") if exc.permanent else (None, str(exc))
        finish([outcome_result(r, code, text, "", now)[0] for r in rows], None, now, batch)
        return []
    limit = routing.limit_for(domain, target)
    grant = throttle.reserve(limit, len(rows), held=reserved)
    go, later = rows[:grant.granted], rows[grant.granted:]
    slots = [(later, grant.waits(len(later)), throttle.per_task(limit))]
    if route.relay_limit is not None and go:
        rgrant = throttle.reserve(route.relay_limit, len(go), held=reserved)
        if rgrant.granted < len(go):
            refused, go = go[rgrant.granted:], go[:rgrant.granted]
            throttle.give_back(limit, len(refused))
            slots.append((refused, rgrant.waits(len(refused)), throttle.per_task(route.relay_limit)))
    requeue = []
    for waiting, waits, size in slots:
        requeue.extend(hold_for_slots(waiting, waits, size, now))
    if go:
        requeue.extend(_deliver(go, route, limit, now, batch))
    return requeue


def hold_for_slots(rows, waits, size, now=None):
    """Hand back claimed rows to wait for their reserved slots (``waits``: seconds from now, ascending).

    Rows go in slot batches of at most ``size``, each due at its last row's slot.
    Batches due within SLOT_HORIZON are returned as [(ids, countdown, True)] for
    the broker; the rest are parked in the ledger. One statement per claim.
    """
    if not rows:
        return []
    now = now or timezone.now()
    publish, plan = [], []
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        wait = waits[i + len(chunk) - 1] + SLOT_MARGIN
        parked = wait > SLOT_HORIZON
        plan.extend((r, now + timedelta(seconds=wait), parked) for r in chunk)
        if not parked:
            publish.append(([r.id for r in chunk], wait, True))
    by_token = {}
    for r, at, parked in plan:
        by_token.setdefault(r.token, []).append((r.id, at, parked))
    for token, items in by_token.items():
        _queue_at(token, items, now)
    return publish


def _queue_at(token, items, now):
    """Rows of one claim back to the queue, each with its own next attempt and parked flag."""
    if _sqlite():
        with transaction.atomic(), connection.cursor() as cur:
            for send_id, at, parked in items:
                cur.execute(
                    f"""UPDATE {SEND} SET status = 'queued', lease_expires_at = NULL, lease_token = NULL,
                               lease_owner = '', claims = 0, next_attempt_at = %s, parked = %s, updated_at = %s
                        WHERE id = %s AND lease_token = %s AND status = 'sending'""",  # noqa: S608
                    [_db_time(at), parked, _db_time(now), send_id, token],
                )
        return
    ids, ats, parked = (list(c) for c in zip(*items, strict=True))
    with connection.cursor() as cur:
        cur.execute(
            f"""UPDATE {SEND} s SET status = 'queued', lease_expires_at = NULL, lease_token = NULL, lease_owner = '',
                       claims = 0, next_attempt_at = v.at, parked = v.parked, updated_at = %(now)s
                FROM unnest(%(ids)s::bigint[], %(ats)s::timestamptz[], %(parked)s::boolean[]) AS v(id, at, parked)
                WHERE s.id = v.id AND s.lease_token = %(token)s AND s.status = 'sending'""",  # noqa: S608
            {"ids": ids, "ats": ats, "parked": parked, "token": token, "now": now},
        )


def _connect(route):
    """A pooled connection to the first endpoint that answers; None when no slot is free."""
    last = None
    for endpoint in route.endpoints:
        try:
            return pool.get(route.pool_key, endpoint, route.cap, route.idle_timeout, route.max_messages)
        except SMTPFailure as exc:
            if exc.fatal and route.relay is not None:
                raise
            last = exc  # next MX host
    raise last


def _relay_failed(route, exc):
    """Count consecutive connection failures of a relay; True when it should pause its campaigns."""
    if route.relay is None:
        return False
    key = throttle.PREFIX + f"relayfail:{route.relay.pk}"
    r = throttle.client()
    count = r.incr(key)
    r.expire(key, 600)
    r.set(key + ":since", time.time(), nx=True, ex=600)
    since = float(r.get(key + ":since") or time.time())
    return count >= RELAY_FAILURE_LIMIT and time.time() - since >= RELAY_DOWN_SECONDS


class _Builder:
    """Builds messages as the connection asks for them; rows that cannot be sent collect in ``done``.

    Rows of a campaign paused or cancelled meanwhile are not built: they
    collect in ``halted`` to be handed back.
    """

    def __init__(self, rows, batch):
        self.rows = rows
        self.batch = batch
        self.next = 0
        self.done = []
        self.halted = []
        self.over_budget = set()  # campaigns paused for their template while building this batch
        self.interrupted = None  # the task's time limit, caught while building: raised once the chunk is recorded
        self.versions = dict(
            Campaign.objects.filter(id__in={r.campaign_id for r in rows if r.campaign_id}).values_list("id", "updated_at")
        )

    def __iter__(self):
        return self

    def __next__(self):
        while self.next < len(self.rows):
            row = self.rows[self.next]
            self.next += 1
            if row.campaign_id is not None and row.campaign_id in self.batch.stops.poll():
                self.halted.append(row)
                continue
            built = self._build(row)
            if self.interrupted is not None:
                raise StopIteration
            if built is not None:
                self.batch.on_wire.add(row.id)
                return row, built
        raise StopIteration

    def _build(self, row):
        if row.campaign_id in self.over_budget:
            return None  # released when its campaign was paused
        started = time.monotonic()
        try:
            if row.campaign_id is None:
                return _build_submitted(row)
            if row.contact_status != Contact.Status.ACTIVE or row.suppressed:
                # Unsubscribed, blocklisted, deleted or suppressed since the snapshot.
                self.done.append(Result(row, "skipped", reply="recipient no longer mailable", attempted=False))
                return None
            contact = ContactData(row.contact_email, row.first_name, row.last_name, row.attributes)
            compiled = compiled_for(row.campaign_id, self.versions.get(row.campaign_id))
            with render_budget(RENDER_SECONDS):
                return compiled.build(row, contact)
        except SoftTimeLimitExceeded as exc:
            if row.campaign_id is None or time.monotonic() - started < STUCK_RENDER_SECONDS:
                # The time went elsewhere: stop building, so that the messages the
                # server already answered are recorded before the batch stops and
                # its untried rows go back to the queue.
                self.interrupted = exc
                return None
            # The render itself is stuck: its campaign pauses and the batch goes
            # on, so the message on the wire still gets its outcome recorded.
            self._halt(row, "template took longer than the worker's time limit to render")
            return None
        except Exception as exc:
            if row.campaign_id is not None and (isinstance(exc, BudgetExceeded)
                                                or isinstance(exc, ContentError) and exc.budget):
                self._halt(row, str(exc))
                return None
            log.exception("building send %s failed", row.id)
            self.done.append(Result(row, FAILED, reply=f"message could not be built: {exc}"[:2000]))
            return None

    def _halt(self, row, problem):
        """Pause a campaign whose template went over a budget; its rows here go back to the queue.

        Every recipient would cost the same again, so nothing is tried and
        nothing fails: once the template is fixed, resume sends them all.
        """
        campaign_id = row.campaign_id
        self.over_budget.add(campaign_id)
        pause_campaigns({campaign_id}, f"rendering the message to {row.email} stopped: {problem}")
        release([row] + [r for r in self.rows[self.next:] if r.campaign_id == campaign_id])

    def more(self):
        return self.interrupted is None and self.next < len(self.rows)

    def rest(self):
        """Rows never built, taken out of the builder."""
        rows, self.next = self.rows[self.next:], len(self.rows)
        return rows

    def take_done(self):
        done, self.done = self.done, []
        return done


def _pull(pending, builder):
    """Items left from the last call first, then freshly built ones."""
    while pending:
        yield pending.pop(0)
    yield from builder


def _chunk(items, count, seconds):
    """At most ``count`` items, and none pulled after ``seconds``: outcomes are written back after each chunk."""
    deadline = time.monotonic() + seconds
    for n, item in enumerate(items, 1):
        yield item
        if n >= count or time.monotonic() >= deadline:
            return


def _slices(rows, wait, rate):
    """Spread rows that a slowed-down destination cannot take now over the time its pace needs."""
    if not rows:
        return []
    if rate <= 0:
        return [([r.id for r in rows], max(wait, 0.5))]
    size = max(1, math.ceil(rate))
    out = []
    for i in range(0, len(rows), size):
        out.append(([r.id for r in rows[i:i + size]], min(wait + i / rate, 3600)))
    return out


def _hand_back(rows, wait, route, limit, rate):
    """Rows that may not go now back to the queue, with their tokens; returns what to enqueue again."""
    if not rows:
        return []
    release(rows, wait)
    throttle.give_back(limit, len(rows))
    if route.relay_limit is not None:
        throttle.give_back(route.relay_limit, len(rows))
    return _slices(rows, wait, rate)


def _deliver(rows, route, limit, now=None, batch=None):
    """Send ``rows`` (their tokens taken) over one route, at the pace its destination asked for."""
    pace = adaptive.Pace(route, limit)
    granted, wait = pace.admit(len(rows))
    rows, later = rows[:granted], rows[granted:]
    requeue = _hand_back(later, wait, route, limit, pace.rate)
    if not rows:
        return requeue
    if not pace.hold():
        # The destination asked for fewer connections and they are all in use.
        pace.give_back(len(rows))
        return requeue + _hand_back(rows, 1.0, route, limit, pace.rate)
    try:
        route.max_messages = pace.messages_per_connection(route.max_messages)
        return requeue + _deliver_paced(rows, route, limit, pace, now, batch)
    finally:
        pace.let_go()


def _deliver_paced(rows, route, limit, pace, now, batch):
    batch = batch or Batch(rows)
    relay_id = route.relay.pk if route.relay else None
    builder = _Builder(rows, batch)
    pending = []  # built, not sent (the connection broke first, or a stop came between)
    reconnects = 0

    def unsent():
        waiting = [r for r, _ in pending] + builder.rest()
        pending.clear()
        batch.on_wire.difference_update(r.id for r in waiting)
        return waiting

    def hand_back_halted():
        """Rows of paused or cancelled campaigns go back; the cancelled ones are settled with their campaign."""
        stopped = batch.stops.stopped
        if stopped and pending:
            builder.halted.extend(r for r, _ in pending if r.campaign_id in stopped)
            pending[:] = [item for item in pending if item[0].campaign_id not in stopped]
        halted, builder.halted = builder.halted, []
        batch.on_wire.difference_update(r.id for r in halted)
        release(halted)

    while pending or builder.more():
        try:
            conn = _connect(route)
        except SMTPFailure as exc:
            t = now or timezone.now()
            reason = f"relay {route.relay.name}: {exc}" if route.relay else str(exc)
            waiting = unsent()
            if exc.code:
                # A refusal before any message (greeting, EHLO, AUTH): the session's.
                pace.throttled(exc.code, str(exc), session=True)
            if routing.fail_over(route, reason):
                # Another relay of the group is up: nothing was sent here, so
                # these go straight back to be routed there (and this relay
                # gets its share again when its backoff ends).
                pace.give_back(len(waiting))
                finish(builder.take_done(), relay_id, t, batch)
                hand_back_halted()
                return _hand_back(waiting, 0.0, route, limit, 0)
            if (exc.fatal and route.relay is not None) or _relay_failed(route, exc):
                # A relay's TLS or AUTH is misconfigured, or it stays down: pause
                # instead of burning through the list; nothing was attempted. One
                # recipient domain's MX (a broken STARTTLS, an MTA-STS policy it
                # fails) only defers that domain, or anyone could halt a campaign.
                pause_campaigns({r.campaign_id for r in waiting if r.campaign_id}, reason)
                release([r for r in waiting if r.campaign_id])
                finish(defer_all([r for r in waiting if not r.campaign_id], reason, t) + builder.take_done(),
                       relay_id, t, batch)
            else:
                finish(defer_all(waiting, reason, t) + builder.take_done(), relay_id, t, batch)
            hand_back_halted()
            return []
        if conn is None:
            # No connection slot: the tokens of these sends (the domain's, the
            # relay's, the slow-down's) go back, as none was attempted.
            waiting = unsent()
            pace.give_back(len(waiting))
            finish(builder.take_done(), relay_id, now or timezone.now(), batch)
            hand_back_halted()
            return _hand_back(waiting, 1.0, route, limit, 0)
        if route.relay is not None and conn.sent == 0:
            key = throttle.PREFIX + f"relayfail:{route.relay.pk}"
            throttle.client().delete(key, key + ":since")
            routing.recovered(route)
        replies, slowed, t, moved = _send_chunks(conn, route, pending, builder, batch, relay_id, now, pace)
        hand_back_halted()
        pool.put(conn, route.max_messages)
        if moved:
            # The relay refuses every session: what it refused, and the rest, go to the group's other relays.
            waiting = unsent()
            pace.give_back(len(waiting))
            return _hand_back(moved + waiting, 0.0, route, limit, 0)
        if slowed:
            # The destination (or the relay) asked us to slow down: the rest
            # waits its turn at the slower pace (its slow-down tokens are not
            # given back: the key pauses after the reply).
            waiting = unsent()
            pace.admit(0)  # the pace as now slowed
            wait = adaptive.PAUSE + (1 / pace.rate if pace.rate else 0)
            return _hand_back(waiting, wait, route, limit, pace.rate)
        last = replies[-1][1][0] if replies else 0
        if replies and last is None:
            reconnects += 1
            if reconnects > 2:
                finish(defer_all(unsent(), replies[-1][1][1], t), relay_id, t, batch)
                return []
    finish(builder.take_done(), relay_id, now or timezone.now(), batch)
    hand_back_halted()
    return []


def _send_chunks(conn, route, pending, builder, batch, relay_id, now, pace):
    """Send over one connection checkout, writing outcomes back after every chunk.

    Returns the last chunk's replies, whether the destination asked to slow
    down, the time of the last write back, and the rows a relay refused at
    session level when they move to another relay of its group. Stops early
    when the connection breaks, a reply asks to slow down, a relay refuses
    every session, or every campaign left was stopped.
    """
    budget = max(1, min(CONNECTION_CHUNK, route.max_messages - conn.sent))
    replies, slowed, t = [], False, now or timezone.now()
    while budget > 0 and (pending or builder.more()):
        items = _chunk(_pull(pending, builder), min(batch.chunk, budget), WRITE_SECONDS)
        replies, left = conn.send_many(items, message=lambda item: item[1], stop=batch.stops)
        pending[:0] = left
        budget -= len(replies)
        t = now or timezone.now()
        outcomes = [outcome_result(row, code, text, built.message_id, t) for (row, built), (code, text) in replies]
        results = [result for result, _ in outcomes]
        refused = _session_refused(route, replies, conn.stages)
        # Record what the server answered before touching Redis again (pool slots,
        # slow-down): if Redis is restarting, an unrecorded outcome would be sent twice.
        finish([r for n, r in enumerate(results) if n not in refused] + builder.take_done(), relay_id, t, batch)
        if builder.interrupted is not None:
            raise builder.interrupted
        if refused:
            code, text = replies[max(refused)][1]
            if routing.fail_over(route, f"{code} {text} (refused {len(refused)} sessions in a row)"):
                moved = [results[n].row for n in sorted(refused)]
                batch.on_wire.difference_update(r.id for r in moved)
                return replies, False, t, moved
            finish([results[n] for n in sorted(refused)], relay_id, t, batch)
        pace.count(len(replies))
        if route.relay is not None:
            routing.noted(route, [reply for _, reply in replies])
        slowed = _slow_down(pace, conn, replies, outcomes)
        if not replies or slowed or conn.broken:
            break
        if pending and all(r.campaign_id in batch.stops.stopped for r, _ in pending):
            break
    return replies, slowed, t, []


def _session_refused(route, replies, stages) -> set:
    """The replies of a relay that refused, at session level (RSET, MAIL), at least SESSION_REFUSALS messages
    of a chunk with a 4xx and took none: nothing was transferred, so they may go to another relay at once."""
    if route.relay is None:
        return set()
    refused = {n for n, ((_, (code, _)), stage) in enumerate(zip(replies, stages, strict=False))
               if stage == "session" and code is not None and 400 <= code < 500}
    if len(refused) < SESSION_REFUSALS or any(code is not None and code < 300 for _, (code, _) in replies):
        return set()
    return refused


def _slow_down(pace, conn, replies, outcomes) -> bool:
    """Slow down for the throttle replies of one chunk: once for the session's, once for the recipients'."""
    seen = set()
    for (_, (code, text)), (_, outcome), stage in zip(replies, outcomes, conn.stages, strict=False):
        if outcome.throttle and stage not in seen:
            seen.add(stage)
            pace.throttled(code, text, session=stage == "session", conn=conn)
    return bool(seen)


# --- periodic work ---------------------------------------------------------------

def orphan_grace():
    return getattr(settings, "HERALD_ORPHAN_GRACE", 300)


# The sweeper rescues forgotten rows in chunks of this many, never holding every id.
SWEEP_CHUNK = 5000
# When a campaign's rows were last claimed (or submitted messages', under
# "submitted"): a campaign that moves has live tasks on the broker, however
# old its queued rows are; only one that stopped moving lost them.
PROGRESS_KEY = throttle.PREFIX + "progress:"
PROGRESS_TTL = 7 * 86400


def mark_progress(rows):
    """Note that these rows' campaigns moved now."""
    keys = {PROGRESS_KEY + str(r.campaign_id or "submitted") for r in rows}
    try:
        pipe = throttle.client().pipeline(transaction=False)
        for key in keys:
            pipe.set(key, time.time(), ex=PROGRESS_TTL)
        pipe.execute()
    except Exception as exc:  # without a mark the sweeper falls back on the rows' age
        log.debug("progress not recorded: %s", exc)


def _stalled(campaign_ids, now) -> list:
    """The campaigns (None: submitted messages) that made no progress for a grace time, or whose mark is lost."""
    campaign_ids = list(campaign_ids)
    if not campaign_ids:
        return []
    keys = [PROGRESS_KEY + str(c or "submitted") for c in campaign_ids]
    marks = throttle.client().mget(keys)
    at = now.timestamp()
    return [c for c, mark in zip(campaign_ids, marks, strict=True)
            if mark is None or at - float(mark) >= orphan_grace()]


def sweep(now=None):
    """Return dead workers' claims, expired leases and forgotten queued rows to the queue; settle campaigns.

    Returns the ids that were enqueued again (sweep_chunks yields them a chunk at a time).
    """
    return [send_id for ids in sweep_chunks(now) for send_id in ids]


def sweep_chunks(now=None, size=SWEEP_CHUNK):
    """What sweep does, yielding the ids to enqueue again in chunks of at most ``size``."""
    now = now or timezone.now()
    yield release_dead(now)
    at = _db_time(now) if _sqlite() else now
    while True:
        with connection.cursor() as cur:
            cur.execute(
                f"""UPDATE {SEND} SET status = 'queued', lease_expires_at = NULL, lease_token = NULL, lease_owner = '',
                           next_attempt_at = %(now)s, updated_at = %(now)s
                    WHERE id IN (SELECT id FROM {SEND} WHERE status = 'sending' AND lease_expires_at < %(now)s
                                 LIMIT %(size)s)
                    RETURNING id""",  # noqa: S608
                {"now": at, "size": size},
            )
            expired = [r[0] for r in cur.fetchall()]
        if expired:
            yield expired
        if len(expired) < size:
            break
    running = list(Campaign.objects.filter(status=Campaign.Status.SENDING).values_list("id", flat=True))
    for campaign_id in _stalled([None, *running], now):
        yield from _orphans(campaign_id, now, size)
    settle_campaigns(Campaign.objects.filter(status__in=["sending", "cancelled"]).values_list("id", flat=True), now)


def _orphans(campaign_id, now, size):
    """Queued rows of a stalled campaign whose task was lost (a broker restart, a worker killed while
    holding countdown tasks), a grace time after they were due; parked rows wait for their slot."""
    times = {"now": now, "old": now - timedelta(seconds=orphan_grace()), "size": size, "campaign": campaign_id}
    if _sqlite():
        times.update(now=_db_time(now), old=_db_time(times["old"]))
    which = "campaign_id IS NULL" if campaign_id is None else "campaign_id = %(campaign)s"
    while True:
        with connection.cursor() as cur:
            cur.execute(
                f"""UPDATE {SEND} SET next_attempt_at = %(now)s
                    WHERE id IN (SELECT id FROM {SEND} WHERE {which} AND status = 'queued' AND NOT parked
                                   AND next_attempt_at < %(old)s LIMIT %(size)s)
                    RETURNING id""",  # noqa: S608
                times,
            )
            ids = [r[0] for r in cur.fetchall()]
        if ids:
            yield ids
        if len(ids) < size:
            return


def release_dead(now=None):
    """Claims of worker processes whose heartbeat expired go back to the queue; returns their ids.

    Cheap enough to run every few seconds: it reads only rows in "sending".
    Each claim is released by its own token, so a row that was meanwhile
    written back or claimed again is not touched. The claim count is kept:
    the next claim sends the first of these rows alone (see _screen).
    """
    now = now or timezone.now()
    claims = list(Send.objects.filter(status=Send.Status.SENDING).exclude(lease_owner="")
                  .values_list("lease_owner", "lease_token").distinct())
    gone = heartbeat_dead({owner for owner, _ in claims})
    tokens = [token for owner, token in claims if owner in gone]
    if not tokens:
        return []
    log.warning("handing back the claims of %d dead workers: %s", len(gone), ", ".join(sorted(gone)))
    at = _db_time(now) if _sqlite() else now
    with connection.cursor() as cur:
        cur.execute(
            f"""UPDATE {SEND} SET status = 'queued', lease_expires_at = NULL, lease_token = NULL, lease_owner = '',
                       next_attempt_at = %s, updated_at = %s
                WHERE status = 'sending' AND lease_token IN ({_marks(tokens)}) RETURNING id""",  # noqa: S608
            [at, at, *tokens],
        )
        return [r[0] for r in cur.fetchall()]


def due_retries(now=None):
    """Deferred sends whose time has come go back to the queue; returns their ids."""
    now = now or timezone.now()
    with connection.cursor() as cur:
        cur.execute(
            f"""UPDATE {SEND} SET status = 'queued', next_attempt_at = %(now)s, updated_at = %(now)s
                WHERE status = 'deferred' AND next_attempt_at <= %(now)s RETURNING id""",  # noqa: S608
            {"now": _db_time(now) if _sqlite() else now},
        )
        return [r[0] for r in cur.fetchall()]


def due_slots(now=None, size=SWEEP_CHUNK, stopped=True):
    """Parked rows whose slot comes within SLOT_HORIZON go to the broker: returns [(ids, countdown, True)],
    one task per slot batch. Parked rows of campaigns that stopped give their slots back first."""
    now = now or timezone.now()
    if stopped:
        _unpark_stopped()
    at = _db_time(now) if _sqlite() else now
    horizon = now + timedelta(seconds=SLOT_HORIZON)
    out = []
    while True:
        with connection.cursor() as cur:
            cur.execute(
                f"""UPDATE {SEND} SET parked = %(false)s, updated_at = %(now)s
                    WHERE id IN (SELECT id FROM {SEND} WHERE parked AND next_attempt_at <= %(horizon)s
                                 ORDER BY next_attempt_at LIMIT %(size)s)
                    RETURNING id, next_attempt_at, status, campaign_id""",  # noqa: S608
                {"now": at, "horizon": _db_time(horizon) if _sqlite() else horizon, "size": size, "false": False},
            )
            rows = cur.fetchall()
        running = set(Campaign.objects.filter(id__in={r[3] for r in rows if r[3]}, status=Campaign.Status.SENDING)
                      .values_list("id", flat=True))
        slots = {}
        for send_id, slot, status, campaign_id in rows:
            if status == "queued" and (campaign_id is None or campaign_id in running):
                slots.setdefault(slot, []).append(send_id)
        for slot, ids in sorted(slots.items(), key=lambda item: str(item[0])):
            if isinstance(slot, str):  # SQLite returns the stored text
                slot = datetime.fromisoformat(slot)
            if timezone.is_naive(slot):
                slot = timezone.make_aware(slot, UTC)
            out.append((ids, max(0.0, (slot - now).total_seconds()), True))
        if len(rows) < size:
            return out


def _unpark_stopped():
    """Campaigns paused or cancelled since their sends reserved slots give the slots back to their domains:
    parked rows are unparked, and rows whose slot batch is on the broker (it will find nothing to claim)
    are marked due now, so each slot is given back once.

    A paused campaign's rows stay queued; resuming enqueues them again and they reserve new slots.
    """
    now = timezone.now()
    stopped = list(Campaign.objects.exclude(status=Campaign.Status.SENDING)
                   .filter(models.Exists(Send.objects.filter(campaign_id=models.OuterRef("pk"), parked=True)))
                   .values_list("id", flat=True))
    for campaign_id in stopped:
        by_domain = {}
        with connection.cursor() as cur:
            cur.execute(
                f"""UPDATE {SEND} SET next_attempt_at = %s
                    WHERE campaign_id = %s AND status IN ('queued', 'cancelled') AND NOT parked
                      AND next_attempt_at > %s
                    RETURNING domain""",  # noqa: S608
                [_db_time(now) if _sqlite() else now, campaign_id, _db_time(now) if _sqlite() else now],
            )
            for (domain,) in cur.fetchall():
                by_domain[domain] = by_domain.get(domain, 0) + 1
        while True:
            ids = list(Send.objects.filter(campaign_id=campaign_id, parked=True).values_list("id", flat=True)[:SWEEP_CHUNK])
            if not ids:
                break
            for domain, n in (Send.objects.filter(id__in=ids, parked=True).values_list("domain")
                              .annotate(n=models.Count("id")).values_list("domain", "n")):
                by_domain[domain] = by_domain.get(domain, 0) + n
            Send.objects.filter(id__in=ids).update(parked=False)
        given = {}
        for domain, n in by_domain.items():
            limit = routing.limit_for(domain)
            given[limit] = given.get(limit, 0) + n
        for limit, n in given.items():
            throttle.unreserve(limit, n)
