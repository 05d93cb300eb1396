"""The admin dashboard's figures: campaigns sending now and finished lately, the last campaigns' rates,
deliverability over the last 30 days against the mailbox providers' limits, the sending domains' DNS,
sends per hour, recent bounces and complaints."""

from datetime import timedelta

from django.utils import timezone

from campaigns.models import Campaign
from tracking import dnshealth
from tracking.models import BreakerTrip, Event
from tracking.rollups import tallies
from tracking.stats import listed_rates, outcomes_of, total_rates

HOURS = 72
# Outcomes that still move; the rest are final, and make up the progress bar.
PENDING = ("queued", "sending", "deferred")
FINISHED_DAYS = 7
HEALTH_DAYS = 30
# The mailbox providers' published limits (Gmail's and Yahoo's bulk sender rules): a rate at or over them hurts.
LIMITS = {"complaint": 0.003, "bounce": 0.02}


def campaign_rows(campaigns):
    """Each campaign's delivery outcomes so far (those it has), its share done for the progress bar,
    and the circuit breaker's trip awaiting an acknowledgement, if any: two queries for them all."""
    campaigns = list(campaigns)
    figures = outcomes_of(c.pk for c in campaigns)
    trips = {}
    for trip in BreakerTrip.objects.filter(campaign__in=campaigns, acknowledged_at__isnull=True).order_by("-created_at"):
        trips.setdefault(trip.campaign_id, trip)
    return [_row(c, figures[c.pk], trips.get(c.pk)) for c in campaigns]


def _row(campaign, figures, breaker):
    recipients = figures["recipients"]
    pending = sum(figures["outcomes"][key]["count"] for key in PENDING)
    share = (recipients - pending) * 100 / recipients if recipients else 0
    shown = [{"key": key, **figure} for key, figure in figures["outcomes"].items() if figure["count"]]
    return {"campaign": campaign, "recipients": recipients, "outcomes": shown,
            "deferred_once": figures["deferred_at_least_once"]["count"], "percent": int(share), "width": share,
            "breaker": breaker}


def active_campaigns():
    """Campaigns sending or paused, with their outcomes so far; scheduled and missed ones with their time."""
    sending = Campaign.objects.filter(status__in=["starting", "sending", "paused"]).order_by("started_at")[:20]
    waiting = Campaign.objects.filter(status__in=["scheduled", "missed"]).order_by("scheduled_at")[:20]
    return campaign_rows(sending), list(waiting)


def finished_lately(now=None, days=FINISHED_DAYS, limit=5):
    """The last campaigns that finished (or were cancelled) within ``days``, with their outcomes."""
    since = (now or timezone.now()) - timedelta(days=days)
    done = Campaign.objects.filter(status__in=["finished", "cancelled"], finished_at__gte=since).order_by("-finished_at")
    return campaign_rows(done[:limit])


def sends_per_hour(now=None, hours=HOURS, width=720, height=120):
    """Messages sent per hour over the last ``hours``, as bars of an inline SVG."""
    now = now or timezone.now()
    start = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    # Messages sent by minute (UTC), of every campaign and of mail without one, by hour.
    found = {}
    for (_, _, at), n in tallies(None, ["sent_at"], by=("at",), since=start).items():
        hour = at.replace(minute=0)
        found[hour] = found.get(hour, 0) + n
    slots = [start + timedelta(hours=i) for i in range(hours)]
    values = [found.get(slot, 0) for slot in slots]
    top = max(values) or 1
    bar = width / hours
    bars = [{"x": round(i * bar, 1), "w": round(max(bar - 1, 1), 1), "h": round(v * (height - 10) / top, 1),
             "y": round(height - v * (height - 10) / top, 1), "title": f"{timezone.localtime(slots[i]):%a %H:00}: {v}"}
            for i, v in enumerate(values)]
    return {"bars": bars, "width": width, "height": height, "top": top, "total": sum(values),
            "first": timezone.localtime(slots[0]), "last": timezone.localtime(slots[-1])}


def recent_feedback(limit=15):
    return list(Event.objects.filter(type__in=[Event.Type.BOUNCE, Event.Type.COMPLAINT])
                .select_related("campaign").order_by("-created_at")[:limit])


STARTED = ("sending", "paused", "finished", "cancelled")


def last_campaigns(limit=5):
    """The last campaigns started, newest first, each with the rates of the campaign list."""
    campaigns = list(Campaign.objects.filter(status__in=STARTED, started_at__isnull=False).order_by("-started_at")[:limit])
    figures = listed_rates(campaigns)
    return [{"campaign": c, "rates": figures[c.pk]} for c in campaigns]


def health(now=None, days=HEALTH_DAYS):
    """Complaints and bounces of the campaigns started in the last ``days``, taken together, against LIMITS."""
    since = (now or timezone.now()) - timedelta(days=days)
    campaigns = Campaign.objects.filter(status__in=STARTED, started_at__gte=since).only("pk", "status", "updated_at")
    figures = total_rates(listed_rates(campaigns))
    checks = []
    for key, limit in LIMITS.items():
        figure = figures[key]
        checks.append({"key": key, **figure, "limit": limit, "percent": figure["rate"] * 100, "limit_percent": limit * 100,
                       "ok": figure["rate"] < limit})
    return {"days": days, "checks": checks, "recipients": figures["delivery"]["base"], "ok": all(c["ok"] for c in checks)}


def dashboard(recheck_dns=False):
    sending, waiting = active_campaigns()
    return {"sending": sending, "waiting": waiting, "finished": finished_lately(), "per_hour": sends_per_hour(),
            "feedback": recent_feedback(), "last": last_campaigns(), "health": health(),
            "domains": dnshealth.domain_health(recheck=recheck_dns)}
