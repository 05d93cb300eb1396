"""API: relays (with check), domain throttles, and the campaign send actions.

Passwords are write-only: they are accepted on create and update, never
returned; an update that leaves ``password`` out keeps the stored one.
"""

from datetime import datetime

from django.db import IntegrityError
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.errors import HttpError

from campaigns import presend
from campaigns.models import Campaign
from delivery import health, lifecycle, routing
from delivery.lifecycle import LifecycleError
from delivery.models import DomainThrottle, Period, Relay
from delivery.relaycheck import check_relay
from delivery.throttle import throttles
from herald.permissions import requires

router = Router(tags=["delivery"])

SECURITY = tuple(Relay.Security.values)
PERIODS = tuple(Period.values)
# No control characters (PostgreSQL cannot even store NUL); host names as DNS has them.
TEXT = r"^[^\x00-\x1f\x7f]*$"
HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$"
HELO = r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)?$"
DOMAINS = r"^[A-Za-z0-9.,\s-]*$"
WRITE_ONLY = "Write-only; leave out to keep the stored password."
MAX_INT = 2**31 - 1  # PositiveIntegerField


class RelayIn(Schema):
    name: str = Field(min_length=1, max_length=100, pattern=TEXT)
    host: str = Field(min_length=1, max_length=255, pattern=HOST)
    port: int = Field(587, ge=1, le=65535)
    security: str = Field("starttls", pattern="^(" + "|".join(SECURITY) + ")$")
    verify_certificate: bool = True
    username: str = Field("", max_length=255, pattern=TEXT)
    password: str | None = Field(None, max_length=1000, pattern=TEXT, description=WRITE_ONLY)
    helo_name: str = Field("", max_length=255, pattern=HELO)
    max_connections: int = Field(8, ge=1, le=MAX_INT)
    messages_per_connection: int = Field(1000, ge=1, le=MAX_INT)
    idle_timeout: int = Field(30, ge=1, le=MAX_INT)
    rate: int = Field(0, ge=0, le=MAX_INT)
    rate_period: str = Field("second", pattern="^(" + "|".join(PERIODS) + ")$")
    weight: int = Field(1, ge=0, le=MAX_INT, description="Share of its groups' messages, relative to the others'.")
    enabled: bool = True


class RelayPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=100, pattern=TEXT)
    host: str | None = Field(None, min_length=1, max_length=255, pattern=HOST)
    port: int | None = Field(None, ge=1, le=65535)
    security: str | None = Field(None, pattern="^(" + "|".join(SECURITY) + ")$")
    verify_certificate: bool | None = None
    username: str | None = Field(None, max_length=255, pattern=TEXT)
    password: str | None = Field(None, max_length=1000, pattern=TEXT, description=WRITE_ONLY)
    helo_name: str | None = Field(None, max_length=255, pattern=HELO)
    max_connections: int | None = Field(None, ge=1, le=MAX_INT)
    messages_per_connection: int | None = Field(None, ge=1, le=MAX_INT)
    idle_timeout: int | None = Field(None, ge=1, le=MAX_INT)
    rate: int | None = Field(None, ge=0, le=MAX_INT)
    rate_period: str | None = Field(None, pattern="^(" + "|".join(PERIODS) + ")$")
    weight: int | None = Field(None, ge=0, le=MAX_INT)
    enabled: bool | None = None


class RelayOut(Schema):
    id: int
    name: str
    host: str
    port: int
    security: str
    verify_certificate: bool
    username: str
    has_password: bool
    helo_name: str
    max_connections: int
    messages_per_connection: int
    idle_timeout: int
    rate: int
    rate_period: str
    weight: int
    enabled: bool

    @staticmethod
    def resolve_has_password(obj):
        return bool(obj.password)


class Reply(Schema):
    at: float = Field(description="Unix time.")
    code: int | None = Field(description="None: no reply (the connection, TLS or login failed).")
    text: str


class RelayHealthOut(Schema):
    id: int
    name: str
    state: str = Field(description="up, down (in its backoff: its messages go to the other relays of its groups), "
                                    "retrying (its backoff ended; the next connection tells) or disabled")
    failures: int = Field(description="Failures in a row.")
    reason: str
    retry_in: float = Field(description="Seconds until it is tried again, when down.")
    rate: float = Field(description="Messages per second now (averaged over the last seconds).")
    connections: int = Field(description="Connections in use across all workers.")
    max_connections: int
    replies: list[Reply] = Field(description="Its latest replies, newest first.")


class CheckOut(Schema):
    ok: bool
    message: str
    steps: list[str]


class ThrottleIn(Schema):
    name: str = Field(min_length=1, max_length=100, pattern=TEXT)
    domains: str = Field("", max_length=10000, pattern=DOMAINS, description="Comma- or newline-separated domains.")
    is_default: bool = False
    rate: int = Field(10, ge=1, le=MAX_INT)
    period: str = Field("second", pattern="^(" + "|".join(PERIODS) + ")$")
    burst: int = Field(0, ge=0, le=MAX_INT)
    max_connections: int = Field(5, ge=1, le=MAX_INT)


class ThrottlePatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=100, pattern=TEXT)
    domains: str | None = Field(None, max_length=10000, pattern=DOMAINS)
    is_default: bool | None = None
    rate: int | None = Field(None, ge=1, le=MAX_INT)
    period: str | None = Field(None, pattern="^(" + "|".join(PERIODS) + ")$")
    burst: int | None = Field(None, ge=0, le=MAX_INT)
    max_connections: int | None = Field(None, ge=1, le=MAX_INT)


class ThrottleOut(Schema):
    id: int
    name: str
    domains: list[str]
    is_default: bool
    rate: int
    period: str
    burst: int
    max_connections: int

    @staticmethod
    def resolve_domains(obj):
        return obj.domain_list()


class ScheduleIn(Schema):
    scheduled_at: datetime


class ResumeIn(Schema):
    acknowledge: bool = Field(False, description="Required as true to resume a campaign the circuit breaker paused: "
                                                 "the operator has read the figures in status_reason.")


class CampaignProgress(Schema):
    id: int
    status: str
    status_reason: str
    started_at: datetime | None
    finished_at: datetime | None
    recipients: int = Field(description="Recipients snapshotted so far while starting; all of them once sending.")
    snapshot: float = Field(ge=0, le=1, description="Share of the audience snapshot done: 0 before the start, 1 once sending.")
    counts: dict[str, int]


def _save(obj, data, unique_field="name"):
    for key, value in data.items():
        setattr(obj, key, value)
    try:
        obj.save()
    except IntegrityError:
        raise HttpError(409, f"{unique_field}: a {obj._meta.verbose_name} with this {unique_field} already exists") from None
    routing.forget_relay()
    throttles.invalidate()
    return obj


# --- relays ----------------------------------------------------------------------

@router.get("/relays", response=list[RelayOut], summary="SMTP relays")
@requires("delivery.view_relay")
def list_relays(request):
    return Relay.objects.all()


@router.post("/relays", response={201: RelayOut}, summary="Add a relay")
@requires("delivery.add_relay")
def create_relay(request, payload: RelayIn):
    data = payload.dict()
    data["password"] = data.get("password") or ""
    return Status(201, _save(Relay(), data))


# Before /relays/{relay_id}, which would take "health" for an id.
def _health(relay):
    return {"id": relay.pk, "name": relay.name, "max_connections": relay.max_connections, **health.status(relay)}


@router.get("/relays/health", response=list[RelayHealthOut], summary="Each relay's health, rate, connections and replies")
@requires("delivery.view_relay")
def relays_health(request):
    return [_health(relay) for relay in Relay.objects.all()]


@router.get("/relays/{relay_id}/health", response=RelayHealthOut, summary="One relay's health, rate, connections and replies")
@requires("delivery.view_relay")
def relay_health(request, relay_id: int):
    return _health(get_object_or_404(Relay, pk=relay_id))


@router.get("/relays/{relay_id}", response=RelayOut, summary="One relay")
@requires("delivery.view_relay")
def get_relay(request, relay_id: int):
    return get_object_or_404(Relay, pk=relay_id)


@router.patch("/relays/{relay_id}", response=RelayOut, summary="Change a relay (password only when given)")
@requires("delivery.change_relay")
def update_relay(request, relay_id: int, payload: RelayPatch):
    relay = get_object_or_404(Relay, pk=relay_id)
    data = payload.dict(exclude_unset=True)
    if not data.get("password"):
        data.pop("password", None)  # blank keeps the stored password
    return _save(relay, {k: v for k, v in data.items() if v is not None})


@router.delete("/relays/{relay_id}", response={204: None}, summary="Delete a relay")
@requires("delivery.delete_relay")
def delete_relay(request, relay_id: int):
    get_object_or_404(Relay, pk=relay_id).delete()
    routing.forget_relay()
    return Status(204, None)


@router.post("/relays/{relay_id}/check", response=CheckOut, summary="Connect, negotiate TLS, authenticate; say what happened")
@requires("delivery.change_relay")
def check(request, relay_id: int):
    return check_relay(get_object_or_404(Relay, pk=relay_id)).as_dict()


# --- throttles -------------------------------------------------------------------

@router.get("/throttles", response=list[ThrottleOut], summary="Domain throttles")
@requires("delivery.view_domainthrottle")
def list_throttles(request):
    return DomainThrottle.objects.all()


@router.post("/throttles", response={201: ThrottleOut}, summary="Add a domain throttle")
@requires("delivery.add_domainthrottle")
def create_throttle(request, payload: ThrottleIn):
    _check_default(payload.is_default, None)
    return Status(201, _save(DomainThrottle(), payload.dict()))


@router.get("/throttles/{throttle_id}", response=ThrottleOut, summary="One domain throttle")
@requires("delivery.view_domainthrottle")
def get_throttle(request, throttle_id: int):
    return get_object_or_404(DomainThrottle, pk=throttle_id)


@router.patch("/throttles/{throttle_id}", response=ThrottleOut, summary="Change a domain throttle")
@requires("delivery.change_domainthrottle")
def update_throttle(request, throttle_id: int, payload: ThrottlePatch):
    row = get_object_or_404(DomainThrottle, pk=throttle_id)
    data = {k: v for k, v in payload.dict(exclude_unset=True).items() if v is not None}
    _check_default(data.get("is_default"), row.pk)
    return _save(row, data)


@router.delete("/throttles/{throttle_id}", response={204: None}, summary="Delete a domain throttle")
@requires("delivery.delete_domainthrottle")
def delete_throttle(request, throttle_id: int):
    get_object_or_404(DomainThrottle, pk=throttle_id).delete()
    throttles.invalidate()
    return Status(204, None)


def _check_default(is_default, own_pk):
    if is_default and DomainThrottle.objects.filter(is_default=True).exclude(pk=own_pk).exists():
        raise HttpError(409, "is_default: another throttle is already the default")


# --- campaign actions -------------------------------------------------------------

def _checked(campaign_id):
    """Refuse (422) to send or schedule a campaign the pre-send check blocks (campaigns.presend)."""
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is not None and (blocked := presend.refusal(campaign)):
        raise HttpError(422, f"content: {blocked}")
    return campaign_id


def _act(request, action, *args):
    try:
        campaign = action(*args)
    except LifecycleError as exc:
        if "does not exist" in str(exc):
            raise HttpError(404, str(exc)) from None
        raise HttpError(409, str(exc)) from None
    return lifecycle.progress(campaign.pk)


@router.post("/campaigns/{campaign_id}/send", response={202: CampaignProgress},
             summary="Send now: answers at once with status starting; a worker snapshots the audience, then it sends")
@requires("campaigns.send_campaign")
def send(request, campaign_id: int):
    """The content is frozen now. Follow ``progress``: ``recipients`` grows while starting, then the counts."""
    return Status(202, _act(request, lifecycle.start_in_background, _checked(campaign_id)))


@router.post("/campaigns/{campaign_id}/schedule", response=CampaignProgress, summary="Send at a time")
@requires("campaigns.send_campaign")
def schedule(request, campaign_id: int, payload: ScheduleIn):
    return _act(request, lifecycle.schedule_campaign, _checked(campaign_id), payload.scheduled_at)


@router.post("/campaigns/{campaign_id}/pause", response=CampaignProgress, summary="Pause sending")
@requires("campaigns.send_campaign")
def pause(request, campaign_id: int):
    return _act(request, lifecycle.pause_campaign, campaign_id)


@router.post("/campaigns/{campaign_id}/resume", response=CampaignProgress, summary="Resume sending",
             description="A campaign the circuit breaker paused resumes only with {\"acknowledge\": true}; "
                         "without it the answer is 409 and names the figures.",
             openapi_extra={"requestBody": {"required": False, "content": {
                 "application/json": {"schema": ResumeIn.model_json_schema()}}}})
@requires("campaigns.send_campaign")
def resume(request, campaign_id: int):
    return _act(request, lifecycle.resume_campaign, campaign_id, _resume_in(request).acknowledge)


def _resume_in(request) -> ResumeIn:
    """The body is optional (a plain resume sends none, or an empty form), so it is read here rather than by the router."""
    if request.content_type != "application/json" or not request.body.strip():
        return ResumeIn()
    try:
        return ResumeIn.model_validate_json(request.body)
    except ValueError as exc:
        raise HttpError(422, f"acknowledge: must be true or false ({str(exc).splitlines()[-1].strip()})") from None


@router.post("/campaigns/{campaign_id}/cancel", response=CampaignProgress, summary="Cancel: unsent recipients are not mailed")
@requires("campaigns.send_campaign")
def cancel(request, campaign_id: int):
    return _act(request, lifecycle.cancel_campaign, campaign_id)


@router.get("/campaigns/{campaign_id}/progress", response=CampaignProgress, summary="Status and counts by send status")
@requires("campaigns.view_campaign")
def progress(request, campaign_id: int):
    try:
        return lifecycle.progress(campaign_id)
    except LifecycleError as exc:
        raise HttpError(404, str(exc)) from None
