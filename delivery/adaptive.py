"""Slowing down when a destination asks to: fewer connections, a lower rate, then back up gradually.

A reply that asks the sender to slow down (a 421, or an explicit rate-limit
reply: ``classify.is_throttle``) slows the key it is about:

- a recipient's destination (its throttle group), for replies about a
  recipient or a message: RCPT, DATA, the final dot, and in direct mode
  anything the recipient's MX host says;
- the relay itself, for replies in the relay's own session: its greeting,
  EHLO, AUTH, RSET and MAIL.

Every group slows down, limited or not. A group an operator limited starts
from its configured rate; an unlimited one from the rate Herald was sending
at (an average over the last seconds, counted here for every key). The rate
halves and the connections halve (down to one) at most once per HOLD seconds,
so a burst of 421s from one moment counts once; and after every throttle
reply nothing goes to the key for PAUSE seconds, so a server whose window is
full is not asked again at once. After QUIET seconds without a
throttle reply the rate grows by a fifth of the rate it was cut to, and the
connections by one, every STEP seconds (additive increase); back at the
ceiling, the slow-down is forgotten. A server that hangs up with a 421 after the same
number of messages on two connections is also remembered: connections to it
carry no more than that.

All state is in Redis, computed on Redis's clock in one Lua call, so every
worker on every machine slows down together.
"""

import logging
import os
import secrets
import socket
from dataclasses import dataclass

from delivery import throttle
from delivery.classify import is_throttle
from delivery.heartbeat import HEARTBEAT_TTL, heartbeat

log = logging.getLogger(__name__)

STATE = throttle.PREFIX + "adapt:"  # rate, conns, ceiling, conn_ceiling, last, cut, base
BUCKET = throttle.PREFIX + "adapt-bucket:"
SEEN = throttle.PREFIX + "adapt-seen:"  # est (messages per second), ts, first
SESSION = throttle.PREFIX + "adapt-session:"  # seen, limit: messages a connection took before a 421
SLOTS = "adapt:"  # connection slots of a slowed key, under throttle's conn: prefix

HOLD = 1.0
PAUSE = 1.0  # seconds without a send to a key after each throttle reply
QUIET = 10.0
STEP = 5.0
INCREASE = 0.2  # of the rate right after the last cut, per STEP
MIN_RATE = 0.2  # messages per second: a slowed key never stops altogether
SEEN_TAU = 5.0  # seconds over which the sending rate is averaged
SESSION_TTL = 600  # how long a learned per-connection message count holds after its last 421
STATE_TTL = 6 * 3600  # a slow-down not heard of for this long is forgotten, recovered or not
SLOT_TTL = HEARTBEAT_TTL  # a slowed key's connection slot, renewed by the heartbeat timer while in use

# The state of a slowed key as of now: its stored rate and connections plus
# the additive increase since QUIET seconds after the last throttle reply.
_CURRENT = """
local function current(k, now, quiet, step, increase)
  local s = redis.call('HMGET', k, 'rate', 'conns', 'ceiling', 'conn_ceiling', 'last', 'cut', 'base')
  if not s[1] then return nil end
  local rate, conns, ceiling, cc = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
  local idle = now - tonumber(s[5]) - quiet
  if idle >= 0 then
    local steps = math.floor(idle / step) + 1
    rate = math.min(ceiling, rate + steps * tonumber(s[7]) * increase)
    conns = math.min(cc, conns + steps)
  end
  return {rate, conns, ceiling, cc, tonumber(s[6])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: state, seen, pool slots, bucket. ARGV: limit rate, connection cap, hold, quiet, step, increase, min rate, ttl, tau, pause.
_SLOW = _CURRENT + """
local hold, quiet, step, increase = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local c = current(KEYS[1], now, quiet, step, increase)
local rate, conns, ceiling, cc
-- Every throttle reply stops sends to the key for a pause: tokens saved up at
-- an old pace are dropped, and the next come only after the pause.
local function pause(r)
  local pause_for = tonumber(ARGV[10])
  redis.call('HSET', KEYS[4], 'tokens', tostring(-r * pause_for), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[4], 3600)
end
if c and now - c[5] < hold then
  -- Already cut in this moment: the quiet period starts again, the rate stays.
  redis.call('HSET', KEYS[1], 'rate', tostring(c[1]), 'conns', c[2], 'last', tostring(now))
  pause(c[1])
  return {tostring(c[1]), c[2], 0}
end
local limit, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
if c then
  rate, conns, ceiling, cc = c[1], c[2], c[3], c[4]
else
  local seen = redis.call('HMGET', KEYS[2], 'est', 'ts', 'first')
  local est, tau = 0, tonumber(ARGV[9])
  if seen[1] then
    -- The average decays over tau seconds; a series younger than that is
    -- divided by the share of tau it covers (a 421 after the first five
    -- messages comes at the rate those five went at, not at five per tau).
    local age = math.max(0.1, now - tonumber(seen[3]))
    est = tonumber(seen[1]) * math.exp(-(now - tonumber(seen[2])) / tau) / (1 - math.exp(-age / tau))
  end
  if limit > 0 then rate = limit else rate = math.max(est, 2 * tonumber(ARGV[7])) end
  ceiling = rate
  conns = math.max(1, redis.call('ZCARD', KEYS[3]))
  if cap > 0 then conns = math.min(conns, cap) end
  cc = conns
end
rate = math.max(tonumber(ARGV[7]), rate / 2)
conns = math.max(1, math.floor(conns / 2))
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'conns', conns, 'ceiling', tostring(ceiling),
           'conn_ceiling', cc, 'last', tostring(now), 'cut', tostring(now), 'base', tostring(rate))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
pause(rate)
return {tostring(rate), conns, 1}
"""

# KEYS: [state, bucket] per key. ARGV: n, quiet, step, increase.
# Returns {granted, wait, conns per key (-1: not slowed), rate per key}; tokens are taken
# only as many as every slowed key grants.
_ADMIT = _CURRENT + """
local n, quiet, step, increase = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local granted, wait, out, rates, buckets = n, 0, {}, {}, {}
for i = 1, #KEYS, 2 do
  local c = current(KEYS[i], now, quiet, step, increase)
  if c and c[1] >= c[3] and c[2] >= c[4] then
    redis.call('DEL', KEYS[i], KEYS[i + 1])  -- recovered: forgotten
    c = nil
  end
  if c then
    local burst = math.max(1, c[1])
    local b = redis.call('HMGET', KEYS[i + 1], 'tokens', 'ts')
    local tokens = tonumber(b[1]) or 1
    local ts = tonumber(b[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - ts) * c[1])
    buckets[#buckets + 1] = {KEYS[i + 1], tokens, c[1]}
    local here = math.max(0, math.floor(tokens))
    if here < granted then granted = here end
    out[#out + 1] = c[2]
    rates[#rates + 1] = tostring(c[1])
  else
    out[#out + 1] = -1
    rates[#rates + 1] = '0'
  end
end
for _, b in ipairs(buckets) do
  local left = b[2] - granted
  redis.call('HSET', b[1], 'tokens', tostring(left), 'ts', tostring(now))
  redis.call('EXPIRE', b[1], 3600)
  if granted < n then wait = math.max(wait, (1 - left) / b[3]) end
end
for _, r in ipairs(rates) do out[#out + 1] = r end
return {granted, tostring(wait), unpack(out)}
"""

# KEYS: seen per key. ARGV: n, tau.
_SEEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tau = tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  local s = redis.call('HMGET', k, 'est', 'ts')
  local est = 0
  if s[1] then
    est = tonumber(s[1]) * math.exp(-(now - tonumber(s[2])) / tau)
  else
    redis.call('HSET', k, 'first', tostring(now))
  end
  redis.call('HSET', k, 'est', tostring(est + tonumber(ARGV[1]) / tau), 'ts', tostring(now))
  redis.call('EXPIRE', k, 120)
end
"""

# KEYS: session. ARGV: messages taken, ttl. A count is believed when two
# connections end after it: one 421 after an arbitrary count (a server that
# restarts, a rate limit that struck mid-session) teaches nothing.
_LEARN = """
local s = redis.call('HMGET', KEYS[1], 'seen', 'limit')
local n, limit = tonumber(ARGV[1]), tonumber(s[2])
if tonumber(s[1]) == n then
  if not limit or n < limit then limit = n end
  redis.call('HSET', KEYS[1], 'limit', limit)
end
redis.call('HSET', KEYS[1], 'seen', n)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return limit or 0
"""

_scripts = {}


def _script(name, source):
    conn = throttle.client()
    hit = _scripts.get(name)
    if hit is None or hit[0] is not conn:
        hit = _scripts[name] = (conn, conn.register_script(source))
    return hit[1]


@dataclass
class Slowed:
    rate: float  # messages per second now allowed
    connections: int
    cut: bool  # this reply halved them (False: another one did, moments ago)


def slow_down(key: str, limit_rate: float = 0.0, cap: int = 0, pool_key: str = "") -> Slowed:
    """Halve ``key``'s rate and connections (at most once per HOLD seconds).

    ``limit_rate`` is the configured rate (0: unlimited, start from the rate
    seen), ``cap`` the configured connections, and ``pool_key`` names the
    connection slots whose holders are counted as the connections in use.
    """
    rate, conns, cut = _script("slow", _SLOW)(
        keys=[STATE + key, SEEN + key, throttle.PREFIX + "conn:" + (pool_key or SLOTS + key), BUCKET + key],
        args=[limit_rate or 0, cap or 0, HOLD, QUIET, STEP, INCREASE, MIN_RATE, STATE_TTL, SEEN_TAU, PAUSE],
    )
    return Slowed(float(rate), int(conns), bool(cut))


def state(key: str) -> Slowed | None:
    """How far ``key`` is slowed down now, or None."""
    _, _, conns, rate = _script("admit", _ADMIT)(keys=[STATE + key, BUCKET + key], args=[0, QUIET, STEP, INCREASE])
    return Slowed(float(rate), int(conns), False) if int(conns) >= 0 else None


def count(keys, n: int):
    """Count ``n`` messages sent to each key, for the rate a slow-down starts from."""
    if n > 0 and keys:
        _script("seen", _SEEN)(keys=[SEEN + k for k in keys], args=[n, SEEN_TAU])


def learn_session(pool_key: str, taken: int) -> int:
    """A server hung up with a 421 after taking ``taken`` messages on one connection.

    Once two connections ended so, it gets no more than that on each; returns
    the count learned (0: none yet).
    """
    return int(_script("learn", _LEARN)(keys=[SESSION + pool_key], args=[max(1, taken), SESSION_TTL]))


class Pace:
    """The slow-down of one send over one route: its destination group and, through a relay, the relay.

    ``admit`` takes tokens from every slowed key, ``hold`` one of each slowed
    key's connection slots (refreshed while used, let go at the end).
    """

    def __init__(self, route, limit):
        self.route = route
        self.limit = limit
        self.group = limit.key
        self.relay = route.relay_limit.key if route.relay is not None and route.relay_limit is not None else None
        self.keys = [self.group] + ([self.relay] if self.relay else [])
        self.connections = {}  # slowed key -> connections allowed
        self.rates = {}  # slowed key -> messages per second allowed
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.held = []
        self.renewal = None

    def admit(self, n: int) -> tuple[int, float]:
        """How many of ``n`` sends may go now, and the wait for the next when fewer."""
        keys = [k for key in self.keys for k in (STATE + key, BUCKET + key)]
        granted, wait, *out = _script("admit", _ADMIT)(keys=keys, args=[n, QUIET, STEP, INCREASE])
        conns, rates = out[:len(self.keys)], out[len(self.keys):]
        self.connections = {k: int(c) for k, c in zip(self.keys, conns, strict=True) if int(c) >= 0}
        self.rates = {k: float(r) for k, r in zip(self.keys, rates, strict=True) if k in self.connections}
        return int(granted), float(wait)

    @property
    def rate(self) -> float:
        """The rate of the slowest slowed key (0: none is slowed)."""
        return min(self.rates.values(), default=0.0)

    def give_back(self, n: int):
        if n > 0:
            for key in self.connections:
                throttle.client().hincrbyfloat(BUCKET + key, "tokens", n)

    def hold(self) -> bool:
        """One connection slot of each slowed key; False (holding none) when one has none free.

        The heartbeat timer renews them while this send lasts, so a killed
        worker's slots free themselves within SLOT_TTL.
        """
        for key, allowed in self.connections.items():
            if not throttle.acquire_slot(SLOTS + key, allowed, self.holder, SLOT_TTL):
                self.let_go()
                return False
            self.held.append(key)
        if self.held:
            self.renewal = heartbeat.hold([self], Pace._renew, SLOT_TTL)
        return True

    @staticmethod
    def _renew(paces):
        try:
            for pace in paces:
                for key in list(pace.held):
                    throttle.acquire_slot(SLOTS + key, max(pace.connections.get(key, 1), 1), pace.holder, SLOT_TTL)
        except Exception as exc:  # Redis restarting: tried again next second, never at the leases' cost
            log.debug("slow-down connection slot not renewed: %s", exc)

    def let_go(self):
        if self.renewal is not None:
            heartbeat.release(self.renewal)
            self.renewal = None
        for key in self.held:
            try:
                throttle.release_slot(SLOTS + key, self.holder)
            except Exception:
                pass  # the slot expires on its own
        self.held = []

    def messages_per_connection(self, configured: int) -> int:
        learned = throttle.client().hget(SESSION + self.route.pool_key, "limit")
        return min(configured, int(learned)) if learned else configured

    def count(self, n: int):
        count(self.keys, n)

    def throttled(self, code, text, session: bool, conn=None) -> bool:
        """A reply; when it asks to slow down, slow the relay (its own session's reply) or the group.

        Returns True when it did.
        """
        if code is None or not is_throttle(code, text):
            return False
        # The connections in use start the count: the route's (the relay's, or
        # the MX host set's), an upper bound on one group's through a relay.
        if session and self.relay is not None:
            slow_down(self.relay, self.route.relay_limit.rate, self.route.cap, self.route.pool_key)
        else:
            slow_down(self.group, self.limit.rate, self.route.cap, self.route.pool_key)
        if code == 421 and conn is not None and getattr(conn, "accepted", 0) > 0:
            learn_session(self.route.pool_key, conn.accepted)
        return True
