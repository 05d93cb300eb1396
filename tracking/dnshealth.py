"""Whether each sending domain publishes the SPF, DKIM and DMARC records mailbox providers look for.

Checked with dnspython through the resolver the send engine uses
(HERALD_DNS_NAMESERVERS), and cached for an hour, since DNS changes slowly and
the dashboard is loaded often; the dashboard's "Check again" button forgets
the cached answer.
"""

import dns.exception
import dns.resolver
from django.core.cache import cache

from delivery import mx
from delivery.dkim import txt_value
from delivery.models import SendingDomain

CACHE_SECONDS = 3600
CACHE_KEY = "herald:dnshealth:{}"


def _txt(res, name):
    """The TXT strings at ``name``; [] when there are none; None when DNS did not answer."""
    try:
        answer = res.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:
        return None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def _spf(records):
    spf = [r for r in records if r.lower().startswith("v=spf1")]
    if not spf:
        return "missing", "No SPF record (TXT \"v=spf1 …\") at the domain."
    if len(spf) > 1:
        return "wrong", "More than one SPF record: receivers treat that as a permanent error (RFC 7208 4.5)."
    if spf[0].split()[-1].lower() in ("+all", "all"):
        return "wrong", "The SPF record ends in +all: it lets anyone send as this domain."
    return "ok", spf[0]


def _dkim(records, domain):
    if not domain.public_key:
        return "missing", "Herald has no DKIM key for this domain: messages go unsigned."
    if not records:
        return "missing", f"No DKIM record at {domain.selector}._domainkey.{domain.domain}."
    want = "".join(domain.public_key.split())
    published = "".join("".join(records).split())
    if f"p={want}" not in published:
        return "wrong", f"The record at {domain.selector}._domainkey.{domain.domain} is not this key: publish " \
                        f"{txt_value(domain.algorithm, domain.public_key)[:60]}…"
    return "ok", "Published, and matches Herald's key."


def _dmarc(records):
    dmarc = [r for r in records if r.replace(" ", "").upper().startswith("V=DMARC1")]
    if not dmarc:
        return "missing", "No DMARC record (TXT \"v=DMARC1; p=…\") at _dmarc: Gmail and Yahoo require one of bulk senders."
    if "p=" not in dmarc[0].replace(" ", "").lower():
        return "wrong", "The DMARC record has no policy (p=none, quarantine or reject)."
    return "ok", dmarc[0]


def check(domain: SendingDomain) -> dict:
    """Look the records up now: ``{"spf"|"dkim"|"dmarc": {"state": ok|missing|wrong|unknown, "detail"}}``."""
    res = mx.resolver()
    found = {"spf": _txt(res, domain.domain), "dkim": _txt(res, f"{domain.selector}._domainkey.{domain.domain}"),
             "dmarc": _txt(res, f"_dmarc.{domain.domain}")}
    result = {}
    for key, records in found.items():
        if records is None:
            result[key] = {"state": "unknown", "detail": "DNS did not answer; try again later."}
            continue
        state, detail = _spf(records) if key == "spf" else _dkim(records, domain) if key == "dkim" else _dmarc(records)
        result[key] = {"state": state, "detail": detail}
    return result


def domain_health(recheck=False) -> list[dict]:
    """Every sending domain with its records' states, from the cache unless ``recheck``."""
    rows = []
    for domain in SendingDomain.objects.all():
        key = CACHE_KEY.format(domain.domain)
        records = None if recheck else cache.get(key)
        if records is None:
            records = check(domain)
            cache.set(key, records, CACHE_SECONDS)
        problems = [name for name, r in records.items() if r["state"] != "ok"]
        rows.append({"domain": domain.domain, "records": records, "problems": problems})
    return rows
