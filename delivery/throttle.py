"""Limits that hold across every worker: Redis token buckets, reserved send slots, connection slots.

Slowing down when a destination asks for it: delivery.adaptive.

All state lives in Redis and each operation is one atomic Lua call on Redis's
own clock, so adding workers (on this machine or others) never breaks a limit.
Tokens are taken in batches: a worker asks for N and learns how many it got.

A send that gets no token now is given a slot: the time at which the bucket
will hold a token that nobody else may take (GCRA-style reservation, kept as
the bucket's ``tat``, the time of its next unpromised token). While slots are
promised, newcomers queue behind them instead of taking the refill; a send
holding a slot takes its token at that time from the same bucket, so the
bucket alone still bounds what goes out in any one second, however late a
worker comes back for its slot.
"""

import math
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings

from delivery.models import PERIOD_SECONDS, DomainThrottle

PREFIX = "herald:"
# A throttled group recovers its full rate over this many seconds.
RECOVER_SECONDS = 600

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local recover = tonumber(ARGV[4])
local factor = 1
local s = redis.call('HMGET', KEYS[2], 'factor', 'since')
if s[1] then factor = math.min(1, tonumber(s[1]) + (now - tonumber(s[2])) / recover) end
local eff = rate * factor
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * eff)
local granted = math.min(n, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
redis.call('EXPIRE', KEYS[1], math.ceil(math.max(burst / eff, tat - now)) + 60)
local wait = 0
if granted < n then wait = (1 - tokens) / eff end
return {granted, tostring(wait), tostring(factor)}
"""

# The slot (seconds from now) of the first of ``rest`` sends that got no token,
# and the spacing of the others; newcomers take nothing while slots are promised.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local recover = tonumber(ARGV[4])
local held = tonumber(ARGV[5])
local factor = 1
local s = redis.call('HMGET', KEYS[2], 'factor', 'since')
if s[1] then factor = math.min(1, tonumber(s[1]) + (now - tonumber(s[2])) / recover) end
local eff = rate * factor
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'tat')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
local tat = tonumber(b[3]) or 0
tokens = math.min(burst, tokens + math.max(0, now - ts) * eff)
local granted = 0
if held == 1 or tat <= now then granted = math.min(n, math.floor(tokens + 1e-9)) end
tokens = tokens - granted
local rest = n - granted
local first = 0
if rest > 0 then
  local base = math.max(tat, now + math.max(0, 1 - tokens) / eff)
  first = base - now
  tat = base + rest / eff
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now), 'tat', tostring(tat))
redis.call('EXPIRE', KEYS[1], math.ceil(math.max(burst / eff, tat - now)) + 60)
return {granted, tostring(first), tostring(1 / eff)}
"""

# Slots promised to sends that will not use them (their campaign stopped) are
# given back: the queue behind them moves up. Approximate (the freed slots may
# lie anywhere in the schedule), which costs at most a second reservation for
# some sends, never a breach: the bucket still decides at send time.
_UNRESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat > now then
  redis.call('HSET', KEYS[1], 'tat', tostring(math.max(now, tat - tonumber(ARGV[1]) * tonumber(ARGV[2]))))
end
return 1
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 60)
  return 1
end
return 0
"""

_local = threading.local()


def client() -> redis.Redis:
    """One Redis client per process (redis-py re-opens its pool after a fork)."""
    conn = getattr(_local, "client", None)
    if conn is None or getattr(_local, "url", None) != settings.REDIS_URL:
        conn = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, health_check_interval=30)
        _local.client, _local.url = conn, settings.REDIS_URL
        sources = (("take", _TAKE), ("reserve", _RESERVE), ("unreserve", _UNRESERVE), ("acquire", _ACQUIRE))
        _local.scripts = {name: conn.register_script(src) for name, src in sources}
    return conn


def _script(name):
    client()
    return _local.scripts[name]


@dataclass(frozen=True)
class Limit:
    """A rate shared by one key: ``rate`` tokens per second, bucket of ``burst``."""

    key: str
    rate: float  # tokens per second; 0 means unlimited
    burst: float
    max_connections: int = 0


@dataclass(frozen=True)
class Grant:
    granted: int
    wait: float  # seconds until the next token when fewer were granted
    factor: float = 1.0


def take_tokens(limit: Limit, n: int) -> Grant:
    """Take up to ``n`` tokens from the bucket at once; never waits."""
    if n <= 0 or limit.rate <= 0:
        return Grant(max(n, 0), 0.0)
    granted, wait, factor = _script("take")(
        keys=[PREFIX + "bucket:" + limit.key, PREFIX + "slow:" + limit.key],
        args=[limit.rate, max(limit.burst, 1), n, RECOVER_SECONDS],
    )
    return Grant(int(granted), float(wait), float(factor))


@dataclass(frozen=True)
class Reservation:
    """``granted`` sends may go now; the others have slots ``first``, ``first + interval``, … seconds from now."""

    granted: int
    first: float = 0.0
    interval: float = 0.0

    def waits(self, count: int) -> list[float]:
        return [self.first + i * self.interval for i in range(count)]


def reserve(limit: Limit, n: int, held: bool = False) -> Reservation:
    """Take up to ``n`` tokens now and reserve slots for the rest, in one call; never waits.

    ``held``: these sends come back for slots reserved earlier, so they take the
    refill that was promised to them; other sends take nothing while slots are
    promised, and queue behind them.
    """
    if n <= 0 or limit.rate <= 0:
        return Reservation(max(n, 0))
    granted, first, interval = _script("reserve")(
        keys=[PREFIX + "bucket:" + limit.key, PREFIX + "slow:" + limit.key],
        args=[limit.rate, max(limit.burst, 1), n, RECOVER_SECONDS, 1 if held else 0],
    )
    return Reservation(int(granted), float(first), float(interval))


def unreserve(limit: Limit, n: int):
    """Give back ``n`` slots that will not be used, so the sends queued behind them move up."""
    if n > 0 and limit.rate > 0:
        _script("unreserve")(keys=[PREFIX + "bucket:" + limit.key], args=[n, 1 / limit.rate])


def per_task(limit: Limit) -> int:
    """How many sends with consecutive slots share a task: half the bucket, and about half a second of the rate.

    A task runs at its last send's slot, when the bucket holds the tokens of
    all of them; one that runs late (the workers were busy) finds them still
    there for as long again, before a full bucket lets the refill go to waste.
    """
    if limit.rate <= 0:
        return 1
    return max(1, min(int(max(limit.burst, 1)) // 2, math.ceil(limit.rate / 2)))


def give_back(limit: Limit, n: int):
    """Return tokens taken for sends that were never attempted."""
    if n > 0 and limit.rate > 0:
        client().hincrbyfloat(PREFIX + "bucket:" + limit.key, "tokens", n)


def acquire_slot(key: str, limit: int, holder: str, ttl: float) -> bool:
    """Hold one of ``limit`` connection slots for ``ttl`` seconds (call again to refresh)."""
    if limit <= 0:
        return True
    return bool(_script("acquire")(keys=[PREFIX + "conn:" + key], args=[holder, limit, ttl]))


def release_slot(key: str, holder: str):
    client().zrem(PREFIX + "conn:" + key, holder)


def rate_per_second(rate: int, period: str) -> float:
    return rate / PERIOD_SECONDS.get(period, 1) if rate else 0.0


class Throttles:
    """Domain → group limit, from DomainThrottle rows, re-read every few seconds."""

    TTL = 5.0
    DEFAULT = Limit("default", 0.0, 0.0, 0)

    def __init__(self):
        self._loaded = 0.0
        self._by_domain = {}
        self._default = None

    def _load(self):
        by_domain, default = {}, None
        for row in DomainThrottle.objects.all():
            rate = rate_per_second(row.rate, row.period)
            burst = row.burst or max(row.rate, 1)
            if row.is_default:
                default = (rate, burst, row.max_connections)
            for domain in row.domain_list():
                by_domain[domain] = Limit(f"throttle:{row.pk}", rate, burst, row.max_connections)
        self._by_domain, self._default, self._loaded = by_domain, default, time.monotonic()

    def for_domain(self, domain: str, group: str | None = None) -> Limit:
        """The limit for a recipient domain; ``group`` (a provider or an MX host set) replaces the domain for defaults.

        A throttle that names the group (a provider such as ``microsoft``) holds
        across all the provider's domains, before one naming the domain itself.
        """
        if time.monotonic() - self._loaded > self.TTL:
            self._load()
        limit = (self._by_domain.get(group) if group else None) or self._by_domain.get(domain)
        if limit is not None:
            return limit
        if self._default is None:
            return Limit("domain:" + (group or domain), 0.0, 0.0, 0)
        rate, burst, conns = self._default
        return Limit("domain:" + (group or domain), rate, burst, conns)

    def invalidate(self):
        self._loaded = 0.0


throttles = Throttles()
