"""Where a recipient's mail goes: through the first enabled relay, or straight to its MX hosts."""

import logging
import time
from dataclasses import dataclass

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from redis.exceptions import RedisError

from delivery import mtasts, mx
from delivery.models import Relay
from delivery.smtp import Endpoint
from delivery.throttle import Limit, rate_per_second, throttles
from delivery.throttle import client as throttle_client

log = logging.getLogger(__name__)


@dataclass
class Route:
    pool_key: str
    endpoints: list  # tried in order until one connects
    cap: int  # simultaneous connections across all workers
    idle_timeout: float
    max_messages: int
    relay: Relay | None
    relay_limit: Limit | None


_relay_cache = {"at": 0.0, "relay": None, "generation": None, "checked": float("-inf")}
# Bumped whenever a relay is saved or deleted, so every worker re-reads the
# relay at its next batch: a corrected password or certificate setting takes
# effect when the campaign is resumed, not seconds later.
RELAY_GENERATION_KEY = "herald:relay-generation"
# The generation is read once per batch or planning pass (see refresh), and at
# most this often in between: never once per row.
GENERATION_CHECK = 1.0


def _generation():
    try:
        return throttle_client().get(RELAY_GENERATION_KEY)
    except RedisError:
        return None  # fall back to the time-based re-read


def refresh():
    """Start of a batch or a planning pass: the next look-up asks Redis whether a relay changed."""
    _relay_cache["checked"] = float("-inf")


def active_relay():
    """The first enabled relay by name (re-read when a relay changes, or every few seconds), or None for direct delivery."""
    now = time.monotonic()
    if now - _relay_cache["checked"] >= GENERATION_CHECK:
        _relay_cache["checked"] = now
        generation = _generation()
        if generation != _relay_cache["generation"]:
            _relay_cache["generation"] = generation
            _relay_cache["at"] = 0.0
    if now - _relay_cache["at"] > 5:
        _relay_cache["relay"] = Relay.objects.filter(enabled=True).order_by("name", "pk").first()
        _relay_cache["at"] = now
    return _relay_cache["relay"]


def forget_relay():
    _relay_cache["at"] = 0.0
    _relay_cache["checked"] = float("-inf")


@receiver([post_save, post_delete], sender=Relay, dispatch_uid="herald-relay-generation")
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


def group_of(domain: str) -> str:
    """The throttle group a domain belongs to; in direct mode domains of one provider, or sharing MX hosts, share one."""
    if active_relay() is None:
        return throttles.for_domain(domain, group=mx.site(domain)).key
    return throttles.for_domain(domain).key


def batch_key(domain: str):
    """Rows a worker sends together. Through a relay, a throttle group's; in
    direct mode one recipient domain's, since a provider's group spans many
    MX host sets, and MTA-STS policies are per domain."""
    if active_relay() is None:
        return group_of(domain), domain
    return group_of(domain), None


def limit_for(domain: str) -> Limit:
    if active_relay() is None:
        return throttles.for_domain(domain, group=mx.site(domain))
    return throttles.for_domain(domain)


def route_for(domain: str) -> Route:
    """How to reach a domain. Through a relay, connections are the relay's (its
    cap holds); a domain throttle's connection cap applies to MX hosts in direct
    mode, where connections go to the destination itself."""
    relay = active_relay()
    if relay is not None:
        limit = Limit(f"relay:{relay.pk}", rate_per_second(relay.rate, relay.rate_period), max(relay.rate, 1))
        return Route(f"relay:{relay.pk}", [relay_endpoint(relay)], relay.max_connections, relay.idle_timeout,
                     relay.messages_per_connection, relay, limit)
    limit = limit_for(domain)
    endpoints = _mx_endpoints(domain)
    # One pool per exact MX host set: a provider's tenants share a limit, never
    # a connection; nor does a connection opened before an MTA-STS policy.
    key = "mx:" + mx.host_set(domain) + (":mta-sts" if endpoints[0].required_by else "")
    return Route(key, endpoints, limit.max_connections or 5, 30, 100, None, None)


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
