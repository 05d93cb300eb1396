"""Delivering the outbox: claim due rows per endpoint, POST them signed, record what came back.

Claims are a conditional UPDATE that moves the rows' next attempt past a lease
and counts the attempt, committed before any request goes out: two workers
never post the same row at once, and one killed mid-request leaves rows that
come back when the lease ends (a receiver may see a message twice; its
webhook-id is the same each time, for its dedup).

A failure backs off exponentially (HERALD_WEBHOOK_RETRY_FIRST doubling, at most
HERALD_WEBHOOK_RETRY_MAX) until the row is HERALD_WEBHOOK_GIVE_UP_AFTER old (3
days), then gives up. After HERALD_WEBHOOK_BREAKER_FAILURES failures in a row
the endpoint's breaker opens: nothing is posted to it until its next probe,
which doubles its wait on each further failure. An endpoint failing without
a single success for the give-up time, or owing more than
HERALD_WEBHOOK_OUTBOX_LIMIT rows, is switched off with the reason shown in the admin.
"""

import http.client
import json
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from webhooks_out import notices, signing
from webhooks_out.addresses import UnsafeEndpoint, check_url
from webhooks_out.models import DeliveryAttempt, Endpoint, OutboxMessage

LEASE = timedelta(seconds=60)
TIMEOUT = 10.0
EXCERPT = 500


def _setting(name, default):
    return getattr(settings, name, default)


def backoff(attempts: int) -> timedelta:
    first = _setting("HERALD_WEBHOOK_RETRY_FIRST", 10)
    return timedelta(seconds=min(first * 2 ** max(attempts - 1, 0), _setting("HERALD_WEBHOOK_RETRY_MAX", 6 * 3600)))


def give_up_after() -> timedelta:
    return timedelta(seconds=_setting("HERALD_WEBHOOK_GIVE_UP_AFTER", 3 * 24 * 3600))


@dataclass
class Outcome:
    ok: bool
    status: int | None
    latency_ms: int
    text: str


class _Pinned(http.client.HTTPSConnection):
    """HTTPS to the address that was checked, with the host's name for SNI and the certificate."""

    def __init__(self, host, address, port, **kw):
        super().__init__(host, port, **kw)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Poster:
    """One kept-alive connection per endpoint URL, for a whole delivery run."""

    def __init__(self):
        self.connections = {}  # one per thread and endpoint: http.client connections are not shared
        self.checked = {}  # url -> (scheme, port, address): checked once per run, then that address is used

    def _check(self, url):
        found = self.checked.get(url)
        if found is None:
            found = self.checked[url] = check_url(url)
        return found

    def post(self, endpoint: Endpoint, body: bytes, msg_id: str, now) -> Outcome:
        started = time.monotonic()
        try:
            scheme, port, address = self._check(endpoint.url)
        except UnsafeEndpoint as exc:
            return Outcome(False, None, 0, f"refused: {exc}")
        parts = urlsplit(endpoint.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        stamp = int(now.timestamp())
        headers = {"Content-Type": "application/json", "User-Agent": "Herald-Webhooks/1",
                   **signing.headers(endpoint.secret, msg_id, stamp, body)}
        key = (threading.get_ident(), endpoint.pk, scheme, address, port)
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once, fresh
            conn = self.connections.get(key)
            if conn is None:
                if scheme == "https":
                    conn = _Pinned(parts.hostname, address, port, timeout=TIMEOUT, context=ssl.create_default_context())
                else:
                    conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT)
                self.connections[key] = conn
            try:
                conn.request("POST", path, body=body, headers={"Host": parts.netloc, **headers})
                response = conn.getresponse()
                text = response.read(64 * 1024).decode("utf-8", "replace").replace("\x00", "")[:EXCERPT]
                if response.will_close:
                    self._drop(key)
                latency = int((time.monotonic() - started) * 1000)
                return Outcome(200 <= response.status < 300, response.status, latency, text)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(key)
                if attempt == 2 or isinstance(exc, TimeoutError):
                    return Outcome(False, None, int((time.monotonic() - started) * 1000), f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def _drop(self, key):
        conn = self.connections.pop(key, None)
        if conn is not None:
            conn.close()

    def close(self):
        for key in list(self.connections):
            self._drop(key)


def _due_endpoints(now):
    return list(Endpoint.objects.filter(enabled=True).filter(Q(breaker_until__isnull=True) | Q(breaker_until__lte=now))
                .filter(id__in=OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING, next_attempt_at__lte=now)
                        .values("endpoint_id")))


@dataclass(slots=True)
class Due:
    """A claimed outbox row: what its request carries."""

    id: int
    msg_id: str
    body: str  # the event's JSON with its "id", as posted
    created_at: object
    attempts: int


def claim(endpoint: Endpoint, now, limit: int) -> list[Due]:
    """Take up to ``limit`` due rows of one endpoint under a lease, in one committed statement, before anything
    is posted."""
    table = OutboxMessage._meta.db_table
    postgres = connection.vendor == "postgresql"
    # SQLite has one writer at a time: its claim needs no row locks. PostgreSQL writes each event's body.
    lock = "FOR UPDATE SKIP LOCKED" if postgres else ""
    body = "(payload || jsonb_build_object('id', msg_id))::text" if postgres else "payload"
    sql = f"""
        UPDATE {table} SET next_attempt_at = %s, attempts = attempts + 1
        WHERE id IN (SELECT id FROM {table} WHERE endpoint_id = %s AND status = 'pending' AND next_attempt_at <= %s
                     ORDER BY next_attempt_at, id LIMIT %s {lock})
        RETURNING id, msg_id, {body}, created_at, attempts
    """  # noqa: S608 - the table name from the model, values as parameters
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql, [now + LEASE, endpoint.pk, now, limit])
        found = cur.fetchall()
    rows = [Due(pk, msg_id, text if postgres else _with_id(text, msg_id), _aware(created), attempts)
            for pk, msg_id, text, created, attempts in found]
    rows.sort(key=lambda r: r.id)
    return rows


def _with_id(payload, msg_id) -> str:
    data = json.loads(payload) if isinstance(payload, str | bytes) else payload
    return json.dumps({**data, "id": msg_id}, separators=(",", ":"))


def _aware(value):
    if isinstance(value, str):  # SQLite hands timestamps back as text
        value = datetime.fromisoformat(value)
    return value if value is None or timezone.is_aware(value) else timezone.make_aware(value, UTC)


def body_of(endpoint: Endpoint, rows: list[Due]) -> tuple[bytes, str]:
    """The request body and its webhook-id: one event as it is, or a batch as a JSON array of them."""
    if endpoint.batch_size <= 1 and len(rows) == 1:
        return rows[0].body.encode(), rows[0].msg_id
    return ("[" + ",".join(r.body for r in rows) + "]").encode(), "batch_" + rows[0].msg_id.removeprefix("msg_")


def deliver_endpoint(endpoint: Endpoint, poster: Poster, now=None, budget: float = 20.0) -> int:
    """Post what an endpoint is owed, a claimed slice at a time, for up to ``budget`` seconds; how many rows
    were delivered.

    A slice goes out over HERALD_WEBHOOK_CONCURRENCY connections at once, so a
    receiver that takes its time to answer still gets thousands of events a
    second; and while it goes out, this thread claims the next slice and
    records the last one, so the database's time hides behind the network's.
    """
    now = now or timezone.now()
    size = max(1, endpoint.batch_size)
    workers = max(1, _setting("HERALD_WEBHOOK_CONCURRENCY", 4))
    limit = min(max(size * workers * 4, 2000), 5000)
    delivered, deadline = 0, time.monotonic() + budget
    with ThreadPoolExecutor(workers, thread_name_prefix="webhooks") as pool:
        rows = claim(endpoint, now, limit)
        posting = _post_slice(pool, endpoint, poster, rows, size, workers, now) if rows else None
        while posting is not None:
            following = claim(endpoint, now, limit) if time.monotonic() < deadline else []
            results = [r for lane in posting for r in lane.result()]
            ok_ids = [r.id for _, chunk, outcome in results if outcome.ok for r in chunk]
            failed = [(r, outcome) for _, chunk, outcome in results if not outcome.ok for r in chunk]
            tried = {r.id for _, chunk, _ in results for r in chunk}
            untried = [r.id for r in rows if r.id not in tried]
            posting = None
            if failed:
                untried += [r.id for r in following]  # the endpoint is failing: what was claimed waits too
            elif following:
                posting = _post_slice(pool, endpoint, poster, following, size, workers, now)
            _record(endpoint, now, results, ok_ids, failed, untried)
            delivered += len(ok_ids)
            rows = following
    return delivered


def _post_slice(pool, endpoint, poster, rows, size, workers, now):
    """Start posting ``rows`` in chunks of ``size``, over ``workers`` lanes; the lanes' futures."""
    chunks = [rows[start:start + size] for start in range(0, len(rows), size)]
    return [pool.submit(_post_lane, endpoint, poster, chunks[n::workers], now) for n in range(workers)]


def _post_lane(endpoint, poster, chunks, now):
    """Post chunks one after the other on this thread's connection; stop at the first failure."""
    results = []
    for chunk in chunks:
        body, msg_id = body_of(endpoint, chunk)
        outcome = poster.post(endpoint, body, msg_id, now)
        results.append((msg_id, chunk, outcome))
        if not outcome.ok:
            break  # the endpoint is failing: the rest waits for the next try
    return results


def _record(endpoint, now, results, ok_ids, failed, untried):
    with transaction.atomic():
        _log(endpoint, now, results)
        _update_ids(ok_ids, "status = 'delivered', delivered_at = %s, last_error = ''", [now])
        _update_ids(untried, "next_attempt_at = %s, attempts = attempts - 1", [now])
        cutoff = now - give_up_after()
        outcomes = {}
        for row, outcome in failed:
            error = f"{outcome.status or ''} {outcome.text}".strip()[:EXCERPT]
            gave_up = row.created_at is not None and row.created_at <= cutoff
            outcomes.setdefault((error, None if gave_up else row.attempts), []).append(row.id)
        for (error, attempts), ids in outcomes.items():
            if attempts is None:
                OutboxMessage.objects.filter(pk__in=ids).update(status=OutboxMessage.Status.FAILED, last_error=error)
            else:
                OutboxMessage.objects.filter(pk__in=ids).update(next_attempt_at=now + backoff(attempts),
                                                                last_error=error)
        _breaker(endpoint, now, succeeded=bool(ok_ids), failed=bool(failed))


def _update_ids(ids, assignments, params):
    if not ids:
        return
    table = OutboxMessage._meta.db_table
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            # The ids as one array literal: joined in C, where adapting each one would cost more than the update.
            cur.execute(f"UPDATE {table} SET {assignments} WHERE id = ANY(%s::bigint[])",  # noqa: S608
                        [*params, "{" + ",".join(map(str, ids)) + "}"])
        else:
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                cur.execute(f"UPDATE {table} SET {assignments} WHERE id IN ({', '.join(['%s'] * len(part))})",  # noqa: S608
                            [*params, *part])


def _log(endpoint, now, results):
    """One delivery-log row per request, in one statement."""
    if not results:
        return
    if connection.vendor != "postgresql":
        DeliveryAttempt.objects.bulk_create([
            DeliveryAttempt(endpoint=endpoint, webhook_id=msg_id, messages=[r.id for r in chunk], ok=outcome.ok,
                            status_code=outcome.status, latency_ms=outcome.latency_ms, response=outcome.text,
                            created_at=now)
            for msg_id, chunk, outcome in results])
        return
    rows = json.dumps([{"w": msg_id, "m": [r.id for r in chunk], "ok": outcome.ok, "c": outcome.status,
                        "l": outcome.latency_ms, "r": outcome.text} for msg_id, chunk, outcome in results])
    with connection.cursor() as cur:
        cur.execute(
            f"""
            INSERT INTO {DeliveryAttempt._meta.db_table}
                   (endpoint_id, webhook_id, messages, ok, status_code, latency_ms, response, created_at)
            SELECT %s, v.w, v.m, v.ok, v.c, v.l, v.r, %s
            FROM jsonb_to_recordset(%s::jsonb) AS v(w text, m jsonb, ok boolean, c integer, l integer, r text)
            """,  # noqa: S608 - the table name from the model, values as parameters
            [endpoint.pk, now, rows])


def _breaker(endpoint, now, succeeded, failed):
    if succeeded and not failed:
        Endpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=0, failing_since=None, breaker_until=None)
        return
    if not failed:
        return
    fresh = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
    fresh.consecutive_failures += 1
    fresh.failing_since = fresh.failing_since or now
    threshold = _setting("HERALD_WEBHOOK_BREAKER_FAILURES", 5)
    if fresh.consecutive_failures >= threshold:
        fresh.breaker_until = now + backoff(fresh.consecutive_failures - threshold + 1)
    switching_off = fresh.enabled and now - fresh.failing_since >= give_up_after()
    if switching_off:
        fresh.enabled = False
        fresh.disabled_reason = (f"Switched off on {now:%Y-%m-%d %H:%M} UTC: every delivery failed since "
                                 f"{fresh.failing_since:%Y-%m-%d %H:%M} UTC. Fix the receiver and enable it again.")
    fresh.save(update_fields=["consecutive_failures", "failing_since", "breaker_until", "enabled", "disabled_reason"])
    if switching_off:
        notices.switched_off(fresh, fresh.disabled_reason, _undelivered(fresh))
    endpoint.__dict__.update({k: getattr(fresh, k) for k in ("consecutive_failures", "breaker_until", "enabled")})


def _undelivered(endpoint) -> dict[str, int]:
    """How many of the endpoint's events wait, and how many it gave up on: {status: count}."""
    rows = (OutboxMessage.objects.filter(endpoint=endpoint).exclude(status=OutboxMessage.Status.DELIVERED)
            .values_list("status").annotate(n=Count("id")).order_by())
    return dict(rows)


def enforce_limit(now=None) -> list[int]:
    """Switch off endpoints owing more than the outbox limit (their rows stay, for redelivery); their ids."""
    now = now or timezone.now()
    limit = _setting("HERALD_WEBHOOK_OUTBOX_LIMIT", 100_000)
    off = []
    for endpoint in Endpoint.objects.filter(enabled=True):
        if OutboxMessage.objects.filter(endpoint=endpoint, status=OutboxMessage.Status.PENDING)[limit:limit + 1].exists():
            reason = f"Switched off on {now:%Y-%m-%d %H:%M} UTC: more than {limit} events waiting for it."
            if Endpoint.objects.filter(pk=endpoint.pk, enabled=True).update(enabled=False, disabled_reason=reason):
                notices.switched_off(endpoint, reason, _undelivered(endpoint))
                off.append(endpoint.pk)
    return off


def deliver_due(now=None) -> int:
    """Deliver every endpoint's due rows once (beat runs this every few seconds); how many were delivered."""
    now = now or timezone.now()
    poster = Poster()
    try:
        return sum(deliver_endpoint(endpoint, poster, now) for endpoint in _due_endpoints(now))
    finally:
        poster.close()


def redeliver(ids, now=None) -> int:
    """Put rows back for delivery now, whatever became of them (the operator's manual redelivery)."""
    now = now or timezone.now()
    return OutboxMessage.objects.filter(id__in=list(ids)).update(status=OutboxMessage.Status.PENDING,
                                                                 next_attempt_at=now, last_error="")


def purge(now=None) -> int:
    """Forget delivered rows and log entries older than HERALD_WEBHOOK_KEEP_DAYS."""
    now = now or timezone.now()
    before = now - timedelta(days=_setting("HERALD_WEBHOOK_KEEP_DAYS", 7))
    count = OutboxMessage.objects.filter(status=OutboxMessage.Status.DELIVERED, delivered_at__lt=before).delete()[0]
    return count + DeliveryAttempt.objects.filter(created_at__lt=before).delete()[0]
