"""The circuit breaker: a campaign pauses itself before it burns its sender's reputation.

Two breakers watch every outcome that speaks against the sender: one per
campaign, and one per sending domain (the From domain, across its campaigns).
Once a sample of at least HERALD_BREAKER_MIN_SAMPLE sends has a final answer,
a breaker trips when

- hard bounces exceed HERALD_BREAKER_HARD_BOUNCE_PERCENT of the attempts, as
  estimated for the whole campaign: each recipient domain's rate weighted by
  its share of the recipients (so a small throttled domain whose answers come
  first does not speak for the rest), a domain with few answers counting as
  if it had ESTIMATE_PRIOR more good ones,
- complaints exceed HERALD_BREAKER_COMPLAINT_PERCENT of the deliveries, or
- policy blocks from one provider (a throttle group: the MX provider in direct
  mode, a DomainThrottle's domains through a relay) exceed
  HERALD_BREAKER_POLICY_PERCENT of the attempts to that provider, which must
  make a sample of its own: a block from a provider mailed twice says little.

The figures mean what the statistics page means (tracking.stats): an attempt
is a send with a final answer (sent, bounced or failed); a hard bounce is a
send refused as unknown while sending, or accepted and then reported so by a
hard bounce; a delivery is a send accepted with no bounce report since; a
complaint is a send with a complaint. A campaign trip pauses the campaign; a
sending-domain trip pauses every running campaign from that domain. Each trip
is a BreakerTrip row and an audit entry, and the campaign's status reason
names the figures. Resuming needs an operator's acknowledgement of them; the
breaker's sample then starts again from that moment, so the figures already
acknowledged cannot trip it again. The sending domain's sample covers the last
DOMAIN_WINDOW and starts again at any acknowledgement of one of its campaigns.

Cost: nothing is computed for a good outcome. A bad one increments a Redis
counter per breaker and metric, and the figures (aggregate queries over the
sends and events of the sample) are computed only when that counter reaches a
bound: the number of bad outcomes that could trip the breaker, given the
sample last counted. Samples only grow, so no trip is missed between two
evaluations, and a campaign far below its thresholds is evaluated a few times
in all rather than at every bounce. Bounds expire after BOUND_SECONDS, since
the sending domain's window slides.
"""

import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Q
from django.dispatch import receiver
from django.utils import timezone

from campaigns import audit
from campaigns.models import Campaign
from delivery import lifecycle, routing, throttle
from delivery.models import DomainThrottle, Send
from delivery.signals import resuming
from tracking.models import BreakerTrip, Event

log = logging.getLogger(__name__)

PREFIX = throttle.PREFIX + "breaker:"
BOUND_SECONDS = 60
LOCK_SECONDS = 5
DOMAIN_WINDOW = timedelta(hours=24)
FINAL_ANSWERS = ("sent", "bounced", "failed")
NEVER_ANSWERED = ("cancelled", "skipped")
# A domain's hard-bounce rate counts ESTIMATE_PRIOR more good answers than it has: a domain not yet
# answered counts as clean, and one with a handful of answers cannot swing the estimate alone.
ESTIMATE_PRIOR = 10
NON_DELIVERY = [Event.Type.BOUNCE, Event.Type.SOFT_BOUNCE, Event.Type.REJECTED]
M = BreakerTrip.Metric


def thresholds() -> dict:
    """Percent per metric, from the settings."""
    return {M.HARD_BOUNCE: settings.HERALD_BREAKER_HARD_BOUNCE_PERCENT,
            M.COMPLAINT: settings.HERALD_BREAKER_COMPLAINT_PERCENT,
            M.POLICY: settings.HERALD_BREAKER_POLICY_PERCENT}


def min_sample() -> int:
    return settings.HERALD_BREAKER_MIN_SAMPLE


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().strip(">").lower()


def provider_of(domain: str) -> str:
    """The provider a recipient domain belongs to, named for people: its throttle group."""
    key = routing.group_of(domain)
    if key.startswith("throttle:"):
        name = DomainThrottle.objects.filter(pk=key.partition(":")[2]).values_list("name", flat=True).first()
        return name or domain
    return key.removeprefix("domain:")


# --- the figures -------------------------------------------------------------------

@dataclass
class Figures:
    attempts: int = 0
    delivered: int = 0
    hard: int = 0
    complaints: int = 0
    policy: dict = field(default_factory=dict)  # provider -> (blocks, attempts to it)
    # The campaign's hard-bounce rate as estimated from each domain's, weighted by its share of the recipients.
    hard_rate: float = 0.0
    # The most one more hard bounce can raise hard_rate by.
    hard_step: float = 0.0


def _estimate(out, recipients, attempts, hard):
    """Fill in ``hard_rate`` and ``hard_step`` from per-domain recipients, attempts and hard bounces.

    hard_rate = sum over domains of share * hard / (attempts + ESTIMATE_PRIOR). A good answer only
    lowers it and a hard bounce at a domain raises it by at most share / (attempts + ESTIMATE_PRIOR),
    so hard_step bounds what the bounces to come can add.
    """
    total = sum(recipients.values())
    if not total:
        return
    for domain, n in recipients.items():
        share, seen = n / total, attempts.get(domain, 0) + ESTIMATE_PRIOR
        out.hard_rate += share * hard.get(domain, 0) / seen
        out.hard_step = max(out.hard_step, share / seen)


def figures(campaign_ids, since=None) -> Figures:
    """The breaker's figures over the sends of ``campaign_ids`` answered (and events recorded) since ``since``."""
    sends = Send.objects.filter(campaign_id__in=campaign_ids, status__in=FINAL_ANSWERS)
    events = Event.objects.filter(campaign_id__in=campaign_ids, send__isnull=False)
    if since is not None:
        sends = sends.filter(updated_at__gte=since)
        events = events.filter(created_at__gte=since)
    by_domain, hard_by_domain, out = {}, {}, Figures()
    for row in sends.values("domain", "status").annotate(n=Count("id")).order_by():
        by_domain[row["domain"]] = by_domain.get(row["domain"], 0) + row["n"]
        out.attempts += row["n"]
        if row["status"] == Send.Status.SENT:
            out.delivered += row["n"]
        elif row["status"] == Send.Status.BOUNCED:
            out.hard += row["n"]
            hard_by_domain[row["domain"]] = hard_by_domain.get(row["domain"], 0) + row["n"]
    late = events.filter(send__status=Send.Status.SENT).values("send__domain").annotate(
        hard=Count("send", distinct=True, filter=Q(type=Event.Type.BOUNCE)),
        undelivered=Count("send", distinct=True, filter=Q(type__in=NON_DELIVERY)),
    ).order_by()
    for row in late:
        out.hard += row["hard"]
        out.delivered -= row["undelivered"]
        hard_by_domain[row["send__domain"]] = hard_by_domain.get(row["send__domain"], 0) + row["hard"]
    recipients = (Send.objects.filter(campaign_id__in=campaign_ids).exclude(status__in=NEVER_ANSWERED)
                  .values("domain").annotate(n=Count("id")).order_by())
    _estimate(out, {row["domain"]: row["n"] for row in recipients}, by_domain, hard_by_domain)
    out.complaints = events.filter(type=Event.Type.COMPLAINT).aggregate(n=Count("send", distinct=True))["n"]
    blocked = (events.filter(type=Event.Type.REJECTED).exclude(source="suppression")
               .values("send__domain").annotate(n=Count("send", distinct=True)).order_by())
    blocked = {row["send__domain"]: row["n"] for row in blocked}
    if blocked:
        providers = {}
        for domain, n in by_domain.items():
            name = provider_of(domain)
            blocks, tried = providers.get(name, (0, 0))
            providers[name] = (blocks + blocked.get(domain, 0), tried + n)
        out.policy = {name: value for name, value in providers.items() if value[0]}
    return out


@dataclass
class Verdict:
    metric: str
    count: int
    base: int
    threshold: float
    provider: str = ""
    estimate: float | None = None  # the hard-bounce rate weighted by each domain's share of the recipients

    @property
    def rate(self):
        if self.estimate is not None:
            return self.estimate
        return self.count / self.base if self.base else 0.0

    def describe(self):
        what = {M.HARD_BOUNCE: "hard bounces", M.COMPLAINT: "complaints",
                M.POLICY: f"policy blocks by {self.provider}"}[self.metric]
        of = "deliveries" if self.metric == M.COMPLAINT else ("attempts to it" if self.metric == M.POLICY else "attempts")
        if self.estimate is not None:
            return (f"{what} {self.count} of {self.base} {of}, an estimated {self.estimate * 100:.2f} % of all "
                    f"recipients with each domain's rate weighted by its share of the recipients, "
                    f"over the limit of {self.threshold:g} %")
        return f"{what} {self.count} of {self.base} {of} ({self.rate * 100:.2f} %), over the limit of {self.threshold:g} %"


def _over(count, base, percent):
    return base > 0 and count * 100 > percent * base


def judge(f: Figures) -> Verdict | None:
    """The first limit the figures exceed, or None; nothing trips below the minimum sample."""
    limits, sample = thresholds(), min_sample()
    if f.attempts >= sample:
        if f.hard_rate * 100 > limits[M.HARD_BOUNCE]:
            return Verdict(M.HARD_BOUNCE, f.hard, f.attempts, limits[M.HARD_BOUNCE], estimate=f.hard_rate)
        if _over(f.complaints, f.delivered, limits[M.COMPLAINT]):
            return Verdict(M.COMPLAINT, f.complaints, f.delivered, limits[M.COMPLAINT])
    for name, (blocks, tried) in sorted(f.policy.items(), key=lambda item: -item[1][0]):
        if tried >= sample and _over(blocks, tried, limits[M.POLICY]):
            return Verdict(M.POLICY, blocks, tried, limits[M.POLICY], name)
    return None


def _needed(count, base, percent, floor=0):
    """How many more bad outcomes could trip a limit whose base will be at least max(``base``, ``floor``)."""
    least = math.floor(percent * max(base, floor) / 100) + 1
    return max(1, least - count)


def _needed_estimate(f: Figures, percent):
    """How many more hard bounces could lift the estimated rate over ``percent``: each adds at most hard_step."""
    if not f.hard_step:
        return 1
    return max(1, math.ceil((percent / 100 - f.hard_rate) / f.hard_step - 1e-9))


def _slack(f: Figures) -> dict:
    """Per counter: the bad outcomes to come before the figures are worth counting again."""
    limits = thresholds()
    # Attempts reach the minimum sample before a trip; deliveries need not.
    out = {M.HARD_BOUNCE: _needed_estimate(f, limits[M.HARD_BOUNCE]),
           M.COMPLAINT: _needed(f.complaints, max(f.delivered, 0), limits[M.COMPLAINT])}
    for name, (blocks, tried) in f.policy.items():
        out[f"{M.POLICY}:{name}"] = _needed(blocks, tried, limits[M.POLICY], min_sample())
    return out


# --- the breakers ------------------------------------------------------------------

class Breaker:
    """One breaker: a campaign's, or a sending domain's."""

    def __init__(self, scope, key, campaign_id=None, domain=""):
        self.scope, self.campaign_id, self.domain = scope, campaign_id, domain
        self.redis_key = f"{PREFIX}{scope}:{key}"

    @classmethod
    def of_campaign(cls, campaign_id):
        return cls(BreakerTrip.Scope.CAMPAIGN, campaign_id, campaign_id=campaign_id)

    @classmethod
    def of_domain(cls, domain):
        return cls(BreakerTrip.Scope.DOMAIN, domain, domain=domain)

    def campaigns(self, now):
        if self.scope == BreakerTrip.Scope.CAMPAIGN:
            return Campaign.objects.filter(pk=self.campaign_id)
        return Campaign.objects.filter(from_email__iendswith="@" + self.domain).filter(
            Q(status__in=[Campaign.Status.SENDING, Campaign.Status.PAUSED]) | Q(finished_at__gte=now - DOMAIN_WINDOW))

    def since(self, ids, now):
        """The start of the sample: the last acknowledgement (and, for a domain, DOMAIN_WINDOW ago)."""
        acked = BreakerTrip.objects.filter(campaign_id__in=ids).aggregate(at=Max("acknowledged_at"))["at"]
        if self.scope == BreakerTrip.Scope.CAMPAIGN:
            return acked
        return max(acked, now - DOMAIN_WINDOW) if acked else now - DOMAIN_WINDOW

    def count(self, counter) -> bool:
        """Count one bad outcome; True when the figures are worth computing now."""
        r = throttle.client()
        seen = r.incr(f"{self.redis_key}:n:{counter}")
        r.expire(f"{self.redis_key}:n:{counter}", 2 * 86400)
        bound = r.get(f"{self.redis_key}:bound:{counter}")
        return bound is None or seen >= int(bound)

    def seen(self, counters) -> dict:
        if not counters:
            return {}
        values = throttle.client().mget([f"{self.redis_key}:n:{c}" for c in counters])
        return {c: int(v or 0) for c, v in zip(counters, values, strict=True)}

    def evaluate(self, now=None):
        """Compute the figures; trip when they exceed a limit, else set the bounds of the next look."""
        r = throttle.client()
        if not r.set(f"{self.redis_key}:lock", "1", nx=True, ex=LOCK_SECONDS):
            return None  # another worker is counting the same sample
        try:
            now = now or timezone.now()
            campaigns = dict(self.campaigns(now).values_list("id", "status"))
            if Campaign.Status.SENDING not in campaigns.values():
                return None  # nothing left to pause: a late report of a finished or paused campaign
            ids = list(campaigns)
            # Read before counting: outcomes recorded meanwhile make the bound lower, never higher.
            seen = self.seen([M.HARD_BOUNCE, M.COMPLAINT])
            f = figures(ids, self.since(ids, now))
            verdict = judge(f)
            if verdict is not None:
                self.trip(verdict, ids)
            slack = _slack(f)
            seen.update(self.seen([c for c in slack if c not in seen]))
            pipe = r.pipeline()
            for counter, more in slack.items():
                pipe.set(f"{self.redis_key}:bound:{counter}", seen[counter] + more, ex=BOUND_SECONDS)
            pipe.execute()
            return verdict
        finally:
            r.delete(f"{self.redis_key}:lock")

    def trip(self, verdict, ids):
        if self.scope == BreakerTrip.Scope.CAMPAIGN:
            reason = f"Circuit breaker: {verdict.describe()}."
        else:
            reason = f"Circuit breaker of the sending domain {self.domain}: {verdict.describe()}, across its campaigns."
        reason += " Resuming needs an acknowledgement of these figures."
        running = Campaign.objects.filter(pk__in=ids, status=Campaign.Status.SENDING).values_list("id", flat=True)
        for campaign_id in running:
            # The pause, its figures and the audit entry are seen together or not at all.
            with transaction.atomic():
                try:
                    campaign = lifecycle.pause_campaign(campaign_id, reason)
                except lifecycle.LifecycleError:
                    continue  # paused, cancelled or finished meanwhile
                BreakerTrip.objects.create(
                    campaign=campaign, scope=self.scope, domain=self.domain or domain_of(campaign.from_email),
                    metric=verdict.metric, provider=verdict.provider, count=verdict.count, base=verdict.base,
                    rate=verdict.rate, threshold=verdict.threshold, reason=reason,
                )
                audit.record("campaign.breaker_trip", campaign, scope=self.scope, metric=str(verdict.metric),
                             provider=verdict.provider, count=verdict.count, base=verdict.base,
                             rate=round(verdict.rate, 6), threshold=verdict.threshold, reason=reason)
            log.warning("campaign %s paused: %s", campaign_id, reason)

    def reset(self):
        """Forget the counters: the sample starts again."""
        r = throttle.client()
        keys = list(r.scan_iter(match=f"{self.redis_key}:*", count=1000))
        if keys:
            r.delete(*keys)


_from_domains = {}  # campaign id -> From domain (fixed once a campaign sends)


def _from_domain(campaign_id):
    if campaign_id not in _from_domains:
        if len(_from_domains) > 1024:
            _from_domains.clear()
        address = Campaign.objects.filter(pk=campaign_id).values_list("from_email", flat=True).first() or ""
        _from_domains[campaign_id] = domain_of(address)
    return _from_domains[campaign_id]


def counter_of(event) -> str | None:
    """Which breaker counter a new Event feeds, or None when it says nothing against the sender."""
    if event.send_id is None or event.campaign_id is None:
        return None
    if event.type == Event.Type.BOUNCE:
        return M.HARD_BOUNCE
    if event.type == Event.Type.COMPLAINT:
        return M.COMPLAINT
    if event.type == Event.Type.REJECTED and event.source != "suppression":
        return f"{M.POLICY}:{provider_of(event.send.domain)}"
    return None


def observe(event):
    """Count a new Event against its campaign's and its sending domain's breakers; evaluate when due.

    Never raises: the breaker must not stop a report from being recorded.
    """
    try:
        counter = counter_of(event)
        if counter is None:
            return
        breakers = [Breaker.of_campaign(event.campaign_id)]
        domain = _from_domain(event.campaign_id)
        if domain:
            breakers.append(Breaker.of_domain(domain))
        for breaker in breakers:
            if breaker.count(counter):
                breaker.evaluate()
    except Exception:
        log.exception("circuit breaker: could not evaluate event %s", getattr(event, "pk", None))


# --- acknowledgement -----------------------------------------------------------------

def pending(campaign) -> list:
    """The campaign's trips not yet acknowledged."""
    return list(BreakerTrip.objects.filter(campaign=campaign, acknowledged_at__isnull=True).order_by("created_at"))


@receiver(resuming, dispatch_uid="tracking.breaker.resuming")
def require_acknowledgement(sender, campaign, acknowledge=False, **kwargs):
    """A campaign the breaker paused resumes only once an operator acknowledges the figures."""
    trips = pending(campaign)
    if not trips:
        return
    if not acknowledge:
        raise lifecycle.AcknowledgementRequired(
            f"campaign {campaign.pk} was paused by the circuit breaker: {trips[-1].reason} "
            "To resume, acknowledge these figures (API: POST {\"acknowledge\": true}; admin: tick the confirmation; "
            "command line: send_campaign --resume --acknowledge)."
        )
    entry = audit.record("campaign.breaker_acknowledge", campaign, reasons=[t.reason for t in trips])
    BreakerTrip.objects.filter(pk__in=[t.pk for t in trips]).update(
        acknowledged_at=entry.at,
        acknowledged_by=entry.actor or entry.via,
    )
    Breaker.of_campaign(campaign.pk).reset()
    domain = domain_of(campaign.from_email)
    if domain:
        Breaker.of_domain(domain).reset()
