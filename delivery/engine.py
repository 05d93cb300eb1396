"""The worker side of the send path: claim a batch, build, take tokens, send, classify, write back.

Every statement on the ledger (claim, release, write back, settle, sweep) is in
delivery.ledger; this module is the batch loop around them.

``send_batch(ids)`` is what the Celery task runs; it is testable without
Celery. It returns the sends it handed back (no tokens, no connection slot)
with the countdown after which they should be tried, and never sleeps.
"""

import logging
import math
import time
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from campaigns.models import Campaign, Contact
from campaigns.rendering import ContactData, ContentError
from campaigns.sandbox import BudgetExceeded, render_budget
from campaigns.suppression import suppress
from delivery import adaptive, ledger, localtime, placement, routing, throttle, warmup
from delivery.classify import BOUNCED, DEFERRED, FAILED, SENT, classify_reply, next_attempt
from delivery.heartbeat import heartbeat
from delivery.ledger import Result
from delivery.models import Send
from delivery.mx import NoRoute
from delivery.signals import send_outcome
from delivery.smtp import SMTPFailure, Timeouts, pool

log = logging.getLogger(__name__)

# Outcomes are written back after this many messages or WRITE_SECONDS,
# whichever comes first, so a killed worker can have sent at most that many
# messages whose rows still say "sending" (the duplicate bound).
WRITE_CHUNK = 10
# A batch of submitted mail takes up to this many sends to its domains that wait too (ledger.claim_companions).
COMPANIONS = 50
WRITE_SECONDS = 1.0
# Messages sent over one connection before it goes back to the pool (which
# refreshes its slot in Redis).
CONNECTION_CHUNK = 100
# Pause and cancel are seen between messages: a Redis flag, read at most this often.
STOP_CHECK_SECONDS = 0.1
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
    if ledger.lease_seconds() < worst:
        return (f"HERALD_SEND_LEASE is {ledger.lease_seconds()} s, shorter than the worst-case send chunk "
                f"({worst:g} s with the SMTP timeouts in effect): raise it, or cap the timeouts with HERALD_SMTP_TIMEOUT")
    return None


class Stops:
    """Which of a batch's campaigns were paused or cancelled since the claim; cheap to ask often."""

    def __init__(self, rows):
        self.ids = sorted({r.campaign_id for r in rows if r.campaign_id is not None})
        self.keys = [ledger.STOP_KEY + str(c) for c in self.ids]
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


def compiled_for(campaign_id, updated_at, variant=None):
    """The campaign's message (its A/B ``variant``'s) as frozen when it started, compiled once per process
    (looked up again when the row changes).

    Never the current draft: an edit made after the start (or of its layout)
    changes nothing that the remaining recipients get.
    """
    from delivery.message import compile_campaign

    hit = _compiled.get((campaign_id, variant))
    if hit and hit[0] == updated_at:
        return hit[1]
    campaign = Campaign.objects.select_related("frozen_content").get(pk=campaign_id)
    if len(_compiled) > 64:
        _compiled.clear()
    compiled = compile_campaign(campaign.as_sent(variant))
    _compiled[campaign_id, variant] = (campaign.updated_at, compiled)
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
    deadline = time.monotonic() + min(WRITE_RETRY_SECONDS, ledger.lease_seconds() / 2)
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
    written = _recorded(ledger.write_back, results, relay_id, now) if results else set()
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
        # The rows' campaigns, read once per batch: their version (for the compiled template) and quiet hours.
        ids = {r.campaign_id for r in rows if r.campaign_id}
        self.campaigns = ({c.id: c for c in Campaign.objects.filter(id__in=ids).only("id", "updated_at", "quiet_start",
                                                                                       "quiet_end")}
                          if ids else {})


def send_batch(send_ids, now=None, reserved=False):
    """Send what can be sent now; return [(ids, countdown)] or [(ids, countdown, reserved)] to enqueue again.

    ``reserved``: the rows come back for send slots reserved for them (see
    delivery.throttle), so they take the tokens promised to them.
    """
    routing.refresh()
    rows = ledger.claim(send_ids, now)
    if not rows:
        return _slots_coming(now)
    if not reserved and len(rows) < COMPANIONS and all(r.campaign_id is None for r in rows):
        rows += ledger.claim_companions(rows, COMPANIONS - len(rows), now)
    ledger.mark_progress(rows)
    batch = Batch(rows)
    # The lease is renewed on a timer, not between messages: one message may
    # spend many minutes in SMTP timeouts.
    hold = heartbeat.hold(rows, ledger.extend_lease, ledger.lease_seconds())
    requeue = []
    try:
        first, rest = _screen(rows, now, batch)
        routing.prepare(rows)
        rest = _within_warmup(rest, now, requeue)  # (a row sent alone was admitted at its last claim)
        rest = _outside_quiet_hours(rest, now, requeue, batch.campaigns)
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
        ledger.settle_campaigns({r.campaign_id for r in rows})
    except Exception:
        # Redis or PostgreSQL went away mid-batch: hand back what was never
        # tried if we can; otherwise the lease expires and the sweeper does it.
        # Rows whose outcome could not be recorded stay claimed until their
        # lease expires: they may have been delivered.
        untried = [r for r in rows if r.id not in batch.on_wire]
        try:
            ledger.release(untried, 5.0)
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
    """Parked slot batches whose slot comes within ledger.SLOT_HORIZON, for the broker: every batch a worker ends
    hands them over (at most once per HANDOVER_SECONDS across all workers), so the broker only ever holds a
    few seconds of slot batches; beat's due-retries tick does it too, for when no batch runs."""
    try:
        if not throttle.client().set(HANDOVER_KEY, "1", nx=True, px=int(HANDOVER_SECONDS * 1000)):
            return []
        return ledger.due_slots(now, stopped=False)
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
    limit = ledger.max_claims()
    poisoned = [r for r in suspects if r.claims > limit]
    if poisoned:
        t = now or timezone.now()
        finish([Result(r, FAILED, reply=f"claimed {r.claims - 1} times without an outcome: the worker died each time",
                       attempted=False) for r in poisoned], None, t, batch)
    suspects = [r for r in suspects if r.claims <= limit]
    if not suspects:
        return [], [r for r in rows if r.claims <= limit]
    first, others = suspects[0], suspects[1:]
    ledger.forgive(others)
    for r in others:
        r.claims = 1
    return [first], [r for r in rows if r.claims <= limit and r is not first]


def _outside_quiet_hours(rows, now, requeue, campaigns):
    """The rows whose recipient is not inside their campaign's quiet hours now; the others (a retry come due
    at night, or the tail of a long send running into the hours) wait in the ledger for the hours' end."""
    windows = {}
    for campaign in (campaigns[i] for i in {r.campaign_id for r in rows} if i in campaigns):
        window = localtime.quiet_hours(campaign)
        if window is not None:
            windows[campaign.id] = (campaign, window)
    if not windows:
        return rows
    at = now or timezone.now()
    go, held = [], []
    for campaign_id, (campaign, window) in windows.items():
        mine = [r for r in rows if r.campaign_id == campaign_id]
        zones = placement.zones_of_sends(campaign, [r.id for r in mine])
        for r in mine:
            end = localtime.after_quiet(at, zones.get(r.id) or localtime.default_zone(), window)
            if end > at:
                held.append(((end - at).total_seconds(), r))
            else:
                go.append(r)
    if not held:
        return rows
    by_end = {}  # each zone's rows wait for that zone's end of the hours
    for wait, r in held:
        by_end.setdefault(wait, []).append(r)
    for wait, group in sorted(by_end.items()):
        requeue.extend(hold_for_slots(group, [wait] * len(group), len(group), now))
    kept = {r.id for r in go}
    return [r for r in rows if r.campaign_id not in windows or r.id in kept]


def _within_warmup(rows, now, requeue):
    """The rows today's warm-up allowance admits (delivery.warmup); the others wait in the ledger for the next day."""
    admitted, held, wait = warmup.admit(rows, now)
    requeue.extend(hold_for_slots(held, [wait] * len(held), max(len(held), 1), now))
    return admitted


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
    Batches due within ledger.SLOT_HORIZON are returned as [(ids, countdown, True)] for
    the broker; the rest are parked in the ledger. One statement per claim.
    """
    if not rows:
        return []
    now = now or timezone.now()
    publish, plan = [], []
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        wait = waits[i + len(chunk) - 1] + SLOT_MARGIN
        parked = wait > ledger.SLOT_HORIZON
        plan.extend((r, now + timedelta(seconds=wait), parked) for r in chunk)
        if not parked:
            publish.append(([r.id for r in chunk], wait, True))
    by_token = {}
    for r, at, parked in plan:
        by_token.setdefault(r.token, []).append((r.id, at, parked))
    for token, items in by_token.items():
        ledger.queue_at(token, items, now)
    return publish


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
        self.versions = {pk: campaign.updated_at for pk, campaign in batch.campaigns.items()}

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
            compiled = compiled_for(row.campaign_id, self.versions.get(row.campaign_id), row.variant)
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
        ledger.pause_campaigns({campaign_id}, f"rendering the message to {row.email} stopped: {problem}")
        ledger.release([row] + [r for r in self.rows[self.next:] if r.campaign_id == campaign_id])

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
    ledger.release(rows, wait)
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
        ledger.release(halted)

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
                ledger.pause_campaigns({r.campaign_id for r in waiting if r.campaign_id}, reason)
                ledger.release([r for r in waiting if r.campaign_id])
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
