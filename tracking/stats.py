"""Campaign statistics, computed with a handful of aggregate queries.

``campaign_stats(campaign)`` is what the statistics page, the API, the
dashboard and the demo's summary show; ``delivery_outcomes(campaign)`` is its
cheaper part (the outcomes alone) for pages that list several campaigns.

The delivery outcomes are a partition of the recipients: each Send row is
counted once, by where it stands now, so the outcomes add up to the recipient
count and their rates to exactly 100 %. A message accepted with a 250 and
reported undeliverable later (a DSN) is "bounced after delivery", neither
"delivered" nor "bounced" (a refusal while sending). "Deferred at least once"
is a figure apart: a greylisted recipient delivered on the second try is
delivered.

Engagement figures (opens, clicks, unsubscribes, complaints) are rates of the
delivered messages. Opens and clicks count people: distinct sends, with
machine fetches (privacy proxies, link scanners) counted apart.

Queries, whatever the campaign's size: the sends grouped by domain and
status (the outcomes and the domain table), late bounces by domain, events
aggregated once, clicks by link, the last event, and the sends and the events
by time bucket. Each reads only the campaign's rows through the (campaign, …)
indexes of Send and Event. Two plain scans of the sends cost no more than one
grouped by domain and time with a count per status (bench/tracking.py).
"""

import math
from datetime import UTC, timedelta

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q, Sum
from django.db.models.functions import Trunc
from django.utils import dateformat, timezone

from campaigns.models import CampaignLink, variant_letter
from delivery.models import Send
from tracking.models import Event

DOMAIN_ROWS = 200
T = Event.Type
S = Send.Status

# The partition, in the order the pages show it: key, label, what it means.
OUTCOMES = (
    ("delivered", "Delivered", "accepted by the receiving server, and no bounce report since"),
    ("bounced_after_delivery", "Bounced after delivery", "accepted, then reported undeliverable by a bounce message (DSN)"),
    ("bounced", "Bounced", "refused by the receiving server while sending (5xx)"),
    ("failed", "Failed", "given up: refused for a policy reason, deferred past the give-up age, or not buildable"),
    ("deferred", "Deferred now", "refused for now (4xx); will be tried again"),
    ("queued", "Queued", "waiting for a worker, retries that are due included"),
    ("sending", "Sending now", "claimed by a worker"),
    ("skipped", "Skipped", "unsubscribed or suppressed after the campaign started; not sent"),
    ("cancelled", "Cancelled", "not sent: the campaign was cancelled"),
)
OUTCOME_KEYS = [key for key, _, _ in OUTCOMES]
# Where each Send status lands; "sent" splits into delivered and bounced after delivery.
STATUS_OUTCOME = {"sent": "delivered", "bounced": "bounced", "failed": "failed", "deferred": "deferred",
                  "queued": "queued", "sending": "sending", "skipped": "skipped", "cancelled": "cancelled"}

ENGAGEMENT = (
    ("human_opens", "Opened (people)"),
    ("machine_opens", "Opened (machines)"),
    ("unique_clicks", "Clicked"),
    ("unsubscribes", "Unsubscribed"),
    ("complaints", "Complained"),
)

# A report that the message never reached the mailbox, whatever its kind.
NON_DELIVERY = [T.BOUNCE, T.SOFT_BOUNCE, T.REJECTED]

# ``attempts`` counts the tries that got an answer (or a broken connection).
# Every answer but the last one of a finished send was a deferral, and every
# answer of a send that has none yet (or was skipped or cancelled since) too:
# a row was deferred at least once when it has two attempts, or one without
# a final answer. Counted per status, as two plain filters.
FINAL_ANSWERS = ("sent", "bounced", "failed")
TRIES = {"tried": Count("id", filter=Q(attempts__gte=1)), "retried": Count("id", filter=Q(attempts__gte=2))}


def _deferred_once(row):
    return row["retried"] if row["status"] in FINAL_ANSWERS else row["tried"]


def _rate(count, base):
    return round(count / base, 4) if base else 0.0


def shares(counts: dict, total: int, scale: int = 10_000) -> dict:
    """Each count's share of ``total`` to four decimals, adding up to exactly 1.

    Rounded by largest remainder, so the percentages on the page (two
    decimals) add up to 100.00 rather than 99.99 or 100.01.
    """
    if not total:
        return dict.fromkeys(counts, 0.0)
    units = {key: n * scale // total for key, n in counts.items()}
    left = scale - sum(units.values())
    order = sorted(counts, key=lambda key: -(counts[key] * scale % total))
    for key in order[:max(left, 0)]:
        units[key] += 1
    return {key: n / scale for key, n in units.items()}


def _partition(by_status: dict, bounced_after: int) -> dict:
    """Counts by outcome from rows by Send status and the sent rows reported undeliverable since."""
    out = dict.fromkeys(OUTCOME_KEYS, 0)
    for status, n in by_status.items():
        out[STATUS_OUTCOME[status]] += n
    out["delivered"] -= bounced_after
    out["bounced_after_delivery"] = bounced_after
    return out


def _outcome_figures(counts: dict, recipients: int, deferred_once: int) -> dict:
    rates = shares(counts, recipients)
    return {
        "recipients": recipients,
        "outcomes": {key: {"label": label, "count": counts[key], "rate": rates[key]} for key, label, _ in OUTCOMES},
        "deferred_at_least_once": {"label": "Deferred at least once", "count": deferred_once,
                                   "rate": _rate(deferred_once, recipients)},
    }


def _bounced_after_delivery(campaign):
    """Sent rows reported undeliverable since, by recipient domain."""
    rows = (Event.objects.filter(campaign=campaign, type__in=NON_DELIVERY, send__status=S.SENT)
            .values("send__domain").annotate(n=Count("send", distinct=True)).order_by())
    return {row["send__domain"]: row["n"] for row in rows}


def delivery_outcomes(campaign) -> dict:
    """The outcomes alone, as in ``campaign_stats``: two queries, for pages that list campaigns.

    Returns ``{"recipients": int, "outcomes": {key: {"label", "count", "rate"}},
    "deferred_at_least_once": {"label", "count", "rate"}}`` with the keys of OUTCOMES.
    """
    rows = Send.objects.filter(campaign=campaign).values("status").annotate(n=Count("id"), **TRIES).order_by()
    by_status, deferred_once = {}, 0
    for row in rows:
        by_status[row["status"]] = row["n"]
        deferred_once += _deferred_once(row)
    counts = _partition(by_status, sum(_bounced_after_delivery(campaign).values()))
    return _outcome_figures(counts, sum(by_status.values()), deferred_once)


def campaign_stats(campaign) -> dict:
    """Everything the statistics page shows, as JSON-ready data (the API returns it as it is).

    Keys: campaign_id, name, status; recipients, outcomes and
    deferred_at_least_once (as ``delivery_outcomes``); engagement (key ->
    label, count, rate of the delivered); rates (as ``rates``: the list's and
    dashboard's columns, with their denominators); totals (opens, clicks,
    machine_clicks: every fetch, not people); links; timeline (unit,
    time_zone, buckets); domains (the outcomes per recipient domain, largest
    first) and domains_truncated; relays (which relay, or direct delivery,
    carried how many of the messages a server answered).
    """
    with transaction.atomic():
        _tune_for_aggregates()
        unit = _estimated_unit(campaign)
        domains, by_status, deferred_once = _sends(campaign)
        events = _event_totals(campaign)
        links = _links(campaign)
        timeline = _timeline(campaign, unit)
        relays = _relays(campaign)
    counts = _partition(by_status, sum(d["bounced_after_delivery"] for d in domains))
    figures = _outcome_figures(counts, sum(by_status.values()), deferred_once)
    delivered = counts["delivered"]
    return {
        "campaign_id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        **figures,
        "engagement": {key: {"label": label, "count": events[key], "rate": _rate(events[key], delivered)}
                       for key, label in ENGAGEMENT},
        "rates": rates(_rate_counts(counts, figures["recipients"], events)),
        "totals": {"opens": events["opens"], "clicks": events["clicks"], "machine_clicks": events["machine_clicks"]},
        "links": links,
        "timeline": timeline,
        "domains": domains[:DOMAIN_ROWS],
        "domains_truncated": len(domains) > DOMAIN_ROWS,
        "relays": relays,
        "variants": variant_stats(campaign),
    }


def _relays(campaign):
    """Messages a server answered (delivered or refused), by the relay that carried them; direct delivery
    (or a relay since deleted) has none. Largest first."""
    rows = (Send.objects.filter(campaign=campaign, status__in=[S.SENT, S.BOUNCED])
            .values("relay_id", "relay__name").annotate(sent=Count("id", filter=Q(status=S.SENT)), bounced=Count("id"))
            .order_by())
    table = [{"relay_id": row["relay_id"], "relay": row["relay__name"] or "direct", "sent": row["sent"],
              "bounced": row["bounced"] - row["sent"]} for row in rows]
    table.sort(key=lambda r: (-r["sent"] - r["bounced"], r["relay"]))
    return table


def _tune_for_aggregates():
    """For this transaction only: room to hash-aggregate a million rows in memory, and no JIT.

    PostgreSQL guesses many (domain, time) groups where there are a few
    thousand, and with the default work_mem it sorts a million rows on disk;
    JIT compilation would cost more than it saves on queries this short.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '64MB'")
            cursor.execute("SET LOCAL jit = off")


def _sends(campaign):
    """One scan of the campaign's sends, grouped by domain and status.

    Returns the domain table, the rows by status and the rows deferred at
    least once.
    """
    latency = ExpressionWrapper(F("sent_at") - F("created_at"), output_field=DurationField())
    rows = (
        Send.objects.filter(campaign=campaign)
        .values("domain", "status")
        .annotate(n=Count("id"), **TRIES, latency=Sum(latency))
        .order_by()
    )
    totals = dict.fromkeys(STATUS_OUTCOME, 0)
    deferred_once = 0
    domains = {}
    for row in rows:
        domain = domains.setdefault(row["domain"], {"by_status": dict.fromkeys(STATUS_OUTCOME, 0), "deferred_once": 0,
                                                    "latency": timedelta()})
        domain["by_status"][row["status"]] += row["n"]
        totals[row["status"]] += row["n"]
        domain["deferred_once"] += _deferred_once(row)
        deferred_once += _deferred_once(row)
        if row["latency"] is not None:
            domain["latency"] += row["latency"]
    bounced_after = _bounced_after_delivery(campaign)
    table = []
    for name, d in domains.items():
        accepted = d["by_status"]["sent"]  # sent_at is set with "sent", and only then
        table.append({
            "domain": name,
            "recipients": sum(d["by_status"].values()),
            **_partition(d["by_status"], bounced_after.get(name, 0)),
            "deferred_at_least_once": d["deferred_once"],
            "avg_latency_seconds": round(d["latency"].total_seconds() / accepted, 3) if accepted else None,
        })
    table.sort(key=lambda d: (-d["recipients"], d["domain"]))
    return table, {status: n for status, n in totals.items() if n}, deferred_once


def _event_totals(campaign):
    def unique(**filters):
        return Count("send", distinct=True, filter=Q(**filters))

    return Event.objects.filter(campaign=campaign).aggregate(
        human_opens=unique(type=T.OPEN, machine=False),
        machine_opens=unique(type=T.OPEN, machine=True),
        opens=Count("id", filter=Q(type=T.OPEN)),
        unique_clicks=unique(type=T.CLICK, machine=False),
        clicks=Count("id", filter=Q(type=T.CLICK, machine=False)),
        machine_clicks=Count("id", filter=Q(type=T.CLICK, machine=True)),
        complaints=unique(type=T.COMPLAINT),
        unsubscribes=unique(type=T.UNSUBSCRIBE),
    )


def link_figures(campaign, index=None):
    """Clicks per link of the campaign, as in ``campaign_stats``'s ``links``; of link ``index`` alone if given."""
    return _links(campaign, index)


def _links(campaign, index=None):
    clicks = Event.objects.filter(campaign=campaign, type=T.CLICK)
    links = CampaignLink.objects.filter(campaign=campaign)
    if index is not None:
        clicks, links = clicks.filter(link_index=index), links.filter(index=index)
    counts = {
        row["link_index"]: row
        for row in clicks
        .values("link_index")
        .annotate(
            clicks=Count("id", filter=Q(machine=False)),
            unique_clicks=Count("send", distinct=True, filter=Q(machine=False)),
            machine_clicks=Count("id", filter=Q(machine=True)),
        )
    }
    table = []
    for link in links.order_by("index"):
        row = counts.get(link.index, {})
        table.append({
            "index": link.index,
            "url": link.url,
            "clicks": row.get("clicks", 0),
            "unique_clicks": row.get("unique_clicks", 0),
            "machine_clicks": row.get("machine_clicks", 0),
        })
    return table


# --- over time -------------------------------------------------------------------

UNITS = ("minute", "hour", "day")
_STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
_TIMELINE_TYPES = {T.OPEN: "opens", T.CLICK: "clicks", T.BOUNCE: "bounces", T.SOFT_BOUNCE: "bounces",
                   T.COMPLAINT: "complaints", T.UNSUBSCRIBE: "unsubscribes"}
SERIES = ("sent", "opens", "clicks", "bounces", "complaints", "unsubscribes")


def unit_for(span: timedelta) -> str:
    """Minutes for a campaign that lasts minutes, hours for hours, days beyond a week: a few dozen to 180 bars."""
    if span <= timedelta(hours=3):
        return "minute"
    if span <= timedelta(days=7):
        return "hour"
    return "day"


def _estimated_unit(campaign):
    """The bucket to group by, from the campaign's own times and its last event (an index look-up).

    A campaign never started through Herald has no start time: minutes, made
    coarser afterwards if its sends turn out to span longer.
    """
    if campaign.started_at is None:
        return "minute"
    end = campaign.finished_at or timezone.now()
    last = Event.objects.filter(campaign=campaign).aggregate(last=Max("created_at"))["last"]
    if last is not None:
        end = max(end, last)
    return unit_for(end - campaign.started_at)


def _utc(moment):
    return moment.astimezone(UTC)


def _truncate(moment, unit):
    """The start of the bucket holding ``moment``, in the operator's time zone; returned in UTC."""
    local = timezone.localtime(moment)
    if unit == "minute":
        local = local.replace(second=0, microsecond=0)
    elif unit == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    else:
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return _utc(local)


def _slots(first, last, unit):
    """Every bucket from ``first`` to ``last``, empty ones included, so that the bars keep to the time axis."""
    slots, at = [], first
    while at <= last:
        slots.append(at)
        if unit == "day":  # a calendar day, 23 or 25 hours across a clock change
            at = _truncate(timezone.localtime(at) + _STEP[unit] + timedelta(hours=2), unit)
        else:
            at = at + _STEP[unit]
    return slots


# An operator asking for minutes gets the first hours after the start, where minutes tell something.
MINUTE_WINDOW = timedelta(hours=3)


def campaign_timeline(campaign, unit: str) -> dict:
    """The campaign's sends, opens and clicks (people), bounces, complaints and unsubscribes by ``unit``,
    as in ``campaign_stats``'s timeline; by minute, only the first three hours after it started."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}")
    until = campaign.started_at + MINUTE_WINDOW if unit == "minute" and campaign.started_at else None
    with transaction.atomic():
        _tune_for_aggregates()
        return _timeline(campaign, unit, until=until, fixed=True)


def _timeline(campaign, unit, until=None, fixed=False):
    counts = {}  # UTC bucket start -> {series: n}

    def add(bucket, series, n):
        counts.setdefault(bucket, dict.fromkeys(SERIES, 0))[series] += n

    sent = Send.objects.filter(campaign=campaign, sent_at__isnull=False)
    events = Event.objects.filter(campaign=campaign, type__in=list(_TIMELINE_TYPES))
    if until is not None:
        sent, events = sent.filter(sent_at__lt=until), events.filter(created_at__lt=until)
    sent = sent.values(bucket=Trunc("sent_at", unit)).annotate(n=Count("id")).order_by()
    for row in sent:
        add(_utc(row["bucket"]), "sent", row["n"])
    rows = (events.exclude(type__in=[T.OPEN, T.CLICK], machine=True)
            .values("type", bucket=Trunc("created_at", unit)).annotate(n=Count("id")).order_by())
    for row in rows:
        add(_utc(row["bucket"]), _TIMELINE_TYPES[row["type"]], row["n"])
    zone = timezone.get_current_timezone_name()
    if not counts:
        return {"unit": unit, "time_zone": zone, "buckets": []}
    coarser = unit_for(max(counts) - min(counts))
    if not fixed and UNITS.index(coarser) > UNITS.index(unit):
        unit, fine = coarser, counts
        counts = {}
        for bucket, series in fine.items():
            for name, n in series.items():
                add(_truncate(bucket, unit), name, n)
    slots = sorted(set(_slots(min(counts), max(counts), unit)) | set(counts))
    label = _label_format(unit, slots)
    empty = dict.fromkeys(SERIES, 0)
    buckets = [{"start": timezone.localtime(slot).isoformat(), "label": dateformat.format(timezone.localtime(slot), label),
                **counts.get(slot, empty)} for slot in slots]
    return {"unit": unit, "time_zone": zone, "buckets": buckets}


def _label_format(unit, slots):
    """Times of day within one day; with the weekday when the chart spans days; dates for days."""
    if unit == "day":
        return "D j M"
    first, last = timezone.localtime(slots[0]), timezone.localtime(slots[-1])
    return "H:i" if first.date() == last.date() else "D H:i"


# --- A/B variants ------------------------------------------------------------------

METRICS = {
    "opens": ("human open rate", "openers", "delivered"),
    "clicks": ("human click rate", "clickers", "delivered"),
    "click_to_open": ("click-to-open rate", "clickers", "openers"),
}
SIGNIFICANCE = 0.05


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """The two-sided p-value of a two-proportion z-test (pooled), or None when either sample is empty."""
    if not n1 or not n2:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / spread
    return math.erfc(abs(z) / math.sqrt(2))


def variant_stats(campaign) -> dict | None:
    """Each A/B variant's figures in the test side by side, people only (machine opens and clicks left out); None
    without variants. The rest of the audience, sent the winner after the test, is counted apart (after_test).

    Openers are recipients who opened or clicked (a click means the message
    was seen). Each variant's rate by the campaign's metric is tested against
    the leader's with a two-proportion z-test; the p-value says how likely a
    difference this large would be if the variants did equally well.
    """
    numbers = campaign.variant_numbers()
    if len(numbers) < 2:
        return None
    tested = Send.objects.filter(campaign=campaign, variant__isnull=False, after_test=False)
    delivered = dict(tested.filter(status=S.SENT).values_list("variant").annotate(n=Count("id")).order_by())
    recipients = dict(tested.values_list("variant").annotate(n=Count("id")).order_by())
    events = {row["variant"]: row for row in Event.objects.filter(
        campaign=campaign, variant__isnull=False, send__after_test=False, machine=False, type__in=[T.OPEN, T.CLICK])
        .values("variant").annotate(openers=Count("send", distinct=True),
                                    clickers=Count("send", distinct=True, filter=Q(type=T.CLICK))).order_by()}
    metric = campaign.winner_metric if campaign.winner_metric in METRICS else "opens"
    label, top, base = METRICS[metric]
    rows = []
    for number in numbers:
        figures = {"delivered": delivered.get(number, 0), "openers": events.get(number, {}).get("openers", 0),
                   "clickers": events.get(number, {}).get("clickers", 0)}
        rows.append({
            "number": number, "letter": variant_letter(number), "recipients": recipients.get(number, 0), **figures,
            "open_rate": _rate(figures["openers"], figures["delivered"]),
            "click_rate": _rate(figures["clickers"], figures["delivered"]),
            "click_to_open": _rate(figures["clickers"], figures["openers"]),
            "metric_count": figures[top], "metric_base": figures[base], "rate": _rate(figures[top], figures[base]),
        })
    leader = max(rows, key=lambda r: (r["rate"], -r["number"]))
    for row in rows:
        row["leader"] = row is leader
        p = None if row is leader else two_proportion_p(row["metric_count"], row["metric_base"],
                                                        leader["metric_count"], leader["metric_base"])
        row["p_value"] = None if p is None else round(p, 4)
        row["significant"] = p is not None and p < SIGNIFICANCE
    others = [r for r in rows if not r["leader"]]
    significant = bool(others) and all(r["significant"] for r in others)
    return {
        "metric": campaign.winner_metric, "metric_label": label, "test_share": campaign.test_share,
        "winner": campaign.winner, "winner_letter": variant_letter(campaign.winner) if campaign.winner else "",
        "winner_chosen_at": campaign.winner_chosen_at.isoformat() if campaign.winner_chosen_at else None,
        "winner_reason": campaign.winner_reason,
        "leader": leader["number"], "significant": significant, "variants": rows,
        "waiting_for_winner": Send.objects.filter(campaign=campaign, hold=Send.HOLD_WINNER,
                                                  status=S.QUEUED).count(),
        "after_test": Send.objects.filter(campaign=campaign, after_test=True).count(),
        "summary": _verdict(leader, others, label, significant),
    }


def _verdict(leader, others, label, significant) -> str:
    if not leader["metric_base"]:
        return "No figures yet: nothing delivered or opened."
    worst = max((r["p_value"] for r in others if r["p_value"] is not None), default=None)
    head = f"Variant {leader['letter']} leads on {label} ({leader['rate'] * 100:.1f} %)"
    if significant:
        return f"{head}; the difference is significant (p = {worst:.3f} < {SIGNIFICANCE}, two-proportion z-test)."
    shown = f"p = {worst:.3f}" if worst is not None else "no comparison possible"
    return (f"{head}, but the difference is not significant ({shown}, two-proportion z-test at {SIGNIFICANCE}): "
            "it may be chance.")


# --- rates, the same everywhere ---------------------------------------------------

# Each rate: key, label, numerator, denominator. Delivery and bounces are of the
# recipients; engagement is of the delivered messages, people only (machine
# opens and clicks are kept apart), as on the statistics page.
RATES = (
    ("delivery", "Delivered", "delivered", "recipients"),
    ("open", "Opened (people)", "human_opens", "delivered"),
    ("click", "Clicked", "unique_clicks", "delivered"),
    ("bounce", "Bounced", "bounces", "recipients"),
    ("complaint", "Complained", "complaints", "delivered"),
    ("unsubscribe", "Unsubscribed", "unsubscribes", "delivered"),
)


def rates(counts: dict) -> dict:
    """The rates of RATES from their counts: ``{key: {"label", "count", "base", "base_label", "rate"}}``.

    ``counts`` holds recipients, delivered, bounces (refused while sending or
    reported undeliverable after), human_opens, unique_clicks, complaints and
    unsubscribes.
    """
    return {key: {"label": label, "count": counts[num], "base": counts[base], "base_label": base,
                  "rate": _rate(counts[num], counts[base])} for key, label, num, base in RATES}


def _rate_counts(outcomes: dict, recipients: int, events: dict) -> dict:
    delivered = outcomes["delivered"]
    return {"recipients": recipients, "delivered": delivered,
            "bounces": outcomes["bounced"] + outcomes["bounced_after_delivery"],
            **{key: events.get(key, 0) for key in ("human_opens", "unique_clicks", "complaints", "unsubscribes")}}


def campaign_rates(campaign_ids) -> dict:
    """The rates of several campaigns at once, in three grouped queries whatever their number.

    Returns ``{campaign_id: rates(...)}`` with the figures ``campaign_stats``
    shows for each campaign (its outcomes and engagement), for the campaign
    list, the dashboard and the comparison view.
    """
    ids = list(campaign_ids)
    if not ids:
        return {}
    by_status = {}
    for row in (Send.objects.filter(campaign_id__in=ids).values("campaign_id", "status")
                .annotate(n=Count("id")).order_by()):
        by_status.setdefault(row["campaign_id"], {})[row["status"]] = row["n"]
    bounced_after = dict(
        Event.objects.filter(campaign_id__in=ids, type__in=NON_DELIVERY, send__status=S.SENT)
        .values("campaign_id").annotate(n=Count("send", distinct=True)).order_by().values_list("campaign_id", "n"))

    def unique(**filters):
        return Count("send", distinct=True, filter=Q(**filters))

    events = {row["campaign_id"]: row for row in (
        Event.objects.filter(campaign_id__in=ids).values("campaign_id").order_by().annotate(
            human_opens=unique(type=T.OPEN, machine=False), unique_clicks=unique(type=T.CLICK, machine=False),
            complaints=unique(type=T.COMPLAINT), unsubscribes=unique(type=T.UNSUBSCRIBE)))}
    result = {}
    for pk in ids:
        statuses = by_status.get(pk, {})
        outcomes = _partition(statuses, bounced_after.get(pk, 0))
        result[pk] = rates(_rate_counts(outcomes, sum(statuses.values()), events.get(pk, {})))
    return result


# Lists of campaigns (the campaign list, the dashboard) show rates kept this long, since counting
# a big campaign's events takes longer than a page may; a campaign's report, the API and the CSV
# exports always count afresh.
LIST_CACHE_SECONDS = {"finished": 600, "cancelled": 600}
LIST_CACHE_DEFAULT = 30


def listed_rates(campaigns) -> dict:
    """``campaign_rates`` of these campaigns, from the cache where a page asked for them lately."""
    campaigns = list(campaigns)
    keys = {c.pk: f"herald:rates:{c.pk}:{c.status}:{c.updated_at.timestamp() if c.updated_at else ''}"
            for c in campaigns}
    found = cache.get_many(list(keys.values()))
    result = {pk: found[key] for pk, key in keys.items() if key in found}
    fresh = campaign_rates(pk for pk in keys if pk not in result)
    for campaign in campaigns:
        if campaign.pk in fresh:
            timeout = LIST_CACHE_SECONDS.get(campaign.status, LIST_CACHE_DEFAULT)
            cache.set(keys[campaign.pk], fresh[campaign.pk], timeout)
    return {**result, **fresh}


def total_rates(per_campaign: dict) -> dict:
    """The rates of several campaigns taken together (sums of their counts, not averages of their rates)."""
    counts = dict.fromkeys(["recipients", "delivered", "bounces", "human_opens", "unique_clicks", "complaints",
                            "unsubscribes"], 0)
    for figures in per_campaign.values():
        counts["recipients"] += figures["delivery"]["base"]
        for key, _, num, _ in RATES:
            counts[num] += figures[key]["count"]
    return rates(counts)


def by_provider(domains: list, group_of) -> list:
    """The domain table (``campaign_stats``'s ``domains``) summed by provider group: recipients, delivered,
    deferred at least once, bounced (while sending or after delivery), and the average latency of the
    accepted messages. ``group_of(domain)`` names a domain's group."""
    groups = {}
    for d in domains:
        g = groups.setdefault(group_of(d["domain"]), {"recipients": 0, "delivered": 0, "deferred_at_least_once": 0,
                                                      "bounced": 0, "domains": 0, "_latency": 0.0, "_accepted": 0})
        accepted = d["delivered"] + d["bounced_after_delivery"]
        g["domains"] += 1
        g["recipients"] += d["recipients"]
        g["delivered"] += d["delivered"]
        g["deferred_at_least_once"] += d["deferred_at_least_once"]
        g["bounced"] += d["bounced"] + d["bounced_after_delivery"]
        if d["avg_latency_seconds"] is not None:
            g["_latency"] += d["avg_latency_seconds"] * accepted
            g["_accepted"] += accepted
    table = []
    for name, g in groups.items():
        latency, accepted = g.pop("_latency"), g.pop("_accepted")
        table.append({"group": name, **g, "avg_latency_seconds": round(latency / accepted, 3) if accepted else None})
    table.sort(key=lambda g: (-g["recipients"], g["group"]))
    return table
