"""Warm-up schedules: a new sending identity sends a growing number of messages per provider per day.

Mailbox providers judge a sender they have not seen by its first days: a new
domain (or, in direct mode, a new source address) that sends a whole list at
once is throttled or filtered. A Warmup row puts an identity on a schedule:
each provider group (delivery.routing.group_of: a DomainThrottle's domains
through a relay, the MX provider in direct mode) may receive the schedule's
daily volume of its messages, starting at the preset's first volume and
multiplied by its factor at each good day, until the volume reaches
COMPLETE_AT and the limit ends. Tracking's daily step (tracking.warmup) moves
the stage: forward while bounce and complaint rates stay low, held or back when
they do not.

The engine calls ``admit`` once per claimed batch. The day's usage is a Redis
set per identity, provider group and day holding the ids of the sends admitted
(atomic across every worker and machine; a send that comes back the same day,
for a throttle slot or after a worker died, is admitted again without counting
twice). Sends over the allowance are handed back to the ledger until the next
day begins, parked like sends waiting for a far throttle slot: no task holds
them meanwhile.

A schedule that grows (the daily step) or that an operator changes releases
the sends it held, so a day's new volume is used that day.

Days are calendar days in Django's TIME_ZONE, read from the clock the engine is
given (``now``), so tests move through days without waiting.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from campaigns.models import Campaign
from delivery import routing, throttle
from delivery.models import DomainThrottle, Send, Warmup
from delivery.mx import NoRoute

PREFIX = throttle.PREFIX + "warmup:"
# A daily volume per provider at or above this ends the warm-up: the identity sends without a daily limit.
COMPLETE_AT = 100_000
# Usage keys outlive their day so the next day's step can read them.
KEEP_SECONDS = 3 * 86400
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Preset:
    first: int  # messages per provider on the first day
    factor: float  # growth at each good day

    def volume(self, stage: int) -> int | None:
        """The daily volume per provider at ``stage``; None once the warm-up is complete."""
        value = round(self.first * self.factor ** stage)
        return None if value >= COMPLETE_AT else value

    def schedule(self) -> list[int]:
        """Every stage's volume, in order, until the warm-up completes."""
        out, stage = [], 0
        while (value := self.volume(stage)) is not None:
            out.append(value)
            stage += 1
        return out


PRESETS = {
    Warmup.Preset.CONSERVATIVE: Preset(50, 1.5),
    Warmup.Preset.STANDARD: Preset(50, 2.0),
    Warmup.Preset.AGGRESSIVE: Preset(200, 3.0),
}


def allowance(warmup: Warmup) -> int | None:
    """Messages per provider group per day for this schedule now; None means no limit (off or complete)."""
    preset = PRESETS.get(warmup.preset)
    return preset.volume(warmup.stage) if preset else None


# --- which identity, which day ---------------------------------------------------------

_from_domains = {}  # campaign id -> From domain (fixed once a campaign sends)


def from_domain(campaign_id) -> str:
    if campaign_id not in _from_domains:
        if len(_from_domains) > 1024:
            _from_domains.clear()
        address = Campaign.objects.filter(pk=campaign_id).values_list("from_email", flat=True).first() or ""
        _from_domains[campaign_id] = address.rpartition("@")[2].strip().strip(">").lower()
    return _from_domains[campaign_id]


def identity_for(row, route=None) -> str:
    """The sending identity a send is counted against: the source address of its route when the route
    names one (direct delivery from a pool of addresses), else its campaign's From domain.

    The one place that decides it. Messages submitted by applications (no
    campaign) have none: a password reset never waits for tomorrow.
    """
    source = getattr(route, "source", None)
    if source:
        return str(source)
    if row.campaign_id is None:
        return ""
    return from_domain(row.campaign_id)


def day_of(now: datetime):
    return timezone.localtime(now).date()


def next_day(now: datetime) -> datetime:
    """The start of the day after ``now``'s, in TIME_ZONE."""
    local = timezone.localtime(now)
    start = datetime.combine(local.date() + timedelta(days=1), datetime.min.time())
    return timezone.make_aware(start, local.tzinfo)


def usage_key(identity, group, day) -> str:
    return f"{PREFIX}{identity}:{day.isoformat()}:{group}"


def groups_key(identity, day) -> str:
    return f"{PREFIX}{identity}:{day.isoformat()}"


# --- the schedules in effect -----------------------------------------------------------

class Schedules:
    """Identity -> today's allowance of every schedule that limits, re-read every few seconds (at once in
    the process that changes one)."""

    def __init__(self):
        self._loaded = float("-inf")
        self._limits = {}

    def limits(self) -> dict:
        if time.monotonic() - self._loaded > CACHE_SECONDS:
            limits = {}
            for warmup in Warmup.objects.exclude(preset=Warmup.Preset.OFF):
                value = allowance(warmup)
                if value is not None:
                    limits[warmup.identity] = value
            self._limits, self._loaded = limits, time.monotonic()
        return self._limits

    def invalidate(self):
        self._loaded = float("-inf")


schedules = Schedules()


@receiver([post_save, post_delete], sender=Warmup, dispatch_uid="herald-warmup-schedules")
def warmup_changed(instance, **kwargs):
    """An operator changed or removed a schedule: what it held for tomorrow may be allowed today."""
    schedules.invalidate()
    release_held(instance.identity)


def release_held(identity: str, now=None) -> int:
    """Sends of ``identity`` held for the next day try again now (the schedule grew, ended or changed);
    those still over the allowance are held again. Returns how many.

    Held sends are parked until the next day's start (plus the engine's slot
    margin, under a second): a send parked for a throttle slot is not touched.
    """
    now = now or timezone.now()
    boundary = next_day(now)
    return Send.objects.filter(
        parked=True, status=Send.Status.QUEUED, next_attempt_at__gte=boundary,
        next_attempt_at__lt=boundary + timedelta(seconds=1), campaign__from_email__iendswith="@" + identity,
    ).update(next_attempt_at=now)


# --- admission -------------------------------------------------------------------------

# Admit the ids not yet admitted today while the set holds fewer than the allowance; ids already in it
# are admitted again at no cost. KEYS: usage set, the day's set of groups; ARGV: allowance, ttl, group, ids...
_ADMIT = """
local cap = tonumber(ARGV[1])
local n = redis.call('SCARD', KEYS[1])
local out = {}
for i = 4, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then
    out[#out + 1] = ARGV[i]
  elseif n < cap then
    redis.call('SADD', KEYS[1], ARGV[i])
    n = n + 1
    out[#out + 1] = ARGV[i]
  end
end
if n > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return out
"""


_scripts = {}


def _admit_script():
    conn = throttle.client()
    if _scripts.get("client") is not conn:
        _scripts.update(client=conn, admit=conn.register_script(_ADMIT))
    return _scripts["admit"]


def _route(row):
    """The way this row goes: its routing rule's group, and the relay or source address it picks there."""
    try:
        return routing.route_for(row.domain, routing.target_for(row), routing.plan_for(row))
    except NoRoute:
        return None


def admit(rows, now=None):
    """Split claimed rows into (admitted, held, seconds until the held may try again).

    Held rows are over today's allowance of their identity and provider group;
    they wait for the next day, when the schedule (as the daily step left it)
    decides again.
    """
    limits = schedules.limits()
    if not limits or not rows:
        return rows, [], 0.0
    now = now or timezone.now()
    day = day_of(now)
    admitted, limited, routes, groups = [], {}, {}, {}
    for row in rows:
        way = (row.domain, routing.target_for(row))  # rows of one domain may leave from different addresses
        if way not in routes:
            routes[way] = _route(row)
        identity = identity_for(row, routes[way])
        if identity not in limits:
            admitted.append(row)
            continue
        if row.domain not in groups:
            groups[row.domain] = routing.group_of(row.domain)
        limited.setdefault((identity, groups[row.domain]), []).append(row)
    if not limited:
        return admitted, [], 0.0
    held = []
    for (identity, group), part in limited.items():
        granted = _admit_script()(keys=[usage_key(identity, group, day), groups_key(identity, day)],
                         args=[limits[identity], KEEP_SECONDS, group, *(r.id for r in part)])
        granted = {int(g) for g in granted}
        admitted.extend(r for r in part if r.id in granted)
        held.extend(r for r in part if r.id not in granted)
    return admitted, held, (next_day(now) - now).total_seconds()


# --- what the admin, the API and the daily step read -----------------------------------

def usage(identity: str, day) -> dict:
    """Group key -> messages admitted on ``day``."""
    r = throttle.client()
    groups = sorted(g.decode() for g in r.smembers(groups_key(identity, day)))
    if not groups:
        return {}
    pipe = r.pipeline()
    for group in groups:
        pipe.scard(usage_key(identity, group, day))
    return dict(zip(groups, pipe.execute(), strict=True))


def group_label(key: str) -> str:
    """A provider group named for people: a throttle's name, a provider or a recipient domain."""
    kind, _, rest = key.partition(":")
    if kind == "throttle":
        return DomainThrottle.objects.filter(pk=rest).values_list("name", flat=True).first() or key
    return rest or key


@dataclass
class Status:
    warmup: Warmup
    allowance: int | None
    usage: dict  # provider label -> messages today
    schedule: list  # every stage's volume


def status(warmup: Warmup, now=None) -> Status:
    day = day_of(now or timezone.now())
    used = {group_label(k): n for k, n in usage(warmup.identity, day).items()}
    preset = PRESETS.get(warmup.preset)
    return Status(warmup, allowance(warmup), used, preset.schedule() if preset else [])
