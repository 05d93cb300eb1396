"""Direct delivery: a recipient domain's MX hosts through dnspython, cached by TTL.

The resolver asks only the servers in HERALD_DNS_NAMESERVERS ("host:port")
when set, so tests answer from loopback and never touch real DNS. MX hosts are
ordered by preference (RFC 5321 5.1); a domain with no MX falls back to its own
A/AAAA records; a null MX (RFC 7505) means the domain accepts no mail. Only
what DNS answers is permanent (NXDOMAIN, null MX, no address at all): a
timeout or SERVFAIL defers, since a bounce would suppress the address.
"""

import threading
import time

import dns.exception
import dns.nameserver
import dns.resolver
from django.conf import settings

from delivery import providers


class NoRoute(Exception):
    """No host to deliver to; ``permanent`` when DNS says so (NXDOMAIN, null MX)."""

    def __init__(self, message, permanent=False):
        super().__init__(message)
        self.permanent = permanent


_cache = {}  # domain -> (expires, [mx names], [addresses])
_lock = threading.Lock()
NEGATIVE_TTL = 60
MIN_TTL = 5


def port() -> int:
    return getattr(settings, "HERALD_DIRECT_PORT", 25)


def resolver() -> dns.resolver.Resolver:
    servers = list(getattr(settings, "HERALD_DNS_NAMESERVERS", []) or [])
    if not servers:
        return dns.resolver.Resolver()
    res = dns.resolver.Resolver(configure=False)
    nameservers = []
    for item in servers:
        if item.startswith("["):
            host, _, p = item[1:].partition("]")
            p = p.lstrip(":")
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
        else:
            host, p = item, ""
        nameservers.append(dns.nameserver.Do53Nameserver(host, int(p) if p else 53))
    res.nameservers = nameservers
    res.timeout = res.lifetime = getattr(settings, "HERALD_DNS_TIMEOUT", 5)
    return res


def _addresses(res, name):
    """(addresses, ttl, transient): ``transient`` when a look-up timed out or failed (SERVFAIL), not answered."""
    addrs, ttl, transient = [], None, False
    for rdtype in ("A", "AAAA"):
        try:
            answer = res.resolve(name, rdtype)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        except dns.exception.DNSException:
            transient = True
            continue
        ttl = answer.rrset.ttl if ttl is None else min(ttl, answer.rrset.ttl)
        addrs.extend(r.address for r in answer)
    return addrs, ttl, transient


def _lookup(domain):
    res = resolver()
    try:
        answer = res.resolve(domain, "MX")
        records = sorted(answer, key=lambda r: (r.preference, str(r.exchange)))
        ttl = answer.rrset.ttl
        names = [str(r.exchange).rstrip(".").lower() for r in records]
        if names == [""]:
            raise NoRoute(f"{domain} accepts no mail (null MX, RFC 7505)", permanent=True)
    except dns.resolver.NXDOMAIN:
        raise NoRoute(f"domain {domain} does not exist", permanent=True) from None
    except dns.resolver.NoAnswer:
        names, ttl = [domain], None  # implicit MX: the domain itself (RFC 5321 5.1)
    except dns.exception.DNSException as exc:
        raise NoRoute(f"DNS lookup of {domain} failed: {exc}") from None
    hosts, transient = [], False
    for name in names:
        found, attl, failed = _addresses(res, name)
        transient = transient or failed
        if attl is not None:
            ttl = attl if ttl is None else min(ttl, attl)
        hosts.extend((name, a) for a in found if a not in {h[1] for h in hosts})
    if not hosts:
        # Only DNS saying so is permanent: a timeout or SERVFAIL is a deferral,
        # never a bounce and a suppression.
        why = "DNS look-up timed out or failed" if transient else "no address"
        raise NoRoute(f"{why} for the mail hosts of {domain} ({', '.join(names)})",
                      permanent=names == [domain] and not transient)
    return names, hosts, max(ttl or NEGATIVE_TTL, MIN_TTL)


def _cached(domain):
    """([MX names by preference], [(MX name, address)] in that order), cached for the records' TTL."""
    domain = domain.lower().rstrip(".")
    now = time.monotonic()
    with _lock:
        hit = _cache.get(domain)
    if hit and hit[0] > now:
        if isinstance(hit[1], NoRoute):
            raise hit[1]
        return hit[1], hit[2]
    try:
        names, hosts, ttl = _lookup(domain)
    except NoRoute as exc:
        with _lock:
            _cache[domain] = (now + (NEGATIVE_TTL if exc.permanent else MIN_TTL), exc, None)
        raise
    with _lock:
        _cache[domain] = (now + ttl, names, hosts)
    return names, hosts


def lookup(domain: str):
    """([MX names by preference], [addresses in that order]), cached for the records' TTL."""
    names, hosts = _cached(domain)
    return names, [address for _, address in hosts]


def hosts(domain: str):
    """[(MX name, address)] by preference: the name is what a certificate must match."""
    return _cached(domain)[1]


def resolve(domain: str):
    return lookup(domain)[1]


def host_set(domain: str) -> str:
    """The exact MX host set behind a domain (what one pool of connections may serve)."""
    try:
        names, _ = lookup(domain)
    except NoRoute:
        return domain
    return ",".join(sorted(set(names)))


def site(domain: str) -> str:
    """The throttle group of a domain in direct mode: its provider when an MX
    host matches a provider rule (every Microsoft 365 tenant has an MX host of
    its own), else its MX host set (gmail.com and googlemail.com share one)."""
    try:
        names, _ = lookup(domain)
    except NoRoute:
        return domain
    return providers.provider_of(names) or ",".join(sorted(set(names)))


def clear_cache():
    with _lock:
        _cache.clear()
