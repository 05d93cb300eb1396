"""The send ledger: every statement that moves a Send through its states, one function per operation.

A claim takes queued rows for one worker under a fresh lease token (fencing);
every later statement about those rows (release, lease extension, write-back,
parking for a reserved slot) names the token and changes only rows that claim
still holds, so a worker whose lease ran out can never overwrite the outcome a
newer owner recorded. Settling finishes or cancels campaigns; the sweeper's
statements hand back what dead workers, expired leases and lost tasks left.

PostgreSQL and SQLite differ only inside each function (array parameters and
``FOR UPDATE SKIP LOCKED`` against SQLite's single writer); callers never see
which database runs. The batch loop that uses these lives in delivery.engine.
"""

import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from campaigns.models import Campaign, Contact, Suppression, email_key
from delivery import routing, throttle
from delivery.heartbeat import dead as heartbeat_dead
from delivery.heartbeat import heartbeat
from delivery.models import Send

log = logging.getLogger(__name__)

SEND = Send._meta.db_table
CAMPAIGN = Campaign._meta.db_table
CONTACT = Contact._meta.db_table
SUPPRESSION = Suppression._meta.db_table
PENDING = ("queued", "sending", "deferred")
STOP_KEY = throttle.PREFIX + "stop:"
# Reserved slots up to this far ahead go to the broker as countdown tasks (one
# per slot batch); later ones wait in the ledger, parked, and are handed to the
# broker when they come this close: by every batch that ends, and by the
# due-retries tick. So the broker holds at most this many seconds of a
# throttled domain's backlog, however long the backlog is. Few countdown tasks
# matter: a worker holds them in memory and fetches as many more tasks.
SLOT_HORIZON = 3.0


def lease_seconds():
    return getattr(settings, "HERALD_SEND_LEASE", 1800)


def max_claims():
    return getattr(settings, "HERALD_SEND_MAX_CLAIMS", 5)

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
    variant: int | None = None  # the A/B variant it gets, if the campaign has variants

    @property
    def pk(self):
        return self.id

    def as_send(self, **extra):
        return Send(id=self.id, campaign_id=self.campaign_id, contact_id=self.contact_id, email=self.email,
                    domain=self.domain, attempts=self.attempts, first_attempt_at=self.first_attempt_at,
                    outbound_id=self.outbound_id, variant=self.variant, **extra)


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


def claim_companions(rows, limit, now=None) -> list[Row]:
    """Claim up to ``limit`` more queued submitted sends to the domains of ``rows``, due now, for the same batch.

    Mail submitted over SMTP or the API arrives a message at a time, one task
    each; a worker that takes one task sends the others to the same domains
    that are waiting too, over the same connection, and their own tasks find
    them taken and end at once. Rows waiting for a slot, a retry time or a
    hold are not taken: they keep their turn.
    """
    if limit <= 0 or _sqlite():
        return []
    now = now or timezone.now()
    with connection.cursor() as cur:
        cur.execute(
            f"""SELECT id FROM {SEND}
                WHERE campaign_id IS NULL AND status = 'queued' AND hold = 0 AND NOT parked
                  AND domain = ANY(%s) AND (next_attempt_at IS NULL OR next_attempt_at <= %s) AND id <> ALL(%s)
                ORDER BY id LIMIT %s""",  # noqa: S608
            [sorted({r.domain for r in rows}), now, [r.id for r in rows], limit],
        )
        ids = [r[0] for r in cur.fetchall()]
    return claim(ids, now) if ids else []


def _row(r, token, suppressed, variant):
    return Row(*r[:9], token=token, contact_status=r[9], first_name=r[10] or "", last_name=r[11] or "",
               attributes=_attributes(r[12]), contact_email=r[13] or "", suppressed=suppressed, variant=variant)


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
                WHERE s.id = ANY(%(ids)s) AND s.status = 'queued' AND s.hold = 0
                  AND (s.campaign_id IS NULL OR EXISTS (
                       SELECT 1 FROM {CAMPAIGN} k WHERE k.id = s.campaign_id AND k.status = 'sending'))
                ORDER BY s.id
                FOR UPDATE OF s SKIP LOCKED),
            u AS (
                UPDATE {SEND} s SET status = 'sending', lease_expires_at = %(lease)s,
                       lease_token = %(token)s, lease_owner = %(owner)s, claims = s.claims + 1, updated_at = %(now)s
                FROM c WHERE s.id = c.id
                RETURNING s.id, s.campaign_id, s.contact_id, s.email, s.domain, s.attempts, s.first_attempt_at, s.outbound_id,
                          s.claims, s.variant)
            SELECT u.id, u.campaign_id, u.contact_id, u.email, u.domain, u.attempts, u.first_attempt_at, u.outbound_id,
                   u.claims, ct.status, ct.first_name, ct.last_name, ct.attributes, ct.email,
                   EXISTS (SELECT 1 FROM {SUPPRESSION} p WHERE p.email_key = lower(trim(u.email))), u.variant
            FROM u LEFT JOIN {CONTACT} ct ON ct.id = u.contact_id
            ORDER BY u.id
            """,  # noqa: S608
            {"ids": list(ids), "now": now, "lease": now + timedelta(seconds=lease_seconds()),
             "token": token, "owner": owner},
        )
        rows = cur.fetchall()
    return [_row(r, token, r[14], r[15]) for r in rows]


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
                WHERE s.id IN ({_marks(chunk)}) AND s.status = 'queued' AND s.hold = 0
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
                "variant",
            )
        )
    keys = {email_key(r[3]) for r in rows}
    suppressed = set()
    for chunk in _chunks(keys):
        suppressed.update(Suppression.objects.filter(email_key__in=chunk).values_list("email_key", flat=True))
    return [_row(r, token, email_key(r[3]) in suppressed, r[14]) for r in rows]


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


def queue_at(token, items, now):
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
                    WHERE id IN (SELECT id FROM {SEND} WHERE parked AND hold = 0 AND next_attempt_at <= %(horizon)s
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
                   .filter(models.Exists(Send.objects.filter(campaign_id=models.OuterRef("pk"), parked=True, hold=0)))
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
            ids = list(Send.objects.filter(campaign_id=campaign_id, parked=True, hold=0)
                       .values_list("id", flat=True)[:SWEEP_CHUNK])
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


# --- holds: local-time waves, quiet hours and the A/B test's winner ---------------
#
# A held row is queued and parked with ``hold`` saying why (Send.HOLD_*); the
# claim never takes it, and the slot hand-over and the sweeper leave it alone.
# Rows held for their local time go when next_attempt_at comes (due_waves, on
# beat's due-retries tick); rows held for the winner get the winner's variant
# all in one statement (choose_winner) and become local-time holds, released
# like the others. So a recipient is sent exactly one variant, whatever
# crashes, pauses and resumes come between.

def place(groups, now=None):
    """Give freshly snapshotted (still queued) rows their variant and hold.

    ``groups``: {(variant, hold, release): [send ids]}; a release of None means
    at once. Rows that wait (a hold, or a release) are parked until then. One
    UPDATE per group (and chunk of ids).
    """
    now = now or timezone.now()
    for (variant, hold, release), ids in groups.items():
        values = {"variant": variant, "updated_at": now}
        if hold or release is not None:
            values.update(hold=hold or Send.HOLD_LOCAL_TIME, parked=True, next_attempt_at=release or now)
        for chunk in _chunks(ids, SQLITE_CHUNK if _sqlite() else SWEEP_CHUNK):
            Send.objects.filter(id__in=chunk, status=Send.Status.QUEUED, hold=0).update(**values)


def move_held(campaign_id, moves, now=None):
    """Rows still held for the winner get new release times: {release: [send ids]} (quiet hours at the choice)."""
    now = now or timezone.now()
    for release, ids in moves.items():
        for chunk in _chunks(ids, SQLITE_CHUNK if _sqlite() else SWEEP_CHUNK):
            Send.objects.filter(id__in=chunk, campaign_id=campaign_id, hold=Send.HOLD_WINNER).update(
                next_attempt_at=release, updated_at=now)


def due_waves(now=None, campaign_ids=None, size=SWEEP_CHUNK) -> list[int]:
    """Rows held for a local time that has come, of campaigns that are sending, go to the queue: returns their ids."""
    now = now or timezone.now()
    at = _db_time(now) if _sqlite() else now
    which, chosen = "", []
    if campaign_ids is not None:
        chosen = [int(c) for c in campaign_ids] or [0]
        which = f" AND s.campaign_id IN ({_marks(chosen)})"
    released = []
    while True:
        with connection.cursor() as cur:
            cur.execute(
                f"""UPDATE {SEND} SET parked = %s, hold = 0, next_attempt_at = %s, updated_at = %s
                    WHERE id IN (SELECT s.id FROM {SEND} s JOIN {CAMPAIGN} k ON k.id = s.campaign_id
                                 WHERE s.parked AND s.hold = {Send.HOLD_LOCAL_TIME} AND s.status = 'queued'
                                   AND s.next_attempt_at <= %s AND k.status = 'sending'{which}
                                 LIMIT {int(size)})
                    RETURNING id""",  # noqa: S608
                [False, at, at, at, *chosen],
            )
            ids = [r[0] for r in cur.fetchall()]
        released.extend(ids)
        if len(ids) < size:
            return released


def choose_winner(campaign_id, variant, reason, now=None) -> int | None:
    """Make ``variant`` the winner, unless one was chosen already: returns the campaign's winner.

    The rows held for the winner get its variant in the same transaction that
    records it on the campaign, in one statement, and become local-time holds
    (each keeps its release time): due_waves sends them. Safe to run twice
    and from two processes: the conditional UPDATE on the campaign lets one win.
    """
    now = now or timezone.now()
    with transaction.atomic():
        chosen = Campaign.objects.filter(pk=campaign_id, winner__isnull=True).update(
            winner=variant, winner_chosen_at=now, winner_reason=reason[:2000], updated_at=now)
        if not chosen:
            return Campaign.objects.filter(pk=campaign_id).values_list("winner", flat=True).first()
        Send.objects.filter(campaign_id=campaign_id, hold=Send.HOLD_WINNER).update(
            variant=variant, hold=Send.HOLD_LOCAL_TIME, after_test=True, updated_at=now)
    return variant


def held_counts(campaign_id) -> dict:
    """Rows still held, by release time: {release: {"local_time": n, "winner": n}}."""
    out = {}
    rows = (Send.objects.filter(campaign_id=campaign_id, parked=True, hold__gt=0, status=Send.Status.QUEUED)
            .values_list("next_attempt_at", "hold").annotate(n=models.Count("id")).order_by())
    for release, hold, n in rows:
        entry = out.setdefault(release, {"local_time": 0, "winner": 0})
        entry["winner" if hold == Send.HOLD_WINNER else "local_time"] += n
    return out
