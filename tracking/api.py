"""API: campaign statistics, events, and the suppression list (with CSV import and export)."""

from datetime import datetime
from typing import Literal

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, File, Query, Router, Schema
from ninja.errors import HttpError
from ninja.files import UploadedFile
from ninja.pagination import LimitOffsetPagination, paginate
from pydantic import create_model

from campaigns.api_audience import ErrorOut
from campaigns.csvfiles import CsvRejected, TooLarge
from campaigns.models import Campaign, Suppression, email_key
from campaigns.suppression import suppress
from herald.permissions import requires
from tracking import winner
from tracking.models import Event
from tracking.stats import ENGAGEMENT, OUTCOMES, RATES, campaign_stats, variant_stats
from tracking.suppressions import check_email, check_reason, export_csv, import_csv

router = Router(tags=["tracking"])


class Pages(LimitOffsetPagination):
    """limit/offset with bounds, so a huge number is a 422 naming the field, not a database error."""

    class Input(Schema):
        limit: int = Field(100, ge=1, le=1000)
        offset: int = Field(0, ge=0, le=2**31)


class Figure(Schema):
    label: str
    count: int
    rate: float = Field(description="A fraction of the recipients (outcomes) or of the delivered (engagement).")


Outcomes = create_model(
    "Outcomes", __base__=Schema, __doc__="Each recipient counted once, by where it stands now: the counts add up to "
    "the recipients and the rates to 1.", **{key: (Figure, Field(description=meaning)) for key, _, meaning in OUTCOMES},
)
Engagement = create_model("Engagement", __base__=Schema, **{key: (Figure, ...) for key, _ in ENGAGEMENT})
DomainStats = create_model(
    "DomainStats", __base__=Schema, domain=(str, ...), recipients=(int, ...),
    **{key: (int, ...) for key, _, _ in OUTCOMES}, deferred_at_least_once=(int, ...),
    avg_latency_seconds=(float | None, ...),
)


class Rate(Schema):
    label: str
    count: int
    base: int = Field(description="The denominator: the recipients, or the delivered messages.")
    base_label: Literal["recipients", "delivered"]
    rate: float = Field(description="count / base, 0 when base is 0.")


Rates = create_model(
    "Rates", __base__=Schema, __doc__="The rates the campaign list, the dashboard and the CSV exports show.",
    **{key: (Rate, ...) for key, _, _, _ in RATES},
)


class Totals(Schema):
    opens: int
    clicks: int
    machine_clicks: int


class LinkStats(Schema):
    index: int
    url: str
    clicks: int
    unique_clicks: int
    machine_clicks: int


class Bucket(Schema):
    start: datetime = Field(description="Start of the bucket, in the operator's time zone.")
    label: str
    sent: int
    opens: int
    clicks: int
    bounces: int
    complaints: int
    unsubscribes: int


class Timeline(Schema):
    unit: Literal["minute", "hour", "day"]
    time_zone: str
    buckets: list[Bucket]


class RelayStats(Schema):
    relay_id: int | None = Field(description="None: delivered direct to the recipients' MX hosts.")
    relay: str
    sent: int
    bounced: int


class VariantFigures(Schema):
    number: int
    letter: str
    recipients: int = Field(description="Recipients who test this variant (the rest of the audience is not counted).")
    delivered: int
    openers: int = Field(description="People who opened or clicked; machine opens and clicks left out.")
    clickers: int
    open_rate: float
    click_rate: float
    click_to_open: float
    rate: float = Field(description="The rate by the test's metric.")
    leader: bool
    p_value: float | None = Field(description="Two-proportion z-test of this rate against the leader's (two-sided).")
    significant: bool = Field(description="p-value under 0.05.")


class VariantStats(Schema):
    metric: str
    metric_label: str
    test_share: int
    winner: int | None
    winner_letter: str
    winner_chosen_at: datetime | None
    winner_reason: str
    leader: int
    significant: bool = Field(description="The leader beats every other variant with p < 0.05.")
    summary: str = Field(description="In words, saying when the difference is not significant.")
    waiting_for_winner: int = Field(description="Recipients held until the winner is chosen.")
    after_test: int = Field(description="The rest of the audience, given the winner (not in the figures).")
    variants: list[VariantFigures]


class CampaignStatsOut(Schema):
    campaign_id: int
    name: str
    status: str
    recipients: int
    outcomes: Outcomes
    deferred_at_least_once: Figure
    engagement: Engagement
    rates: Rates
    totals: Totals
    links: list[LinkStats]
    timeline: Timeline
    domains: list[DomainStats]
    domains_truncated: bool
    relays: list[RelayStats]
    variants: VariantStats | None = Field(description="An A/B test's variants side by side; null without variants.")


@router.get("/campaigns/{campaign_id}/stats", response=CampaignStatsOut, summary="Campaign statistics",
            url_name="campaign_stats")
@requires("campaigns.view_campaign")
def stats(request, campaign_id: int):
    return campaign_stats(get_object_or_404(Campaign, pk=campaign_id))


class WinnerIn(Schema):
    variant: int = Field(ge=1, le=5, description="1 for A, 2 for B, …")


@router.post("/campaigns/{campaign_id}/winner", response={200: VariantStats, 409: ErrorOut},
             summary="Choose an A/B test's winner by hand; the rest of the audience gets it", url_name="campaign_winner")
@requires("campaigns.send_campaign")
def choose_winner(request, campaign_id: int, body: WinnerIn):
    get_object_or_404(Campaign, pk=campaign_id)
    try:
        campaign = winner.choose_by_hand(campaign_id, body.variant, user=request.user)
    except winner.WinnerError as exc:
        return 409, {"detail": str(exc)}
    return 200, variant_stats(campaign)


class EventOut(Schema):
    id: int
    type: str
    created_at: datetime
    campaign_id: int | None
    send_id: int | None
    contact_id: int | None
    email: str
    machine: bool
    url: str
    link_index: int | None
    status: str
    diagnostic: str
    user_agent: str
    source: str


class EventFilters(Schema):
    campaign: int | None = None
    type: str | None = None
    address: str | None = None


@router.get("/events", response=list[EventOut], summary="Events, newest first")
@paginate(Pages)
@requires("tracking.view_event")
def events(request, filters: Query[EventFilters]):
    rows = Event.objects.all()
    if filters.campaign is not None:
        rows = rows.filter(campaign_id=filters.campaign)
    if filters.type:
        if filters.type not in Event.Type.values:
            raise HttpError(422, f"type: {filters.type!r} is not one of {', '.join(Event.Type.values)}")
        rows = rows.filter(type=filters.type)
    if filters.address:
        rows = rows.filter(email__iexact=filters.address.strip())
    return rows.order_by("-created_at", "-id")


class SuppressionOut(Schema):
    email: str
    reason: str
    detail: str
    source_event_id: int | None
    created_at: datetime


class SuppressionIn(Schema):
    email: str
    reason: str = Suppression.Reason.MANUAL
    detail: str = ""


@router.get("/suppressions", response=list[SuppressionOut], summary="Suppressed addresses")
@paginate(Pages)
@requires("campaigns.view_suppression")
def suppressions(request, reason: str | None = None, q: str | None = None):
    rows = Suppression.objects.all()
    if reason:
        rows = rows.filter(reason=reason)
    if q:
        rows = rows.filter(email_key__contains=q.strip().lower())
    return rows.order_by("-created_at", "-id")


@router.post("/suppressions", response={201: SuppressionOut, 200: SuppressionOut}, summary="Suppress an address")
@requires("campaigns.add_suppression")
def add_suppression(request, payload: SuppressionIn):
    try:
        email = check_email(payload.email)
    except ValueError as exc:
        raise HttpError(422, f"email: {exc}")
    try:
        reason = check_reason(payload.reason)
    except ValueError as exc:
        raise HttpError(422, f"reason: {exc}")
    existed = Suppression.objects.filter(email_key=email_key(email)).exists()
    row = suppress(email, reason, payload.detail or f"added through the API by {request.user}")
    return (200 if existed else 201), row


class SuppressionImportOut(Schema):
    added: int
    existing: int
    invalid: int
    errors: list[str]


@router.post("/suppressions/import", response={200: SuppressionImportOut, 413: ErrorOut, 422: ErrorOut},
             summary="Import suppressions from CSV (email[,reason[,detail]]); over HERALD_IMPORT_MAX_BYTES is a 413")
@requires("campaigns.add_suppression")
def import_suppressions(request, file: File[UploadedFile]):
    try:
        result = import_csv(file)
    except TooLarge as exc:
        return _file_error(413, exc)
    except CsvRejected as exc:
        return _file_error(422, exc)
    return {"added": result.added, "existing": result.existing, "invalid": result.invalid, "errors": result.errors}


def _file_error(status, exc):
    return status, {"detail": f"file: {exc}", "errors": [{"field": "file", "message": str(exc)}]}


@router.get("/suppressions/export", summary="Export suppressions as CSV")
@requires("campaigns.view_suppression")
def export_suppressions(request):
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="suppressions.csv"'
    export_csv(Suppression.objects.all(), response)
    return response


# Declared last: its {email} pattern would otherwise swallow /suppressions/import and /export.
@router.delete("/suppressions/{email}", response={204: None}, summary="Lift a suppression")
@requires("campaigns.delete_suppression")
def remove_suppression(request, email: str):
    deleted, _ = Suppression.objects.filter(email_key=email_key(email)).delete()
    if not deleted:
        raise HttpError(404, f"{email} is not suppressed")
    return 204, None
