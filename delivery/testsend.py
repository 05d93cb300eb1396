"""Test sends: the real message for a few addresses, sent at once the way the engine sends.

The message is built exactly as the campaign will build it, for the contact
with that address when there is one (else for a contact with empty fields),
and handed over synchronously through the engine's own route, SMTP client and
limits: the active relay (delivery.routing) or the recipients' MX hosts in
direct mode, HERALD_SMTP_CA_FILE for certificates, and a token from the same
Redis buckets as campaign sends (the domain group's and the relay's) and a
connection slot under the same cap. A test send is still mail to a person, so:

- a suppressed address is skipped and reported, never mailed;
- each user may mail HERALD_TEST_SEND_LIMIT recipients per hour (a token
  bucket in Redis, shared by every web process); a request over it is refused
  as a whole with the seconds to wait;
- when a throttle has no token left, the address is reported as throttled with
  the seconds to wait, rather than sent over the limit.

Each address gets its own result; a relay error says what the server answered
and which server it was.
"""

import math
import os
import socket
from dataclasses import dataclass

from django.conf import settings
from email_validator import EmailNotValidError, validate_email

from campaigns.models import Contact, Suppression, email_key
from campaigns.rendering import ContactData
from delivery import routing, throttle
from delivery.message import compile_campaign
from delivery.mx import NoRoute
from delivery.smtp import Connection, SMTPFailure, Timeouts

MAX_ADDRESSES = 10
# A person waits for the answer: no SMTP step may take longer than this.
TIMEOUT = 30
HOUR = 3600

SENT, FAILED, INVALID, SUPPRESSED, THROTTLED = "sent", "failed", "invalid", "suppressed", "throttled"


@dataclass
class TestResult:
    address: str
    ok: bool
    detail: str
    status: str = ""

    __test__ = False  # not a pytest class


class TestSendLimited(ValueError):
    """The user has used up their test sends for now; ``retry_after`` seconds until the request fits."""

    __test__ = False

    def __init__(self, message, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _TestSend:
    """What the builder and the routing rules read of a Send. Id 0 belongs to no Send: its tracking links lead nowhere."""

    email: str
    pk: int = 0
    campaign_id: int | None = None
    domain: str = ""
    outbound_id: int | None = None

    @property
    def id(self):
        return self.pk


def check_addresses(addresses):
    """(clean addresses, errors) for a list given by a person; at most MAX_ADDRESSES."""
    if not addresses:
        raise ValueError("give at least one address")
    if len(addresses) > MAX_ADDRESSES:
        raise ValueError(f"at most {MAX_ADDRESSES} addresses per test send, got {len(addresses)}")
    clean, errors = [], []
    for address in addresses:
        address = (address or "").strip()
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:
            errors.append(TestResult(address, False, f"not a valid address: {exc}", INVALID))
            continue
        clean.append(address)
    return clean, errors


def _user_limit(user) -> throttle.Limit:
    per_hour = settings.HERALD_TEST_SEND_LIMIT
    who = getattr(user, "pk", None) or "anonymous"
    return throttle.Limit(f"testsend:user:{who}", per_hour / HOUR, per_hour)


def take_quota(user, n: int) -> None:
    """Count ``n`` recipients against the user's hourly test sends, all or none; raises TestSendLimited."""
    limit = _user_limit(user)
    grant = throttle.take_tokens(limit, n)
    if grant.granted == n:
        return
    throttle.give_back(limit, grant.granted)
    wait = max(1, math.ceil((n - grant.granted) / limit.rate))
    raise TestSendLimited(
        f"test send limit reached: at most {settings.HERALD_TEST_SEND_LIMIT} recipients per user per hour "
        f"(HERALD_TEST_SEND_LIMIT); this request has {n}; try again in {wait} s", wait)


def with_variant(campaign, variant):
    """The campaign as recipients of A/B ``variant`` get it (its subject, sender name, preheader and content);
    the campaign itself for None. Raises ValueError for a variant it does not have."""
    if variant is None:
        return campaign
    from campaigns.models import CampaignVariant, variant_letter

    chosen = CampaignVariant.objects.filter(campaign_id=campaign.pk, number=variant).first()
    if chosen is None:
        letters = ", ".join(f"{n} ({variant_letter(n)})" for n in campaign.variant_numbers()) or "none"
        raise ValueError(f"variant: the campaign has no variant {variant}; its variants: {letters}")
    copy = type(campaign)(**{f.attname: getattr(campaign, f.attname) for f in campaign._meta.concrete_fields})
    CampaignVariant.apply(copy, chosen.frozen())
    return copy


def send_test(campaign, addresses, user=None, variant=None):
    """Send the campaign's real message to each address now; a TestResult per address, in the order given.

    Raises ValueError for a bad address list and TestSendLimited when ``user``
    has no test sends left for this many recipients.
    """
    results = _send_test(with_variant(campaign, variant), addresses, user)
    order = {(a or "").strip(): n for n, a in reversed(list(enumerate(addresses)))}
    return sorted(results, key=lambda r: order.get(r.address, len(order)))


def _send_test(campaign, addresses, user):
    clean, results = check_addresses(addresses)
    suppressed = dict(Suppression.objects.filter(email_key__in=[email_key(a) for a in clean])
                      .values_list("email_key", "reason"))
    for address in clean:
        if email_key(address) in suppressed:
            results.append(TestResult(address, False, f"suppressed ({suppressed[email_key(address)]}): not sent",
                                      SUPPRESSED))
    clean = [a for a in clean if email_key(a) not in suppressed]
    if not clean:
        return results
    compiled = compile_campaign(campaign)  # a template error refuses the request before any quota is spent
    take_quota(user, len(clean))
    contacts = {c.email_key: c for c in Contact.objects.filter(email_key__in=[email_key(a) for a in clean])}
    by_group = {}
    routing.refresh()
    try:
        rows = [_TestSend(a, campaign_id=campaign.pk, domain=a.rpartition("@")[2].lower()) for a in clean]
        routing.prepare(rows)  # the campaign's sending domain, for rules that route by it
        for row in rows:
            contact = contacts.get(email_key(row.email))
            built = compiled.build(row, contact if contact else ContactData(row.email))
            # The way the campaign's own messages to this domain go: its routing rule's group, whose relay
            # the test reports on; the first of them that is up, as a send of id 0 would pick.
            plan = routing.plan_for(row)
            target = routing.target_for(row)
            key = (routing.group_of(row.domain, target), target)
            by_group.setdefault(key, []).append((row.domain, built, target, plan))
    except Exception:
        throttle.give_back(_user_limit(user), len(clean))  # nothing was sent
        raise
    unsent = 0
    for items in by_group.values():
        group_results = _send_group(items)
        unsent += sum(1 for r in group_results if r.status == THROTTLED)
        results.extend(group_results)
    # Addresses a throttle held back were never mailed: they do not count.
    throttle.give_back(_user_limit(user), unsent)
    return results


def _throttled(items, wait, why):
    wait = max(1, math.ceil(wait))
    return [TestResult(b.rcpt, False, f"throttled: {why}; try again in {wait} s", THROTTLED) for _, b, *_ in items]


def _send_group(items):
    """Send one domain group's messages under its throttles, as the engine's _send_group does."""
    domain, _, target, plan = items[0]
    try:
        route = routing.route_for(domain, target, plan)
    except NoRoute as exc:
        return [TestResult(b.rcpt, False, str(exc), FAILED) for _, b, *_ in items]
    limit = routing.limit_for(domain, target)
    grant = throttle.take_tokens(limit, len(items))
    granted, wait, why = grant.granted, grant.wait, f"the rate limit for {domain}"
    if route.relay_limit is not None and granted:
        relay_grant = throttle.take_tokens(route.relay_limit, granted)
        throttle.give_back(limit, granted - relay_grant.granted)
        if relay_grant.granted < granted:
            granted, wait, why = relay_grant.granted, max(wait, relay_grant.wait), f"the rate of relay {route.relay.name}"
    go, later = items[:granted], items[granted:]
    results = _throttled(later, wait, why)
    if go:
        try:
            results.extend(_deliver(route, go))
        except _NoSlot as exc:
            throttle.give_back(limit, len(go))
            if route.relay_limit is not None:
                throttle.give_back(route.relay_limit, len(go))
            results.extend(_throttled(go, 5, str(exc)))
    return results


class _NoSlot(Exception):
    pass


def _deliver(route, items):
    try:
        conn, holder = _open(route)
    except SMTPFailure as exc:
        return [TestResult(b.rcpt, False, str(exc), FAILED) for _, b, *_ in items]
    try:
        replies, leftovers = conn.send_many([b for _, b, *_ in items])
    finally:
        conn.close()
        throttle.release_slot(route.pool_key, holder)
    results = []
    for built, (code, text) in replies:
        where = conn.endpoint.where
        if code is not None and 200 <= code < 300:
            results.append(TestResult(built.rcpt, True, f"accepted by {where} (Message-ID <{built.message_id}>)", SENT))
        elif code is None:
            results.append(TestResult(built.rcpt, False, text, FAILED))
        else:
            results.append(TestResult(built.rcpt, False, f"{code} {text} from {where}", FAILED))
    results.extend(TestResult(b.rcpt, False, "not sent: the connection closed first", FAILED) for b in leftovers)
    return results


def _open(route):
    """A connection of the engine's own client to the first endpoint that answers, under the route's connection cap.

    Not the engine's pool: a web process has nobody to close idle connections,
    so this one is closed (and its slot freed) as soon as the test is sent.
    """
    timeouts = Timeouts.from_settings()
    for name in ("connect", "greeting", "command", "data_start", "final_dot"):
        setattr(timeouts, name, min(getattr(timeouts, name), TIMEOUT))
    holder = f"{socket.gethostname()}:{os.getpid()}:testsend:{id(route)}"
    if not throttle.acquire_slot(route.pool_key, route.cap, holder, TIMEOUT * 6):
        where = f"relay {route.relay.name}" if route.relay else route.pool_key
        raise _NoSlot(f"all {route.cap} connections to {where} are in use")
    last = None
    try:
        for endpoint in route.endpoints:
            try:
                return Connection(endpoint, timeouts).open(), holder
            except SMTPFailure as exc:
                if exc.fatal and route.relay is not None:
                    raise
                last = exc  # next MX host
        raise last or SMTPFailure("no host to connect to")
    except BaseException:
        throttle.release_slot(route.pool_key, holder)
        raise


def preview(campaign, contact=None, address="", variant=None):
    """What ``contact`` (or an address with empty fields) would receive: for the admin and the API.

    Returns the raw headers, the text part, the HTML part and the variables
    the templates use that this contact lacks.
    """
    from email import message_from_bytes, policy

    from campaigns.rendering import missing_variables

    data = ContactData.of(contact) if contact is not None else ContactData(address or "preview@example.com")
    built = compile_campaign(with_variant(campaign, variant)).build(_TestSend(data.email), data)
    raw_headers, _, _ = built.data.partition(b"\r\n\r\n")
    msg = message_from_bytes(built.data, policy=policy.default)
    text = html = ""
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not text:
            text = part.get_content()
        elif part.get_content_type() == "text/html" and not html:
            html = part.get_content()
    return {
        "subject": str(msg["Subject"] or ""),
        "from": str(msg["From"] or ""),
        "to": built.rcpt,
        "headers": raw_headers.decode("ascii", "replace").replace("\r\n", "\n"),
        "text": text,
        "html": html,
        "missing": missing_variables(campaign, data),
        "size": len(built.data),
    }
