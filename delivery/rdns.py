"""Does each source address's reverse DNS give the HELO name it greets with, and that name the address?

Gmail, Yahoo and Microsoft refuse or junk bulk mail from an address without
forward-confirmed reverse DNS (a PTR record whose name resolves back to the
address), and many receivers compare it with the HELO name. The admin and the
API warn about a source address that fails either; sending is not blocked, as
DNS may only lag behind. Look-ups go through delivery.mx's resolver, so
HERALD_DNS_NAMESERVERS points them (and tests) at chosen servers.
"""

import ipaddress

import dns.exception
import dns.resolver
import dns.reversename

from delivery import mx


def _names(address, res):
    answer = res.resolve(dns.reversename.from_address(address), "PTR")
    return [str(r.target).rstrip(".").lower() for r in answer]


def _addresses(name, res):
    found = []
    for rdtype in ("A", "AAAA"):
        try:
            found.extend(r.address for r in res.resolve(name, rdtype))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
    return found


def problems(sources, res=None) -> list[str]:
    """Warnings, one per source address [(address, HELO name)] whose HELO name and reverse DNS disagree."""
    res = res or mx.resolver()
    out = []
    for address, helo in sources:
        helo = (helo or "").rstrip(".").lower()
        if not helo:
            out.append(f"{address}: no HELO name given; name the one its reverse DNS gives")
            continue
        try:
            names = _names(address, res)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            out.append(f"{address}: no reverse DNS (PTR) record; receivers expect one naming {helo}")
            continue
        except dns.exception.DNSException as exc:
            out.append(f"{address}: reverse DNS not checked ({exc.__class__.__name__})")
            continue
        if helo not in names:
            out.append(f"{address}: HELO name {helo} does not match its reverse DNS ({', '.join(names)})")
            continue
        try:
            forward = _addresses(helo, res)
        except dns.exception.DNSException as exc:
            out.append(f"{address}: {helo} not resolved ({exc.__class__.__name__})")
            continue
        if ipaddress.ip_address(address) not in {ipaddress.ip_address(a) for a in forward}:
            out.append(f"{address}: its reverse DNS names {helo}, which does not resolve back to it")
    return out
