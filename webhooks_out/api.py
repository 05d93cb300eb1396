"""API: outgoing webhook endpoints, their delivery log and redelivery.

    GET/POST        /webhooks                          endpoints (the secret is in the POST's answer only)
    GET/PATCH/DELETE /webhooks/{id}
    POST            /webhooks/{id}/rotate-secret       a new secret, shown once
    GET             /webhooks/{id}/deliveries          the delivery log, newest first
    GET             /webhooks/{id}/messages            the outbox rows (pending, delivered, failed)
    POST            /webhooks/{id}/redeliver           put rows back for delivery now
"""

from datetime import datetime

from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from herald.permissions import requires
from webhooks_out import deliver
from webhooks_out.models import EVENT_TYPES, DeliveryAttempt, Endpoint, OutboxMessage, new_secret

router = Router(tags=["webhooks"])


class EndpointIn(Schema):
    url: str = Field(min_length=8, max_length=2000)
    description: str = ""
    event_types: list[str] = Field(description=f"any of {', '.join(EVENT_TYPES)}")
    batch_size: int = Field(1, ge=1, le=1000)
    enabled: bool = True


class EndpointPatch(Schema):
    url: str | None = Field(None, min_length=8, max_length=2000)
    description: str | None = None
    event_types: list[str] | None = None
    batch_size: int | None = Field(None, ge=1, le=1000)
    enabled: bool | None = None


class EndpointOut(Schema):
    id: int
    url: str
    description: str
    event_types: list[str]
    batch_size: int
    enabled: bool
    disabled_reason: str
    consecutive_failures: int
    breaker_until: datetime | None
    pending: int


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="shown this once: keep it to verify signatures")


class AttemptOut(Schema):
    id: int
    webhook_id: str
    messages: list[int]
    ok: bool
    status_code: int | None
    latency_ms: int
    response: str
    created_at: datetime


class OutboxOut(Schema):
    id: int
    msg_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    payload: dict


class RedeliverIn(Schema):
    ids: list[int] = Field(default_factory=list, description="outbox rows; empty: every failed row")


class PageIn(Schema):
    limit: int = Field(100, ge=1, le=1000)
    status: str | None = None


def _out(endpoint: Endpoint, secret: str | None = None) -> dict:
    data = {f: getattr(endpoint, f) for f in ("id", "url", "description", "event_types", "batch_size", "enabled",
                                              "disabled_reason", "consecutive_failures", "breaker_until")}
    data["pending"] = endpoint.outbox.filter(status=OutboxMessage.Status.PENDING).count()
    if secret is not None:
        data["secret"] = secret
    return data


def _save(endpoint: Endpoint):
    try:
        endpoint.full_clean()
    except ValidationError as exc:
        field, problems = next(iter(exc.message_dict.items()))
        raise HttpError(422, f"{field}: {problems[0]}") from None
    endpoint.save()


@router.get("/webhooks", response=list[EndpointOut], summary="Outgoing webhook endpoints")
@requires("webhooks_out.view_endpoint")
def list_endpoints(request):
    return [_out(e) for e in Endpoint.objects.all()]


@router.post("/webhooks", response={201: EndpointWithSecret}, summary="Add an endpoint (its secret is shown once)")
@requires("webhooks_out.add_endpoint")
def create_endpoint(request, payload: EndpointIn):
    endpoint = Endpoint(**payload.dict(), secret=new_secret())
    _save(endpoint)
    return Status(201, _out(endpoint, endpoint.secret))


@router.get("/webhooks/{endpoint_id}", response=EndpointOut, summary="One endpoint")
@requires("webhooks_out.view_endpoint")
def get_endpoint(request, endpoint_id: int):
    return _out(get_object_or_404(Endpoint, pk=endpoint_id))


@router.patch("/webhooks/{endpoint_id}", response=EndpointOut, summary="Change an endpoint (enabling it clears its failures)")
@requires("webhooks_out.change_endpoint")
def update_endpoint(request, endpoint_id: int, payload: EndpointPatch):
    endpoint = get_object_or_404(Endpoint, pk=endpoint_id)
    changes = payload.dict(exclude_unset=True)
    for name, value in changes.items():
        setattr(endpoint, name, value)
    if changes.get("enabled"):
        endpoint.disabled_reason, endpoint.consecutive_failures = "", 0
        endpoint.failing_since = endpoint.breaker_until = None
    _save(endpoint)
    return _out(endpoint)


@router.delete("/webhooks/{endpoint_id}", response={204: None}, summary="Delete an endpoint and its outbox")
@requires("webhooks_out.delete_endpoint")
def delete_endpoint(request, endpoint_id: int):
    get_object_or_404(Endpoint, pk=endpoint_id).delete()
    return Status(204, None)


@router.post("/webhooks/{endpoint_id}/rotate-secret", response=EndpointWithSecret,
             summary="A new signing secret, shown once; the old one stops at once")
@requires("webhooks_out.change_endpoint")
def rotate_secret(request, endpoint_id: int):
    endpoint = get_object_or_404(Endpoint, pk=endpoint_id)
    secret = endpoint.rotate_secret()
    return _out(endpoint, secret)


@router.get("/webhooks/{endpoint_id}/deliveries", response=list[AttemptOut], summary="The delivery log, newest first")
@requires("webhooks_out.view_endpoint")
def deliveries(request, endpoint_id: int, page: Query[PageIn]):
    endpoint = get_object_or_404(Endpoint, pk=endpoint_id)
    return list(DeliveryAttempt.objects.filter(endpoint=endpoint).order_by("-id")[:page.limit])


@router.get("/webhooks/{endpoint_id}/messages", response=list[OutboxOut], summary="What the endpoint is owed or got")
@requires("webhooks_out.view_endpoint")
def outbox(request, endpoint_id: int, page: Query[PageIn]):
    rows = OutboxMessage.objects.filter(endpoint_id=get_object_or_404(Endpoint, pk=endpoint_id).pk).order_by("-id")
    if page.status:
        rows = rows.filter(status=page.status)
    return list(rows[:page.limit])


@router.post("/webhooks/{endpoint_id}/redeliver", response=dict[str, int], summary="Deliver rows again, now")
@requires("webhooks_out.change_endpoint")
def redeliver(request, endpoint_id: int, payload: RedeliverIn):
    endpoint = get_object_or_404(Endpoint, pk=endpoint_id)
    rows = endpoint.outbox.all()
    rows = rows.filter(id__in=payload.ids) if payload.ids else rows.filter(status=OutboxMessage.Status.FAILED)
    return {"redelivering": deliver.redeliver(rows.values_list("id", flat=True))}
