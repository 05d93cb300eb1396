"""The worker side of the send path: claim a batch, build, take tokens, send, classify, write back.

``send_batch(ids)`` is what the Celery task runs; it is testable without
Celery. It returns the sends it handed back (no tokens, no connection slot)
with the countdown after which they should be tried, and never sleeps.
"""

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain, islice

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from campaigns.models import Campaign, Contact, Suppression, email_key
from campaigns.rendering import ContactData, ContentError
from campaigns.sandbox import BudgetExceeded, render_budget
from campaigns.suppression import suppress
from delivery import routing, throttle
from delivery.classify import BOUNCED, DEFERRED, FAILED, SENT, classify_reply, next_attempt
from delivery.models import Send
from delivery.mx import NoRoute
from delivery.signals import send_outcome
from delivery.smtp import SMTPFailure, pool

log = logging.getLogger(__name__)

SEND = Send._meta.db_table
CAMPAIGN = Campaign._meta.db_table
CONTACT = Contact._meta.db_table
SUPPRESSION = Suppression._meta.db_table
PENDING = ("queued", "sending", "deferred")
# Rows are written back after every chunk, so a killed worker can have sent at
# most this many messages whose rows still say "sending" (the duplicate bound).
WRITE_CHUNK = 100
# A relay that fails this many connection attempts in a row, for at least
# RELAY_DOWN_SECONDS, pauses its campaigns. A relay that is restarting or
# answers 421 for a minute comes back by itself: until then its sends are
# deferred with backoff (attempts are counted, nothing is burnt), and nobody
# has to resume anything.
RELAY_FAILURE_LIMIT = 5
RELAY_DOWN_SECONDS = 120
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
    return getattr(settings, "HERALD_SEND_LEASE", 600)


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
    """Take queued rows of running campaigns (or submitted messages) for this worker, atomically."""
    now = now or timezone.now()
    if _sqlite():
        return _claim_sqlite(ids, now)
    return _claim_postgres(ids, now)


def _claim_postgres(ids, now) -> list[Row]:
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
                       first_attempt_at = COALESCE(s.first_attempt_at, %(now)s), updated_at = %(now)s
                FROM c WHERE s.id = c.id
                RETURNING s.id, s.campaign_id, s.contact_id, s.email, s.domain, s.attempts, s.first_attempt_at, s.outbound_id)
            SELECT u.id, u.campaign_id, u.contact_id, u.email, u.domain, u.attempts, u.first_attempt_at, u.outbound_id,
                   ct.status, ct.first_name, ct.last_name, ct.attributes, ct.email,
                   EXISTS (SELECT 1 FROM {SUPPRESSION} p WHERE p.email_key = lower(trim(u.email)))
            FROM u LEFT JOIN {CONTACT} ct ON ct.id = u.contact_id
            ORDER BY u.id
            """,  # noqa: S608
            {"ids": list(ids), "now": now, "lease": now + timedelta(seconds=lease_seconds())},
        )
        rows = cur.fetchall()
    return [Row(*r[:8], r[8], r[9] or "", r[10] or "", r[11], r[12] or "", r[13]) for r in rows]


def _claim_sqlite(ids, now) -> list[Row]:
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
                       first_attempt_at = COALESCE(s.first_attempt_at, %s), updated_at = %s
                WHERE s.id IN ({_marks(chunk)}) AND s.status = 'queued'
                  AND (s.campaign_id IS NULL OR EXISTS (
                       SELECT 1 FROM {CAMPAIGN} k WHERE k.id = s.campaign_id AND k.status = 'sending'))
                RETURNING id
                """,  # noqa: S608
                [lease, at, at, *chunk],
            )
            claimed.extend(r[0] for r in cur.fetchall())
    rows = []
    for chunk in _chunks(sorted(claimed)):
        rows.extend(
            Send.objects.filter(id__in=chunk).order_by("id").values_list(
                "id", "campaign_id", "contact_id", "email", "domain", "attempts", "first_attempt_at", "outbound_id",
                "contact__status", "contact__first_name", "contact__last_name", "contact__attributes", "contact__email",
            )
        )
    keys = {email_key(r[3]) for r in rows}
    suppressed = set()
    for chunk in _chunks(keys):
        suppressed.update(Suppression.objects.filter(email_key__in=chunk).values_list("email_key", flat=True))
    return [Row(*r[:8], r[8], r[9] or "", r[10] or "", r[11], r[12] or "", email_key(r[3]) in suppressed) for r in rows]


def release(rows, countdown=0.0, now=None):
    """Hand claimed rows back to the queue untouched (no attempt is counted)."""
    if not rows:
        return
    now = now or timezone.now()
    Send.objects.filter(id__in=[r.id for r in rows], status="sending").update(
        status="queued", lease_expires_at=None, next_attempt_at=now + timedelta(seconds=countdown), updated_at=now
    )


def extend_lease(rows, now=None):
    if rows:
        now = now or timezone.now()
        Send.objects.filter(id__in=[r.id for r in rows], status="sending").update(
            lease_expires_at=now + timedelta(seconds=lease_seconds())
        )


def write_back(results, relay_id=None, now=None):
    """Record outcomes in one statement; only rows this worker still holds are changed."""
    if not results:
        return
    now = now or timezone.now()
    rows = [
        (r.row.id, r.status, r.code, r.reply[:2000], r.message_id[:255], r.next_attempt_at, 1 if r.attempted else 0)
        for r in results
    ]
    if _sqlite():
        _write_back_sqlite(rows, relay_id, now)
        return
    cols = list(zip(*rows, strict=True))
    with connection.cursor() as cur:
        cur.execute(
            f"""
            UPDATE {SEND} s SET status = v.status, smtp_code = v.code, smtp_reply = v.reply,
                   message_id = CASE WHEN v.mid <> '' THEN v.mid ELSE s.message_id END,
                   next_attempt_at = v.nat, attempts = s.attempts + v.inc, lease_expires_at = NULL,
                   sent_at = CASE WHEN v.status = 'sent' THEN %(now)s ELSE s.sent_at END,
                   relay_id = COALESCE(%(relay)s, s.relay_id), updated_at = %(now)s
            FROM unnest(%(ids)s::bigint[], %(st)s::text[], %(code)s::int[], %(reply)s::text[], %(mid)s::text[],
                        %(nat)s::timestamptz[], %(inc)s::int[]) AS v(id, status, code, reply, mid, nat, inc)
            WHERE s.id = v.id AND s.status = 'sending'
            """,  # noqa: S608
            {"ids": list(cols[0]), "st": list(cols[1]), "code": list(cols[2]), "reply": list(cols[3]),
             "mid": list(cols[4]), "nat": list(cols[5]), "inc": list(cols[6]), "now": now, "relay": relay_id},
        )


def _write_back_sqlite(rows, relay_id, now):
    """One UPDATE per row in one transaction: SQLite commits once and has no array parameters."""
    at = _db_time(now)
    params = [
        (status, code, reply, mid, mid, _db_time(nat) if nat else None, inc, status, at, relay_id, at, send_id)
        for send_id, status, code, reply, mid, nat, inc in rows
    ]
    with transaction.atomic(), connection.cursor() as cur:
        cur.executemany(
            f"""
            UPDATE {SEND} SET status = %s, smtp_code = %s, smtp_reply = %s,
                   message_id = CASE WHEN %s <> '' THEN %s ELSE message_id END,
                   next_attempt_at = %s, attempts = attempts + %s, lease_expires_at = NULL,
                   sent_at = CASE WHEN %s = 'sent' THEN %s ELSE sent_at END,
                   relay_id = COALESCE(%s, relay_id), updated_at = %s
            WHERE id = %s AND status = 'sending'
            """,  # noqa: S608
            params,
        )


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


# --- building ------------------------------------------------------------------

_compiled = {}  # campaign id -> (updated_at, compiled)


def compiled_for(campaign_id, updated_at):
    from delivery.message import compile_campaign

    hit = _compiled.get(campaign_id)
    if hit and hit[0] == updated_at:
        return hit[1]
    campaign = Campaign.objects.get(pk=campaign_id)
    if len(_compiled) > 64:
        _compiled.clear()
    compiled = compile_campaign(campaign)
    _compiled[campaign_id] = (campaign.updated_at, compiled)
    return compiled


def _build_submitted(row):
    try:
        from delivery.submission.build import build_for_send
    except ImportError:
        raise RuntimeError("submitted message cannot be built: delivery.submission is not installed") from None
    return build_for_send(row.as_send())


# --- classification --------------------------------------------------------------

def outcome_result(row, code, text, message_id, now):
    o = classify_reply(code, text)
    if o.status == SENT:
        return Result(row, SENT, code, o.reply, message_id), o
    if o.status == DEFERRED:
        at = next_attempt(row.first_attempt_at or now, row.attempts + 1, now)
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


def finish(results, relay_id, now):
    _recorded(write_back, results, relay_id, now)
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

def send_batch(send_ids, now=None):
    """Send what can be sent now; return [(ids, countdown)] to enqueue again."""
    rows = claim(send_ids, now)
    if not rows:
        return []
    requeue = []
    groups = {}
    try:
        for row in rows:
            groups.setdefault(routing.batch_key(row.domain), []).append(row)
        for group_rows in groups.values():
            requeue.extend(_send_group(group_rows, now))
        settle_campaigns({r.campaign_id for r in rows})
    except Exception:
        # Redis or PostgreSQL went away mid-batch: hand back what is still
        # ours if we can; otherwise the lease expires and the sweeper does it.
        try:
            release(rows, 5.0)
        except Exception:
            log.warning("could not release %d sends; their lease will expire", len(rows))
        raise
    return requeue


def _slices(rows, wait, rate):
    """Spread rows that got no token over the time the bucket needs to refill."""
    if not rows:
        return []
    if rate <= 0:
        return [([r.id for r in rows], max(wait, 0.5))]
    size = max(1, math.ceil(rate))
    out = []
    for i in range(0, len(rows), size):
        out.append(([r.id for r in rows[i:i + size]], min(wait + i / rate, 3600)))
    return out


def _send_group(rows, now=None):
    domain = rows[0].domain
    try:
        route = routing.route_for(domain)
    except NoRoute as exc:
        now = now or timezone.now()
        code, text = (550, f"5.1.2 {exc}") if exc.permanent else (None, str(exc))
        finish([outcome_result(r, code, text, "", now)[0] for r in rows], None, now)
        return []
    limit = routing.limit_for(domain)
    grant = throttle.take_tokens(limit, len(rows))
    granted, wait, rate = grant.granted, grant.wait, limit.rate * grant.factor
    if route.relay_limit is not None and granted:
        rgrant = throttle.take_tokens(route.relay_limit, granted)
        throttle.give_back(limit, granted - rgrant.granted)
        if rgrant.granted < granted:
            granted, wait, rate = rgrant.granted, max(wait, rgrant.wait), route.relay_limit.rate
    go, later = rows[:granted], rows[granted:]
    release(later, wait)
    requeue = _slices(later, wait, rate)
    if go:
        requeue.extend(_deliver(go, route, limit, now))
    return requeue


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
    """Builds messages as the connection asks for them; rows that cannot be sent collect in ``done``."""

    def __init__(self, rows):
        self.rows = rows
        self.next = 0
        self.done = []
        self.halted = set()  # campaigns paused for their template while building this batch
        self.versions = dict(
            Campaign.objects.filter(id__in={r.campaign_id for r in rows if r.campaign_id}).values_list("id", "updated_at")
        )

    def __iter__(self):
        return self

    def __next__(self):
        while self.next < len(self.rows):
            row = self.rows[self.next]
            self.next += 1
            built = self._build(row)
            if built is not None:
                return row, built
        raise StopIteration

    def _build(self, row):
        if row.campaign_id in self.halted:
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
        except SoftTimeLimitExceeded:
            if row.campaign_id is None or time.monotonic() - started < STUCK_RENDER_SECONDS:
                raise  # the time went elsewhere: the batch stops and its rows go back to the queue
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
        self.halted.add(campaign_id)
        pause_campaigns({campaign_id}, f"rendering the message to {row.email} stopped: {problem}")
        release([row] + [r for r in self.rows[self.next:] if r.campaign_id == campaign_id])

    def more(self):
        return self.next < len(self.rows)

    def rest(self):
        """Rows never built, taken out of the builder."""
        rows, self.next = self.rows[self.next:], len(self.rows)
        return rows

    def take_done(self):
        done, self.done = self.done, []
        return done


def _deliver(rows, route, limit, now=None):
    relay_id = route.relay.pk if route.relay else None
    builder = _Builder(rows)
    leftovers = []  # built, not sent (the connection broke first)
    reconnects = 0
    renewed = time.monotonic()

    def unsent():
        return [r for r, _ in leftovers] + builder.rest()

    while leftovers or builder.more():
        try:
            conn = _connect(route)
        except SMTPFailure as exc:
            t = now or timezone.now()
            reason = f"relay {route.relay.name}: {exc}" if route.relay else str(exc)
            waiting = unsent()
            if (exc.fatal and route.relay is not None) or _relay_failed(route, exc):
                # A relay's TLS or AUTH is misconfigured, or it stays down: pause
                # instead of burning through the list; nothing was attempted. One
                # recipient domain's MX (a broken STARTTLS, an MTA-STS policy it
                # fails) only defers that domain, or anyone could halt a campaign.
                pause_campaigns({r.campaign_id for r in waiting if r.campaign_id}, reason)
                release([r for r in waiting if r.campaign_id])
                finish(defer_all([r for r in waiting if not r.campaign_id], reason, t) + builder.take_done(), relay_id, t)
            else:
                finish(defer_all(waiting, reason, t) + builder.take_done(), relay_id, t)
            return []
        if conn is None:
            waiting = unsent()
            release(waiting, 1.0)
            throttle.give_back(limit, len(waiting))
            finish(builder.take_done(), relay_id, now or timezone.now())
            return [([r.id for r in waiting], 1.0)]
        if route.relay is not None and conn.sent == 0:
            key = throttle.PREFIX + f"relayfail:{route.relay.pk}"
            throttle.client().delete(key, key + ":since")
        size = max(1, min(WRITE_CHUNK, route.max_messages - conn.sent))
        replies, leftovers = conn.send_many(islice(chain(leftovers, builder), size), message=lambda item: item[1])
        t = now or timezone.now()
        outcomes = [outcome_result(row, code, text, built.message_id, t) for (row, built), (code, text) in replies]
        # Record what the server answered before touching Redis again (pool slots,
        # slow-down): if Redis is restarting, an unrecorded outcome would be sent twice.
        finish([result for result, _ in outcomes] + builder.take_done(), relay_id, t)
        if time.monotonic() - renewed > lease_seconds() / 3:
            # A slow destination: keep the claim on what is left, so the
            # sweeper does not hand it to another worker meanwhile.
            extend_lease([r for r, _ in leftovers] + builder.rows[builder.next:], t)
            renewed = time.monotonic()
        pool.put(conn, route.max_messages)
        slowed = any(outcome.throttle for _, outcome in outcomes)
        if slowed:
            throttle.slow_down(limit.key)
        last = replies[-1][1][0] if replies else 0
        if last == 421 or slowed:
            # The destination asked us to slow down: the rest waits its turn.
            waiting = unsent()
            release(waiting, 5.0)
            return [([r.id for r in waiting], 5.0)] if waiting else []
        if replies and last is None:
            reconnects += 1
            if reconnects > 2:
                finish(defer_all(unsent(), replies[-1][1][1], t), relay_id, t)
                return []
    finish(builder.take_done(), relay_id, now or timezone.now())
    return []


# --- periodic work ---------------------------------------------------------------

def orphan_grace():
    return getattr(settings, "HERALD_ORPHAN_GRACE", 300)


def sweep(now=None):
    """Return expired leases and forgotten queued rows to the queue; settle campaigns.

    Returns the ids that were enqueued again.
    """
    now = now or timezone.now()
    times = {"now": now, "old": now - timedelta(seconds=orphan_grace())}
    if _sqlite():
        times = {name: _db_time(value) for name, value in times.items()}
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"""UPDATE {SEND} SET status = 'queued', lease_expires_at = NULL, next_attempt_at = %(now)s, updated_at = %(now)s
                WHERE status = 'sending' AND lease_expires_at < %(now)s RETURNING id""",  # noqa: S608
            {"now": times["now"]},
        )
        expired = [r[0] for r in cur.fetchall()]
        # Queued rows whose task was lost (a broker restart, a worker killed
        # while holding countdown tasks) are enqueued again after a grace time.
        cur.execute(
            f"""UPDATE {SEND} AS s SET next_attempt_at = %(now)s
                WHERE s.status = 'queued' AND s.next_attempt_at < %(old)s
                  AND (s.campaign_id IS NULL OR EXISTS (
                       SELECT 1 FROM {CAMPAIGN} k WHERE k.id = s.campaign_id AND k.status = 'sending'))
                RETURNING id""",  # noqa: S608
            times,
        )
        orphans = [r[0] for r in cur.fetchall()]
    settle_campaigns(Campaign.objects.filter(status__in=["sending", "cancelled"]).values_list("id", flat=True), now)
    return expired + orphans


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
