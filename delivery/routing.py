"""Where each message goes: routing rules choose a relay group, a group spreads its messages over its relays.

A group's relays share its messages by weight; a relay that is down (refused
connections, TLS or AUTH failures, a session refused again and again) hands
its share to the group's other relays until its health check lets it back
(delivery.health). A group may deliver direct to MX hosts instead, from a
pool of source addresses. With no rule, mail goes through the first enabled
relay by name, the others standing by in name order, or direct when none is
enabled.

Choosing costs no Redis or database round trip per message: the rules, groups
and relays are read once and kept until the relay generation (bumped on every
save) changes; relay health is read once per batch (see refresh).
"""

import dataclasses
import ipaddress
import logging
import time
from dataclasses import dataclass

from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from redis.exceptions import RedisError

from delivery import health, mtasts, mx, submitted
from delivery.models import Relay, RelayGroup, RoutingRule
from delivery.smtp import Endpoint
from delivery.throttle import Limit, rate_per_second, throttles
from delivery.throttle import client as throttle_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A local address direct delivery binds to, and the HELO name that goes with it."""

    address: str
    helo: str = ""


@dataclass(frozen=True)
class Target:
    """One way out: a relay, or direct (from a source address, or the machine's own)."""

    relay_id: int | None = None
    source: Source | None = None

    @property
    def direct(self):
        return self.relay_id is None


DIRECT = Target()


@dataclass
class Plan:
    """A relay group as routing uses it: its relays (in failover order) and weights, or direct with its sources."""

    name: str
    relays: list  # [Relay]
    direct: bool = False
    sources: tuple = ()
    weighted: bool = True  # False: the first healthy relay takes everything (no rule: the old single relay)

    def pick(self, n: int, down: set) -> Target:
        if self.direct or not self.relays:
            if self.sources:
                return Target(None, self.sources[_spread(n) % len(self.sources)])
            return DIRECT
        up = [r for r in self.relays if r.pk not in down] or self.relays  # all down: try them as before
        if not self.weighted:
            return Target(up[0].pk)
        total = sum(max(r.weight, 0) for r in up)
        if total <= 0:
            return Target(up[0].pk)
        at = _spread(n) % total
        for relay in up:
            at -= max(relay.weight, 0)
            if at < 0:
                return Target(relay.pk)
        return Target(up[-1].pk)

    def others_up(self, relay_id, down: set) -> bool:
        return any(r.pk != relay_id and r.pk not in down for r in self.relays)


def _spread(n: int) -> int:
    """A send id scattered evenly over 0..2**32 (Knuth's multiplicative hash): consecutive ids
    take every share in turn, so a group's weights hold on any run of messages."""
    return ((n * 2654435761) & 0xFFFFFFFF) >> 8


@dataclass
class Route:
    pool_key: str
    endpoints: list  # tried in order until one connects
    cap: int  # simultaneous connections across all workers
    idle_timeout: float
    max_messages: int
    relay: Relay | None
    relay_limit: Limit | None
    source: str | None = None  # the local address direct delivery binds to (None: a relay, or the machine's own)
    plan: Plan | None = None  # the group it was chosen from: where its messages go when the relay is down


class _State:
    """What routing reads from the database, kept until a relay, group or rule changes."""

    def __init__(self):
        self.at = 0.0
        self.generation = None
        self.checked = float("-inf")
        self.relays = {}  # pk -> enabled Relay
        self.rules = []  # [(from_domain, kind, provider, Plan)]
        self.default = Plan("default", [])
        self.by_key = {}  # (kind, from domain, recipient domain) -> Plan
        self.down = set()  # relay pks in backoff, as of the last health read
        self.marked = set()  # relay pks marked down, in backoff or being tried again
        self.health_at = float("-inf")
        self.from_domains = {}  # ("campaign" | "submitted", id) -> sending domain, for this batch
        self.kinds = {}  # outbound id -> "transactional" or "submitted", for this batch


_state = _State()
# Bumped whenever a relay, group or rule is saved or deleted, so every worker
# re-reads them at its next batch: a corrected password or certificate setting
# takes effect when the campaign is resumed, not seconds later.
RELAY_GENERATION_KEY = "herald:relay-generation"
# The generation and the relays' health are read once per batch or planning
# pass (see refresh), and at most this often in between: never once per row.
GENERATION_CHECK = 1.0
RELOAD_SECONDS = 5.0


def _generation():
    try:
        return throttle_client().get(RELAY_GENERATION_KEY)
    except RedisError:
        return None  # fall back to the time-based re-read


def refresh():
    """Start of a batch or a planning pass: the next look-up asks Redis whether a relay changed, and which are down."""
    _state.checked = float("-inf")
    _state.health_at = float("-inf")


def _load():
    relays = {r.pk: r for r in Relay.objects.filter(enabled=True).order_by("name", "pk")}
    plans = {}
    for group in RelayGroup.objects.prefetch_related("relays").order_by("name"):
        members = sorted((r for r in group.relays.all() if r.pk in relays), key=lambda r: (r.name, r.pk))
        if not group.direct and not members:
            continue  # every relay of it disabled: its rules are skipped, rather than send direct unasked
        sources = tuple(Source(a, h) for a, h in group.source_list()) if group.direct else ()
        plans[group.pk] = Plan(group.name, [relays[r.pk] for r in members], direct=group.direct, sources=sources)
    rules = [(rule.from_domain, rule.kind, rule.provider, plans[rule.group_id])
             for rule in RoutingRule.objects.filter(enabled=True).order_by("position", "pk") if rule.group_id in plans]
    _state.relays = relays
    _state.rules = [r for r in rules if r[0] or r[1] or r[2]]
    defaults = [r[3] for r in rules if not (r[0] or r[1] or r[2])]
    _state.default = defaults[0] if defaults else Plan("first enabled relay", list(relays.values()), weighted=False)
    _state.by_key = {}


def _current():
    now = time.monotonic()
    if now - _state.checked >= GENERATION_CHECK:
        _state.checked = now
        generation = _generation()
        if generation != _state.generation:
            _state.generation = generation
            _state.at = 0.0
    if now - _state.at > RELOAD_SECONDS:
        _load()
        _state.at = now
    if now - _state.health_at >= GENERATION_CHECK:
        _state.health_at = now
        marks = health.marks(_state.relays)
        wall = time.time()
        _state.marked = set(marks)
        _state.down = {pk for pk, till in marks.items() if till > wall}
    return _state


def down() -> set:
    """The relays in their backoff (as of this batch's health read)."""
    return _current().down


def active_relay():
    """The relay mail goes through when no rule picks another (the first enabled one by name), or None for direct."""
    plan = _current().default
    if plan.direct or not plan.relays:
        return None
    return plan.relays[0]


def forget_relay():
    _state.at = 0.0
    _state.checked = float("-inf")
    _state.health_at = float("-inf")


@receiver([post_save, post_delete], sender=Relay, dispatch_uid="herald-relay-generation")
@receiver([post_save, post_delete], sender=RelayGroup, dispatch_uid="herald-relay-group-generation")
@receiver([post_save, post_delete], sender=RoutingRule, dispatch_uid="herald-routing-rule-generation")
@receiver(m2m_changed, sender=RelayGroup.relays.through, dispatch_uid="herald-relay-group-members-generation")
def relay_changed(**kwargs):
    forget_relay()
    try:
        throttle_client().incr(RELAY_GENERATION_KEY)
    except RedisError:
        pass  # workers still re-read within seconds


def relay_endpoint(relay: Relay) -> Endpoint:
    return Endpoint(
        host=relay.host, port=relay.port, security=relay.security, verify=relay.verify_certificate,
        username=relay.username, password=relay.password, helo=relay.helo_name,
        label=f"{relay.host}:{relay.port}",
    )


# --- choosing a route for each message --------------------------------------------

def kind_of(row) -> str:
    """The message kind rules match: "campaign"; for a send without a campaign, "automation" (an automation's
    email step), "transactional" (the transactional API) or "submitted" (mail submitted over SMTP)."""
    if row.campaign_id is None:
        return _current().kinds.get(row.outbound_id) or submitted.kind_of(row.outbound_id, None)
    return getattr(row, "kind", "") or RoutingRule.Kind.CAMPAIGN


def prepare(rows):
    """Once per batch: the sending domains of these rows' campaigns and messages, when a rule needs them."""
    state = _current()
    state.from_domains, state.kinds = {}, {}
    by_domain = any(rule[0] for rule in state.rules)
    by_kind = any(rule[1] and rule[1] != RoutingRule.Kind.CAMPAIGN for rule in state.rules)
    if not (by_domain or by_kind):
        return
    from campaigns.models import Campaign

    campaigns = {r.campaign_id for r in rows if r.campaign_id} if by_domain else set()
    if campaigns:
        for pk, frozen, current in (Campaign.objects.filter(id__in=campaigns)
                                    .values_list("id", "frozen_content__from_email", "from_email")):
            state.from_domains["campaign", pk] = _domain_of(frozen or current)
    outbound = [r.outbound_id for r in rows if r.campaign_id is None and r.outbound_id]
    if outbound:
        for pk, (domain, tag) in submitted.senders(outbound).items():
            state.from_domains["submitted", pk] = (domain or "").lower()
            state.kinds[pk] = submitted.kind_of(pk, tag)


def _domain_of(address):
    return (address or "").rpartition("@")[2].strip().strip(">").lower()


def plan_for(row) -> Plan:
    state = _current()
    if not state.rules:
        return state.default
    if row.campaign_id is None:
        sender = state.from_domains.get(("submitted", row.outbound_id), "")
    else:
        sender = state.from_domains.get(("campaign", row.campaign_id), "")
    kind = kind_of(row)
    key = (kind, sender, row.domain)
    plan = state.by_key.get(key)
    if plan is None:
        plan = state.default
        for from_domain, rule_kind, provider, candidate in state.rules:
            if from_domain and from_domain != sender:
                continue
            if rule_kind and rule_kind != kind:
                continue
            if provider and provider not in (row.domain, _provider(row.domain)):
                continue
            plan = candidate
            break
        if len(state.by_key) > 50_000:
            state.by_key = {}
        state.by_key[key] = plan
    return plan


def _provider(domain):
    """A recipient domain's provider group: its provider rule's name, else its MX host set (DNS, cached)."""
    try:
        return mx.site(domain)
    except Exception:
        return domain


def target_for(row) -> Target:
    """Where this send goes: its rule's group, spread by weight over the relays that are up."""
    return plan_for(row).pick(row.id, _current().down)


def default_target() -> Target:
    """Where a message no rule picks goes (test sends, and planning before a send is claimed)."""
    state = _current()
    return state.default.pick(0, state.down)


def fail_over(route, why: str) -> bool:
    """A relay of ``route`` failed: mark it down; True when its group has another relay up to take its messages."""
    if route.relay is None:
        return False
    state = _current()
    health.mark_down(route.relay.pk, why)
    state.down.add(route.relay.pk)
    state.marked.add(route.relay.pk)
    plan = route.plan or state.default
    return plan.others_up(route.relay.pk, state.down)


def recovered(route):
    """A relay that was down answered again: its share comes back to it."""
    if route.relay is not None and route.relay.pk in _state.marked:
        health.mark_up(route.relay.pk)
        _state.down.discard(route.relay.pk)
        _state.marked.discard(route.relay.pk)


def noted(route, replies):
    """A relay's replies to one chunk of messages, kept for the admin: the last one, and every refusal."""
    if route.relay is not None and replies:
        keep = [r for r in replies[:-1] if r[0] is None or r[0] >= 400][-4:] + [replies[-1]]
        health.note(route.relay.pk, keep)


# --- limits and routes --------------------------------------------------------------

def _direct(target) -> bool:
    if target is None:
        return active_relay() is None
    return target.direct


def group_of(domain: str, target: Target | None = None) -> str:
    """The throttle group a domain belongs to; in direct mode domains of one provider, or sharing MX hosts, share one."""
    return limit_for(domain, target).key


def batch_key(domain: str, target: Target | None = None):
    """Rows a worker sends together. Through a relay, a throttle group's; in
    direct mode one recipient domain's, since a provider's group spans many
    MX host sets, and MTA-STS policies are per domain."""
    if _direct(target):
        return group_of(domain, target), domain
    return group_of(domain, target), None


def limit_for(domain: str, target: Target | None = None) -> Limit:
    """A domain group's limit. From a source address it is that address's own: providers count per sending IP."""
    if not _direct(target):
        return throttles.for_domain(domain)
    limit = throttles.for_domain(domain, group=mx.site(domain))
    if target is not None and target.source is not None:
        return dataclasses.replace(limit, key=f"{limit.key}@{target.source.address}")
    return limit


def route_for(domain: str, target: Target | None = None, plan: Plan | None = None) -> Route:
    """How to reach a domain. Through a relay, connections are the relay's (its
    cap holds); a domain throttle's connection cap applies to MX hosts in direct
    mode, where connections go to the destination itself (per source address)."""
    if target is None:
        target = default_target()
        plan = plan or _state.default
    relay = _current().relays.get(target.relay_id) if target.relay_id is not None else None
    if relay is not None:
        limit = Limit(f"relay:{relay.pk}", rate_per_second(relay.rate, relay.rate_period), max(relay.rate, 1))
        return Route(f"relay:{relay.pk}", [relay_endpoint(relay)], relay.max_connections, relay.idle_timeout,
                     relay.messages_per_connection, relay, limit, plan=plan)
    limit = limit_for(domain, target)
    endpoints = _mx_endpoints(domain)
    # One pool per exact MX host set: a provider's tenants share a limit, never
    # a connection; nor does a connection opened before an MTA-STS policy.
    key = "mx:" + mx.host_set(domain) + (":mta-sts" if endpoints[0].required_by else "")
    source = target.source
    if source is not None:
        endpoints = _from_source(endpoints, source)
        key += "@" + source.address
    return Route(key, endpoints, limit.max_connections or 5, 30, 100, None, None,
                 source=source.address if source else None, plan=plan)


def _from_source(endpoints, source):
    """The MX endpoints reachable from a source address (of its family), bound to it and greeting with its name."""
    family = ipaddress.ip_address(source.address).version
    same = [e for e in endpoints if _family(e.host) in (family, None)] or endpoints
    return [dataclasses.replace(e, source=source.address, helo=source.helo or e.helo,
                                label=f"{e.label} from {source.address}") for e in same]


def _family(host):
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _mx_endpoints(domain: str) -> list:
    """The MX hosts of a domain, opportunistic TLS (Postfix's "may") unless MTA-STS enforces verified TLS."""
    hosts = mx.hosts(domain)
    port = mx.port()
    policy = mtasts.policy_for(domain) if mtasts.enabled() else None
    if policy is not None and policy.mode == "testing":
        for name in {n for n, _ in hosts if not policy.allows(n)}:
            log.warning("MTA-STS (testing) of %s: MX host %s is not in its policy", domain, name)
    if policy is None or policy.mode != "enforce":
        # Opportunistic TLS, as Postfix's "may": the certificate is not checked
        # (in testing mode, checked and a failure reported, RFC 8461 5), and a
        # host whose STARTTLS fails gets the mail in plaintext.
        testing = policy is not None and policy.mode == "testing"
        return [
            Endpoint(host=a, port=port, security="opportunistic", verify=testing, tls_name=n, cafile=mtasts.cafile(),
                     label=f"{n} [{a}]:{port} (MX of {domain})",
                     report_to=f"MTA-STS policy of {domain} (testing)" if testing else "")
            for n, a in hosts
        ]
    allowed = [(n, a) for n, a in hosts if policy.allows(n)]
    if not allowed:
        raise mx.NoRoute(f"4.7.4 MTA-STS policy of {domain} names none of its MX hosts ({', '.join(n for n, _ in hosts)})")
    return [
        Endpoint(host=a, port=port, security="starttls", verify=True, tls_name=n, cafile=mtasts.cafile(),
                 label=f"{n} [{a}]:{port} (MX of {domain})", required_by=f"MTA-STS policy of {domain}")
        for n, a in allowed
    ]
