"""The admin dashboard's figures: campaigns sending now, sends per hour, recent bounces and complaints."""

from datetime import timedelta

from django.db.models import Count
from django.db.models.functions import TruncHour
from django.utils import timezone

from campaigns.models import Campaign
from delivery import lifecycle
from delivery.models import Send
from tracking.models import Event

HOURS = 72


def active_campaigns():
    """Campaigns sending or paused, with their progress; scheduled and missed ones with their time."""
    rows = []
    for campaign in Campaign.objects.filter(status__in=["sending", "paused"]).order_by("started_at")[:20]:
        counts = lifecycle.counts(campaign.pk)
        done = counts["sent"] + counts["bounced"] + counts["failed"] + counts["cancelled"] + counts["skipped"]
        share = done * 100 / counts["total"] if counts["total"] else 0
        rows.append({"campaign": campaign, "counts": counts, "percent": int(share), "width": round(share, 1)})
    waiting = Campaign.objects.filter(status__in=["scheduled", "missed"]).order_by("scheduled_at")[:20]
    return rows, list(waiting)


def sends_per_hour(now=None, hours=HOURS, width=720, height=120):
    """Messages sent per hour over the last ``hours``, as bars of an inline SVG."""
    now = now or timezone.now()
    start = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    found = dict(
        Send.objects.filter(status=Send.Status.SENT, sent_at__gte=start)
        .annotate(hour=TruncHour("sent_at")).values("hour").annotate(n=Count("id")).values_list("hour", "n")
    )
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


def dashboard():
    sending, waiting = active_campaigns()
    return {"sending": sending, "waiting": waiting, "per_hour": sends_per_hour(), "feedback": recent_feedback()}
