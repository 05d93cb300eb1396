"""Campaign statistics, computed with a handful of aggregate queries.

Delivery figures (sent, deferred, bounced, failed) are rates of the recipients;
engagement figures (opens, clicks, complaints, unsubscribes) are rates of the
messages sent. Opens and clicks count people: distinct sends, with machine
fetches (privacy proxies, link scanners) counted apart.

Queries, whatever the campaign's size: sends grouped by domain (which also
gives the totals), sends by hour, events aggregated once, events by hour,
bounces by domain, clicks by link. Each scans only the campaign's rows through
the (campaign, …) indexes of Send and Event.
"""

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q
from django.db.models.functions import TruncHour

from campaigns.models import CampaignLink
from delivery.models import Send
from tracking.models import Event

DOMAIN_ROWS = 200
T = Event.Type


def _rate(count, base):
    return round(count / base, 4) if base else 0.0


def campaign_stats(campaign) -> dict:
    domains, totals = _domains(campaign)
    events = _event_totals(campaign)
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
        "links": _links(campaign),
        "timeline": _timeline(campaign),
        "domains": domains[:DOMAIN_ROWS],
        "domains_truncated": len(domains) > DOMAIN_ROWS,
    }


def _domains(campaign):
    latency = ExpressionWrapper(F("sent_at") - F("created_at"), output_field=DurationField())
    rows = (
        Send.objects.filter(campaign=campaign)
        .values("domain")
        .annotate(
            recipients=Count("id"),
            sent=Count("id", filter=Q(status=Send.Status.SENT)),
            deferred=Count("id", filter=Q(status=Send.Status.DEFERRED)),
            bounced=Count("id", filter=Q(status=Send.Status.BOUNCED)),
            failed=Count("id", filter=Q(status=Send.Status.FAILED)),
            latency=Avg(latency, filter=Q(sent_at__isnull=False)),
        )
        .order_by("-recipients", "domain")
    )
    late_bounces = {
        row["send__domain"]: row["n"]
        for row in Event.objects.filter(campaign=campaign, type__in=[T.BOUNCE, T.SOFT_BOUNCE])
        .exclude(send__status=Send.Status.BOUNCED)
        .values("send__domain")
        .annotate(n=Count("send", distinct=True))
    }
    totals = {"recipients": 0, "sent": 0, "deferred": 0, "bounced": 0, "failed": 0}
    domains = []
    for row in rows:
        for name in totals:
            totals[name] += row[name]
        latency_value = row.pop("latency")
        row["bounced"] += late_bounces.get(row["domain"], 0)
        row["avg_latency_seconds"] = round(latency_value.total_seconds(), 3) if latency_value is not None else None
        domains.append(row)
    return domains, totals


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


def _timeline(campaign):
    hours = {}

    def slot(hour):
        return hours.setdefault(hour, {"hour": hour.isoformat(), "sent": 0, "opens": 0, "clicks": 0, "bounces": 0,
                                       "complaints": 0, "unsubscribes": 0})

    for row in (Send.objects.filter(campaign=campaign, sent_at__isnull=False)
                .annotate(hour=TruncHour("sent_at")).values("hour").annotate(n=Count("id"))):
        slot(row["hour"])["sent"] += row["n"]
    for row in (Event.objects.filter(campaign=campaign, type__in=list(_TIMELINE_TYPES))
                .exclude(type__in=[T.OPEN, T.CLICK], machine=True)
                .annotate(hour=TruncHour("created_at")).values("hour", "type").annotate(n=Count("id"))):
        slot(row["hour"])[_TIMELINE_TYPES[row["type"]]] += row["n"]
    return [hours[h] for h in sorted(hours)]
