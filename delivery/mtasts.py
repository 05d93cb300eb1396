"""MTA-STS (RFC 8461): a recipient domain that publishes a policy gets verified TLS or nothing.

Discovery: a TXT record ``_mta-sts.<domain>`` (``v=STSv1; id=...``), then the
policy over HTTPS from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
(HERALD_MTA_STS_POLICY_URL_TEMPLATE; HERALD_MTA_STS_CA_FILE, tests point both
at loopback; that bundle also checks the MX certificates). Policies are kept in Redis for their max_age, bounded by
HERALD_MTA_STS_MAX_CACHE, and fetched again when the TXT id changes. A policy
that cannot be fetched, with none cached, counts as no policy (RFC 8461 5.1).
"""

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass

import dns.exception
import dns.resolver
import requests
from django.conf import settings

from delivery import mx, throttle

log = logging.getLogger(__name__)

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3
FETCH_TIMEOUT = 10
NEGATIVE_TTL = 300  # no TXT record, or a policy that could not be fetched
_TXT = re.compile(r"^v=STSv1;(.*)$")
_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")

_txt_cache = {}  # domain -> (expires, id or None)
_lock = threading.Lock()


@dataclass
class Policy:
    id: str
    mode: str  # enforce | testing | none
    mx: list
    max_age: int

    def allows(self, host: str) -> bool:
        """Whether an MX host name matches one of the policy's ``mx`` patterns (RFC 8461 4.1)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def enabled() -> bool:
    return getattr(settings, "HERALD_MTA_STS", True)


def cafile() -> str:
    """The CA bundle for policy servers and for MX certificates under a policy ("": the system's)."""
    return getattr(settings, "HERALD_MTA_STS_CA_FILE", "")


def _key(domain):
    return throttle.PREFIX + "mta-sts:" + domain


def _txt_id(domain):
    """The policy id published in DNS; None when there is none; raises on a DNS failure."""
    now = time.monotonic()
    with _lock:
        hit = _txt_cache.get(domain)
    if hit and hit[0] > now:
        return hit[1]
    ident, ttl = None, NEGATIVE_TTL
    try:
        answer = mx.resolver().resolve(f"_mta-sts.{domain}", "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        pass
    except dns.exception.DNSException:
        # Not asked again on every batch while DNS is in trouble.
        with _lock:
            _txt_cache[domain] = (now + mx.NEGATIVE_TTL, None)
        raise
    else:
        ttl = answer.rrset.ttl
        records = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        found = [m.group(1) for m in map(_TXT.match, records) if m]
        if len(found) == 1:  # more than one STSv1 record: as if none (RFC 8461 3.1)
            fields = dict(part.strip().partition("=")[::2] for part in found[0].split(";") if part.strip())
            ident = fields.get("id") or None
    with _lock:
        _txt_cache[domain] = (now + max(ttl, mx.MIN_TTL), ident)
    return ident


def parse(text: str, ident: str) -> Policy:
    """A policy from its file (RFC 8461 3.2); ValueError when it is not a valid one."""
    fields, patterns = {}, []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "mx":
            patterns.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    mode = fields.get("mode", "")
    if fields.get("version") != "STSv1" or mode not in ("enforce", "testing", "none"):
        raise ValueError("not an STSv1 policy")
    if not fields.get("max_age", "").isdigit():
        raise ValueError("max_age missing")
    if mode != "none" and not patterns:
        raise ValueError("no mx patterns")
    return Policy(ident, mode, patterns, int(fields["max_age"]))


def fetch(domain: str, ident: str) -> Policy:
    """Fetch a policy over HTTPS with a verified certificate; no redirects (RFC 8461 3.3)."""
    template = getattr(settings, "HERALD_MTA_STS_POLICY_URL_TEMPLATE", "https://mta-sts.{domain}/.well-known/mta-sts.txt")
    with requests.get(template.format(domain=domain), timeout=FETCH_TIMEOUT, allow_redirects=False,
                      verify=cafile() or True, stream=True) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        if response.headers.get("Content-Type", "").split(";")[0].strip().lower() != "text/plain":
            raise ValueError("policy is not text/plain")
        body = response.raw.read(MAX_POLICY_BYTES + 1, decode_content=True)
    if len(body) > MAX_POLICY_BYTES:
        raise ValueError("policy too large")
    return parse(body.decode("utf-8", "replace"), ident)


def _cached(domain):
    try:
        raw = throttle.client().get(_key(domain))
    except Exception:
        return None
    if not raw:
        return None
    try:
        return Policy(**json.loads(raw))
    except (ValueError, TypeError):
        return None


def _store(domain, policy):
    cap = getattr(settings, "HERALD_MTA_STS_MAX_CACHE", 7 * 86400)
    try:
        throttle.client().set(_key(domain), json.dumps(asdict(policy)), ex=max(1, min(policy.max_age, cap)))
    except Exception:
        pass


def policy_for(domain: str) -> Policy | None:
    """The domain's MTA-STS policy, or None when it has none (or none could be had)."""
    try:
        domain = domain.lower().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _HOSTNAME.match(domain):
        return None  # never a URL or a DNS name built from anything but host name labels
    cached = _cached(domain)
    try:
        ident = _txt_id(domain)
    except dns.exception.DNSException:
        return cached  # DNS trouble must not strip a known policy
    if ident is None or (cached is not None and cached.id == ident):
        # A cached policy outlives its TXT record (RFC 8461 5.1): a removed
        # record may be an attacker's doing.
        return cached
    try:
        policy = fetch(domain, ident)
    except (requests.RequestException, ValueError, OSError) as exc:
        log.warning("MTA-STS policy of %s could not be fetched: %s", domain, exc)
        if cached is None:
            with _lock:
                _txt_cache[domain] = (time.monotonic() + NEGATIVE_TTL, None)
        return cached
    _store(domain, policy)
    return policy


def clear_cache():
    with _lock:
        _txt_cache.clear()
