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

Every figure is a sum of the campaign's tallies (tracking/rollups.py), which
triggers keep as sends and events are written: a page reads a few hundred
rows of them in one query, whatever the campaign's size, and the figures are
those of that moment (no cache). rollups.ledger_sql counts the same figures
from the sends and events, and tests hold the two equal.
"""

import math
from datetime import UTC, timedelta

from django.db.models import Count, Max, Q
from django.utils import dateformat, timezone

from campaigns.models import CampaignLink, variant_letter
from delivery.models import Relay, Send
from tracking import rollups
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
# a row was deferred at least once when it has two attempts ("retried"), or
# one without a final answer ("tried"), counted per status.
FINAL_ANSWERS = ("sent", "bounced", "failed")


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


SEND_METRICS = ("send", "tried", "retried", "nd_sent")
REPORT_METRICS = (*SEND_METRICS, "latency", "relay", "opens", "clicks", "machine_clicks", "human_opens",
                  "machine_opens", "clickers", "complaints", "unsubscribes", "link_clickers")


def _read(campaign, metrics, **kwargs):
    """The campaign's tallies of these metrics: {(metric, domain, key, at): n} (by ``by``'s columns)."""
    rollups.fold_busy([campaign.pk])
    return {key[1:]: n for key, n in rollups.tallies([campaign.pk], metrics, **kwargs).items()}


def _by_status(tally):
    """Sends by status and those deferred at least once, from tallies read by (metric, key)."""
    by_status = {key: n for (metric, key), n in tally.items() if metric == "send"}
    deferred_once = sum(tally.get(("retried" if status in FINAL_ANSWERS else "tried", status), 0)
                        for status in by_status)
    return by_status, deferred_once


def delivery_outcomes(campaign) -> dict:
    """The outcomes alone, as in ``campaign_stats``: one small query, for pages that show campaigns' progress.

    Returns ``{"recipients": int, "outcomes": {key: {"label", "count", "rate"}},
    "deferred_at_least_once": {"label", "count", "rate"}}`` with the keys of OUTCOMES.
    """
    return outcomes_of([campaign.pk])[campaign.pk]


def outcomes_of(campaign_ids) -> dict:
    """``delivery_outcomes`` of several campaigns in one query: {campaign_id: outcomes}."""
    ids = list(campaign_ids)
    rollups.fold_busy(ids)
    tally = rollups.tallies(ids, SEND_METRICS, by=("key",))
    result = {}
    for pk in ids:
        own = {(metric, key): n for (campaign, metric, key), n in tally.items() if campaign == pk}
        by_status, deferred_once = _by_status(own)
        counts = _partition(by_status, own.get(("nd_sent", ""), 0))
        result[pk] = _outcome_figures(counts, sum(by_status.values()), deferred_once)
    return result


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
    tally = _read(campaign, REPORT_METRICS, by=("domain", "key"))
    unit = _estimated_unit(campaign)
    domains, by_status, deferred_once = _sends(tally)
    events = _event_totals(tally)
    links = _links(campaign, tally)
    timeline = _timeline(campaign, unit)
    relays = _relays(tally)
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


def _relays(tally):
    """Messages a server answered (delivered or refused), by the relay that carried them; direct delivery
    (or a relay since deleted) has none. Largest first."""
    answered = {}
    for (metric, status, relay), n in tally.items():
        if metric == "relay":
            answered.setdefault(int(relay) if relay else None, dict.fromkeys(("sent", "bounced"), 0))[status] += n
    names = dict(Relay.objects.filter(pk__in=[pk for pk in answered if pk]).values_list("pk", "name"))
    table = [{"relay_id": pk if pk in names else None, "relay": names.get(pk) or "direct", **figures}
             for pk, figures in answered.items()]
    table.sort(key=lambda r: (-r["sent"] - r["bounced"], r["relay"]))
    return table


def _sends(tally):
    """The domain table, the rows by status and the rows deferred at least once, from tallies by (domain, key)."""
    totals = dict.fromkeys(STATUS_OUTCOME, 0)
    deferred_once = 0
    domains = {}

    def domain(name):
        return domains.setdefault(name, {"by_status": dict.fromkeys(STATUS_OUTCOME, 0), "deferred_once": 0,
                                         "latency": 0, "bounced_after": 0})

    for (metric, name, key), n in tally.items():
        if metric == "send":
            domain(name)["by_status"][key] += n
            totals[key] += n
        elif metric in ("tried", "retried") and (metric == "retried") == (key in FINAL_ANSWERS):
            domain(name)["deferred_once"] += n
            deferred_once += n
        elif metric == "latency":
            domain(name)["latency"] += n
        elif metric == "nd_sent":
            domain(name)["bounced_after"] += n
    table = []
    for name, d in domains.items():
        accepted = d["by_status"]["sent"]  # sent_at is set with "sent", and only then
        table.append({
            "domain": name,
            "recipients": sum(d["by_status"].values()),
            **_partition(d["by_status"], d["bounced_after"]),
            "deferred_at_least_once": d["deferred_once"],
            "avg_latency_seconds": round(d["latency"] / 1_000_000 / accepted, 3) if accepted else None,
        })
    table.sort(key=lambda d: (-d["recipients"], d["domain"]))
    return table, {status: n for status, n in totals.items() if n}, deferred_once


def _event_totals(tally):
    def total(metric):
        return sum(n for (name, _, _), n in tally.items() if name == metric)

    return {key: total(metric) for key, metric in (
        ("human_opens", "human_opens"), ("machine_opens", "machine_opens"), ("opens", "opens"),
        ("unique_clicks", "clickers"), ("clicks", "clicks"), ("machine_clicks", "machine_clicks"),
        ("complaints", "complaints"), ("unsubscribes", "unsubscribes"))}


def link_figures(campaign, index=None):
    """Clicks per link of the campaign, as in ``campaign_stats``'s ``links``; of link ``index`` alone if given."""
    return _links(campaign, _read(campaign, ("clicks", "machine_clicks", "link_clickers"), by=("domain", "key")), index)


def _links(campaign, tally, index=None):
    links = CampaignLink.objects.filter(campaign=campaign)
    if index is not None:
        links = links.filter(index=index)
    table = []
    for link in links.order_by("index"):
        key = str(link.index)
        table.append({
            "index": link.index,
            "url": link.url,
            "clicks": tally.get(("clicks", "", key), 0),
            "unique_clicks": tally.get(("link_clickers", "", key), 0),
            "machine_clicks": tally.get(("machine_clicks", "", key), 0),
        })
    return table


# --- over time -------------------------------------------------------------------

UNITS = ("minute", "hour", "day")
_STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
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
    return _timeline(campaign, unit, until=until, fixed=True)


def _timeline(campaign, unit, until=None, fixed=False):
    counts = {}  # UTC bucket start -> {series: n}

    def add(bucket, series, n):
        counts.setdefault(bucket, dict.fromkeys(SERIES, 0))[series] += n

    # Minutes (UTC) into the unit's buckets in the operator's zone (every zone's offset is whole minutes), which
    # the database sums where it can.
    rollups.fold_busy([campaign.pk])
    for (_, metric, key, at), n in rollups.tallies([campaign.pk], ("sent_at", "series"), by=("key", "at"), until=until,
                                                   unit=unit).items():
        add(_truncate(at, unit), "sent" if metric == "sent_at" else key, n)
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


RATE_METRICS = ("send", "nd_sent", "human_opens", "clickers", "complaints", "unsubscribes")


def campaign_rates(campaign_ids) -> dict:
    """The rates of several campaigns at once, in one query whatever their number.

    Returns ``{campaign_id: rates(...)}`` with the figures ``campaign_stats``
    shows for each campaign (its outcomes and engagement), for the campaign
    list, the dashboard and the comparison view.
    """
    ids = list(campaign_ids)
    if not ids:
        return {}
    rollups.fold_busy(ids)
    tally = rollups.tallies(ids, RATE_METRICS, by=("key",))
    result = {}
    for pk in ids:
        statuses = {key: n for (campaign, metric, key), n in tally.items() if campaign == pk and metric == "send"}
        outcomes = _partition(statuses, tally.get((pk, "nd_sent", ""), 0))
        events = {name: tally.get((pk, metric, ""), 0) for name, metric in (
            ("human_opens", "human_opens"), ("unique_clicks", "clickers"), ("complaints", "complaints"),
            ("unsubscribes", "unsubscribes"))}
        result[pk] = rates(_rate_counts(outcomes, sum(statuses.values()), events))
    return result


def listed_rates(campaigns) -> dict:
    """``campaign_rates`` of these campaigns (for pages that list them)."""
    return campaign_rates(c.pk for c in campaigns)


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
