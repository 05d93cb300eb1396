"""How the outbox is growing, for the dashboard: events waiting per endpoint, the oldest one's age, against
the outbox limit, and the endpoints that are failing (breaker open, failures in a row, switched off)."""

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone

from webhooks_out.models import Endpoint, OutboxMessage


def growth(now=None) -> dict:
    """Per endpoint and in all: pending events, the oldest pending one, and whether the endpoint is failing.

    Reads only pending rows (the outbox's partial index), which the limit bounds per endpoint.
    """
    now = now or timezone.now()
    limit = getattr(settings, "HERALD_WEBHOOK_OUTBOX_LIMIT", 100_000)
    pending = {row["endpoint_id"]: row for row in OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING)
               .values("endpoint_id").annotate(n=Count("id"), oldest=Min("created_at")).order_by()}
    rows = []
    for endpoint in Endpoint.objects.order_by("pk"):
        figures = pending.get(endpoint.pk, {"n": 0, "oldest": None})
        state = _state(endpoint, now)
        rows.append({"endpoint": endpoint, "pending": figures["n"], "oldest": figures["oldest"], "state": state,
                     "limit_percent": figures["n"] * 100 / limit if limit else 0,
                     "failing": state != "healthy"})
    oldest = [r["oldest"] for r in rows if r["oldest"] is not None]
    return {"endpoints": rows, "pending": sum(r["pending"] for r in rows), "oldest": min(oldest) if oldest else None,
            "failing": sum(1 for r in rows if r["failing"]), "limit": limit}


def _state(endpoint, now) -> str:
    if not endpoint.enabled:
        return "off"
    if endpoint.breaker_until and endpoint.breaker_until > now:
        return "breaker"
    return "failing" if endpoint.consecutive_failures else "healthy"
