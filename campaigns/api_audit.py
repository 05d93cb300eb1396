"""GET /api/v1/audit: the audit log, newest first, filtered by action, actor, object and time."""

from datetime import datetime

from django.db.models import Q
from ninja import Field, Query, Router, Schema

from campaigns.api_audience import PageIn, _page
from campaigns.models import AuditEntry
from herald.permissions import requires

router = Router(tags=["audit"])


class AuditOut(Schema):
    id: int
    at: datetime
    actor: str = Field(description="user name; empty for the system")
    via: str
    address: str | None
    action: str
    object_type: str
    object_id: str
    object_repr: str
    detail: dict


class AuditPage(Schema):
    count: int
    page: int
    page_size: int
    items: list[AuditOut]


class AuditFilter(PageIn):
    action: str | None = Field(None, max_length=60, description="exact action, or a prefix ending in '.', e.g. 'campaign.'")
    actor: str | None = Field(None, max_length=150)
    object_type: str | None = Field(None, max_length=60)
    object_id: str | None = Field(None, max_length=40)
    since: datetime | None = None


@router.get("/audit", response=AuditPage, summary="The audit log of operator actions (append-only)")
@requires("campaigns.view_auditentry")
def audit_log(request, filters: Query[AuditFilter]):
    rows = AuditEntry.objects.all()
    if filters.action:
        rows = rows.filter(Q(action__startswith=filters.action) if filters.action.endswith(".")
                           else Q(action=filters.action))
    for name in ("actor", "object_type", "object_id"):
        if (value := getattr(filters, name)) is not None:
            rows = rows.filter(**{name: value})
    if filters.since:
        rows = rows.filter(at__gte=filters.since)
    return _page(rows, filters)
