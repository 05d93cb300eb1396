"""Campaign statistics, computed with a handful of aggregate queries.

Delivery figures (sent, deferred, bounced, failed) are rates of the recipients;
engagement figures (opens, clicks, complaints, unsubscribes) are rates of the
messages sent. Opens and clicks count people: distinct sends, with machine
fetches (privacy proxies, link scanners) counted apart.

Queries, whatever the campaign's size: one scan of the sends grouped by
domain and hour (the domain table, the totals and the hourly sends), events
aggregated once, events by hour, late bounces by domain, clicks by link. Each scans only the campaign's rows through
the (campaign, …) indexes of Send and Event.
"""

from django.db import connection, transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import TruncHour

from campaigns.models import CampaignLink
from delivery.models import Send
from tracking.models import Event

DOMAIN_ROWS = 200
T = Event.Type


def _rate(count, base):
    return round(count / base, 4) if base else 0.0


def campaign_stats(campaign) -> dict:
    with transaction.atomic():
        _tune_for_aggregates()
        domains, totals, hourly_sent = _sends(campaign)
        events = _event_totals(campaign)
        links = _links(campaign)
        timeline = _timeline(campaign, hourly_sent)
    recipients, sent = totals["recipients"], totals["sent"]
    # A 5xx at send time leaves the Send "bounced"; a DSN later adds an Event to a
    # Send that stays "sent". Either is a hard bounce; the larger count holds both
    # unless the engine's signal was missed for some.
    hard = max(events["hard"], totals["bounced"])
    delivery = {
        "sent": sent,
        "deferred": totals["deferred"],
        "bounced": hard + events["soft"],
        "hard_bounced": hard,
        "soft_bounced": events["soft"],
        "failed": totals["failed"],
    }
    engagement = {name: events[name] for name in ("human_opens", "machine_opens", "unique_clicks", "complaints", "unsubscribes")}
    metrics = {name: {"count": n, "rate": _rate(n, recipients), "of": "recipients"} for name, n in delivery.items()}
    metrics.update({name: {"count": n, "rate": _rate(n, sent), "of": "sent"} for name, n in engagement.items()})
    return {
        "campaign_id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "recipients": recipients,
        "metrics": metrics,
        "totals": {"opens": events["opens"], "clicks": events["clicks"], "machine_clicks": events["machine_clicks"]},
        "links": links,
        "timeline": timeline,
        "domains": domains[:DOMAIN_ROWS],
        "domains_truncated": len(domains) > DOMAIN_ROWS,
    }


def _tune_for_aggregates():
    """For this transaction only: room to hash-aggregate a million rows in memory, and no JIT.

    PostgreSQL guesses many (domain, hour) groups where there are a few
    thousand, and with the default work_mem it sorts a million rows on disk;
    JIT compilation would cost more than it saves on queries this short.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '64MB'")
            cursor.execute("SET LOCAL jit = off")


def _sends(campaign):
    """One scan of the campaign's sends, grouped by domain and hour: the domain table, the totals and the hourly sends."""
    latency = ExpressionWrapper(F("sent_at") - F("created_at"), output_field=DurationField())
    rows = (
        Send.objects.filter(campaign=campaign)
        .values("domain", hour=TruncHour("sent_at"))
        .annotate(
            recipients=Count("id"),
            sent=Count("id", filter=Q(status=Send.Status.SENT)),
            deferred=Count("id", filter=Q(status=Send.Status.DEFERRED)),
            bounced=Count("id", filter=Q(status=Send.Status.BOUNCED)),
            failed=Count("id", filter=Q(status=Send.Status.FAILED)),
            delivered=Count("sent_at"),
            latency=Sum(latency),
        )
        .order_by()
    )
    names = ("recipients", "sent", "deferred", "bounced", "failed")
    totals = dict.fromkeys(names, 0)
    domains, hourly = {}, {}
    for row in rows:
        domain = domains.setdefault(row["domain"], {"domain": row["domain"], **dict.fromkeys(names, 0),
                                                     "delivered": 0, "latency": None})
        for name in names:
            totals[name] += row[name]
            domain[name] += row[name]
        if row["delivered"]:
            domain["delivered"] += row["delivered"]
            domain["latency"] = row["latency"] if domain["latency"] is None else domain["latency"] + row["latency"]
            hourly[row["hour"]] = hourly.get(row["hour"], 0) + row["delivered"]
    late_bounces = {
        row["send__domain"]: row["n"]
        for row in Event.objects.filter(campaign=campaign, type__in=[T.BOUNCE, T.SOFT_BOUNCE])
        .exclude(send__status=Send.Status.BOUNCED)
        .values("send__domain")
        .annotate(n=Count("send", distinct=True))
    }
    table = []
    for domain in sorted(domains.values(), key=lambda d: (-d["recipients"], d["domain"])):
        delivered, total_latency = domain.pop("delivered"), domain.pop("latency")
        domain["bounced"] += late_bounces.get(domain["domain"], 0)
        domain["avg_latency_seconds"] = round(total_latency.total_seconds() / delivered, 3) if delivered else None
        table.append(domain)
    return table, totals, hourly


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
        hard=unique(type=T.BOUNCE),
        soft=unique(type=T.SOFT_BOUNCE),
        complaints=unique(type=T.COMPLAINT),
        unsubscribes=unique(type=T.UNSUBSCRIBE),
    )


def _links(campaign):
    counts = {
        row["link_index"]: row
        for row in Event.objects.filter(campaign=campaign, type=T.CLICK)
        .values("link_index")
        .annotate(
            clicks=Count("id", filter=Q(machine=False)),
            unique_clicks=Count("send", distinct=True, filter=Q(machine=False)),
            machine_clicks=Count("id", filter=Q(machine=True)),
        )
    }
    links = []
    for link in CampaignLink.objects.filter(campaign=campaign).order_by("index"):
        row = counts.get(link.index, {})
        links.append({
            "index": link.index,
            "url": link.url,
            "clicks": row.get("clicks", 0),
            "unique_clicks": row.get("unique_clicks", 0),
            "machine_clicks": row.get("machine_clicks", 0),
        })
    return links


_TIMELINE_TYPES = {T.OPEN: "opens", T.CLICK: "clicks", T.BOUNCE: "bounces", T.SOFT_BOUNCE: "bounces",
                   T.COMPLAINT: "complaints", T.UNSUBSCRIBE: "unsubscribes"}


def _timeline(campaign, hourly_sent):
    hours = {}

    def slot(hour):
        return hours.setdefault(hour, {"hour": hour.isoformat(), "sent": 0, "opens": 0, "clicks": 0, "bounces": 0,
                                       "complaints": 0, "unsubscribes": 0})

    for hour, count in hourly_sent.items():
        slot(hour)["sent"] += count
    for row in (Event.objects.filter(campaign=campaign, type__in=list(_TIMELINE_TYPES))
                .exclude(type__in=[T.OPEN, T.CLICK], machine=True)
                .annotate(hour=TruncHour("created_at")).values("hour", "type").annotate(n=Count("id")).order_by()):
        slot(row["hour"])[_TIMELINE_TYPES[row["type"]]] += row["n"]
    return [hours[h] for h in sorted(hours)]
