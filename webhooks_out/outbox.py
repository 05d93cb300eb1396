"""Writing events into the outbox, inside the caller's transaction.

Events that tracking, delivery and the audience record (opens, clicks,
bounces, sends, subscriptions) are copied into the outbox by database
triggers (see this app's migrations), so every way they are written, the fast
paths' SQL included, writes the outbox rows in the same transaction. Apps
above this one (automations) call ``publish``.
"""

import uuid

from django.db import connection
from django.utils import timezone

from webhooks_out.models import Endpoint, OutboxMessage

AUTOMATION_STEP = "automation_step"


def new_msg_id() -> str:
    return "msg_" + uuid.uuid4().hex


def endpoints_for(event_type: str) -> list[int]:
    if connection.vendor == "postgresql":
        return list(Endpoint.objects.filter(enabled=True, event_types__contains=[event_type]).values_list("id", flat=True))
    return [pk for pk, types in Endpoint.objects.filter(enabled=True).values_list("id", "event_types")
            if event_type in (types or [])]


def wanted(event_type: str) -> bool:
    return bool(endpoints_for(event_type))


def publish(event_type: str, items: list[dict], now=None) -> int:
    """One outbox row per item per endpoint that wants ``event_type``; how many rows."""
    now = now or timezone.now()
    stamp = now.isoformat()
    rows = [OutboxMessage(endpoint_id=endpoint, msg_id=new_msg_id(), event_type=event_type,
                          payload={"type": event_type, "timestamp": stamp, "data": data},
                          next_attempt_at=now, created_at=now)
            for endpoint in endpoints_for(event_type) for data in items]
    OutboxMessage.objects.bulk_create(rows, batch_size=2000)
    return len(rows)
