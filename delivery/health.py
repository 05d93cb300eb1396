"""Relay health, shared by every worker through Redis: which relays are down, until when, and why.

A relay that refuses connections, fails TLS or AUTH, or refuses a session
again and again is marked down for a backoff that doubles with each failure in
a row (HERALD_RELAY_RETRY_SECONDS, up to HERALD_RELAY_RETRY_MAX_SECONDS).
Meanwhile routing gives its share to the other relays of its groups. When the
backoff ends the relay gets its share again: that is the health check, made
with real mail, so a relay that still fails is marked down again at once and
its messages move on, never lost (nothing was sent to it). The first
connection it accepts clears the mark.

The last replies each relay gave are kept too, for the admin and the API.
"""

import json
import logging
import math
import time

from django.conf import settings
from redis.exceptions import RedisError

from delivery import adaptive, throttle

log = logging.getLogger(__name__)

HEALTH = throttle.PREFIX + "relay-health:"
REPLIES = throttle.PREFIX + "relay-replies:"
REPLIES_KEPT = 20
HEALTH_TTL = 86400

# KEYS: health. ARGV: now, base backoff, max backoff, reason. Returns the backoff in force.
# A relay already down (another worker saw the same outage) keeps its backoff:
# one outage counts once, however many workers run into it.
_DOWN = """
local now, base, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'failures', 'until')
local failures, till = tonumber(s[1]) or 0, tonumber(s[2]) or 0
if till > now then
  redis.call('HSET', KEYS[1], 'reason', ARGV[4])
  return tostring(till - now)
end
failures = failures + 1
local wait = math.min(base * 2 ^ (failures - 1), most)
redis.call('HSET', KEYS[1], 'failures', failures, 'until', tostring(now + wait), 'reason', ARGV[4], 'at', tostring(now))
redis.call('HSETNX', KEYS[1], 'since', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return tostring(wait)
"""

_script = {}


def _down_script():
    conn = throttle.client()
    hit = _script.get("down")
    if hit is None or hit[0] is not conn:
        hit = _script["down"] = (conn, conn.register_script(_DOWN))
    return hit[1]


def backoff() -> tuple[float, float]:
    return (float(getattr(settings, "HERALD_RELAY_RETRY_SECONDS", 10)),
            float(getattr(settings, "HERALD_RELAY_RETRY_MAX_SECONDS", 600)))


def mark_down(relay_id: int, reason: str) -> float:
    """Mark a relay down; returns the seconds until it is tried again."""
    base, most = backoff()
    try:
        wait = float(_down_script()(keys=[HEALTH + str(relay_id)],
                                    args=[time.time(), base, most, reason[:500], HEALTH_TTL]))
    except RedisError as exc:
        log.warning("relay %s health not recorded: %s", relay_id, exc)
        return 0.0
    log.warning("relay %s is down, tried again in %.0f s: %s", relay_id, wait, reason)
    note(relay_id, [(None, reason)])
    return wait


def mark_up(relay_id: int):
    try:
        throttle.client().delete(HEALTH + str(relay_id))
    except RedisError:
        pass  # its backoff ends by itself


def marks(relay_ids) -> dict:
    """{relay id: the end of its backoff (epoch seconds)} of the relays among ``relay_ids`` marked down, in their
    backoff or not yet tried since: one round trip for all of them."""
    ids = list(relay_ids)
    if not ids:
        return {}
    try:
        pipe = throttle.client().pipeline(transaction=False)
        for pk in ids:
            pipe.hget(HEALTH + str(pk), "until")
        tills = pipe.execute()
    except RedisError:
        return {}  # without Redis every relay is tried, as before
    return {pk: float(till) for pk, till in zip(ids, tills, strict=True) if till is not None}


def note(relay_id: int, replies):
    """Keep a relay's latest replies ([(code, text)], code None for a failure without one)."""
    if not replies:
        return
    now = time.time()
    entries = [json.dumps({"at": now, "code": code, "text": (text or "")[:300]}) for code, text in replies[-5:]]
    try:
        pipe = throttle.client().pipeline(transaction=False)
        pipe.lpush(REPLIES + str(relay_id), *entries)
        pipe.ltrim(REPLIES + str(relay_id), 0, REPLIES_KEPT - 1)
        pipe.expire(REPLIES + str(relay_id), HEALTH_TTL)
        pipe.execute()
    except RedisError:
        pass  # only the admin's view of it is lost


def status(relay) -> dict:
    """What the admin and the API show of a relay now: health, sending rate, connections in use, latest replies."""
    key = str(relay.pk)
    r = throttle.client()
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(HEALTH + key)
    pipe.hmget(adaptive.SEEN + f"relay:{relay.pk}", "est", "ts")
    pipe.zcount(throttle.PREFIX + f"conn:relay:{relay.pk}", time.time(), "+inf")
    pipe.time()
    pipe.lrange(REPLIES + key, 0, REPLIES_KEPT - 1)
    mark, (est, ts), connections, (secs, micros), replies = pipe.execute()
    mark = {k.decode(): v.decode() for k, v in mark.items()}
    now = time.time()
    till = float(mark.get("until", 0) or 0)
    if not relay.enabled:
        state = "disabled"
    elif till > now:
        state = "down"
    elif mark:
        state = "retrying"  # its backoff ended; the next connection tells
    else:
        state = "up"
    rate = 0.0
    if est is not None:
        rate = float(est) * _decay(secs + micros / 1e6 - float(ts))
    return {
        "state": state,
        "failures": int(mark.get("failures", 0) or 0),
        "reason": mark.get("reason", ""),
        "retry_in": round(max(0.0, till - now), 1),
        "rate": round(rate, 2),
        "connections": int(connections),
        "replies": [json.loads(item) for item in replies],
    }


def _decay(elapsed):
    return math.exp(-max(0.0, elapsed) / adaptive.SEEN_TAU)
