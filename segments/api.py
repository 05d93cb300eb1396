"""API: segments (a JSON rule tree; see segments.rules), their counts and members; a campaign's audience and follow-ups.

A tree that does not check is answered 422 naming each condition at fault:
``{"detail": "rules.rules[1].op: ...", "errors": [{"field": "rules.rules[1].op", "message": ...}]}``.
"""

import datetime
from typing import Any, Literal

from django.db import transaction
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status

from campaigns.api_audience import ErrorOut, PageIn, _error, _page
from campaigns.api_content import CampaignOut
from campaigns.audience import mailable
from campaigns.models import Campaign, Contact, Segment
from delivery import audiences, planner
from herald.permissions import requires
from segments import followups
from segments.compiler import compile_rules, segment_q
from segments.rules import referenced_segments, validate

router = Router(tags=["segments"])

SAMPLE = 20


class SegmentIn(Schema):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    rules: dict[str, Any] = Field(description='A group: {"match": "all" | "any" | "none", "rules": [...]}')


class SegmentPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=5000)
    rules: dict[str, Any] | None = None


class SegmentOut(Schema):
    id: int
    name: str
    description: str
    rules: dict[str, Any]
    created_at: datetime.datetime
    updated_at: datetime.datetime


class RulesIn(Schema):
    rules: dict[str, Any]


class MemberOut(Schema):
    id: int
    email: str
    first_name: str
    last_name: str
    status: str


class CountOut(Schema):
    matching: int = Field(description="Contacts the rules match, whatever their status.")
    mailable: int = Field(description="Of those, the active and unsuppressed: who a campaign could reach.")
    sample: list[MemberOut] = []


class MemberPage(Schema):
    count: int
    page: int
    page_size: int
    items: list[MemberOut]


class AudienceOut(Schema):
    recipients: int = Field(description="Who a send now would reach, after exclusions, unsubscribes and suppressions.")
    notes: list[str] = Field(description="For a follow-up: who machine opens or clicks leave out or let in.")


class FollowUpIn(Schema):
    audience: Literal["not_opened", "not_clicked", "clicked"]
    subject: str = Field("", max_length=998, description="Empty: the original's subject.")
    delay_hours: float = Field(0, ge=0, le=24 * 365, description="Not sent before this long after the original ended.")
    machine_opens: bool = Field(False, description="Count opens and clicks by privacy proxies and link scanners.")
    variant: int | None = Field(None, ge=1, le=5, description="An A/B-tested original: only the recipients who got "
                                                           "this variant (1 = A), with its content.")


def _refusal(status, field, message):
    return Status(*_error(status, field, message))


def _field(error):
    """The request field an error is at: ``rules`` itself, or a place inside it."""
    return "rules" if error.path == "rules" else f"rules.{error.path}"


def _refused(errors):
    return Status(422, {"detail": f"{_field(errors[0])}: {errors[0].message}",
                 "errors": [{"field": _field(e), "message": e.message} for e in errors]})


def _counted(q, sample=SAMPLE):
    members = Contact.objects.filter(q)
    return {"matching": members.count(), "mailable": members.filter(mailable()).count(),
            "sample": list(members.order_by("id")[:sample])}


def _name_taken(name, own=None):
    return Segment.objects.filter(name=name).exclude(pk=own).exists()


@router.get("/segments", response=list[SegmentOut], summary="Segments")
@requires("campaigns.view_segment")
def list_segments(request):
    return Segment.objects.all()


@router.post("/segments", response={201: SegmentOut, 409: ErrorOut, 422: ErrorOut}, summary="Add a segment")
@requires("campaigns.add_segment")
def create_segment(request, payload: SegmentIn):
    name = payload.name.strip()
    if not name:
        return _refusal(422, "name", "must not be blank")
    errors = validate(payload.rules)
    if errors:
        return _refused(errors)
    if _name_taken(name):
        return _refusal(409, "name", f"a segment named {name!r} exists already")
    return Status(201, Segment.objects.create(name=name, description=payload.description, rules=payload.rules))


@router.post("/segments/preview", response={200: CountOut, 422: ErrorOut},
             summary="Count and sample for a rule tree not saved yet (what the rule builder shows as you edit)")
@requires("campaigns.view_segment")
def preview(request, payload: RulesIn):
    errors = validate(payload.rules)
    if errors:
        return _refused(errors)
    return Status(200, _counted(compile_rules(payload.rules)))


@router.get("/segments/{segment_id}", response=SegmentOut, summary="One segment")
@requires("campaigns.view_segment")
def get_segment(request, segment_id: int):
    return get_object_or_404(Segment, pk=segment_id)


@router.patch("/segments/{segment_id}", response={200: SegmentOut, 409: ErrorOut, 422: ErrorOut},
              summary="Change a segment")
@requires("campaigns.change_segment")
def update_segment(request, segment_id: int, payload: SegmentPatch):
    with transaction.atomic():
        segment = get_object_or_404(Segment.objects.select_for_update(), pk=segment_id)
        data = payload.dict(exclude_unset=True)
        if data.get("name") is not None:
            data["name"] = data["name"].strip()
            if not data["name"]:
                return _refusal(422, "name", "must not be blank")
            if _name_taken(data["name"], segment.pk):
                return _refusal(409, "name", f"a segment named {data['name']!r} exists already")
        if data.get("rules") is not None:
            errors = validate(data["rules"], segment.pk)
            if errors:
                return _refused(errors)
        for key, value in data.items():
            if value is not None:
                setattr(segment, key, value)
        segment.save()
    return Status(200, segment)


@router.delete("/segments/{segment_id}", response={204: None, 409: ErrorOut}, summary="Delete a segment")
@requires("campaigns.delete_segment")
def delete_segment(request, segment_id: int):
    segment = get_object_or_404(Segment, pk=segment_id)
    users = [s.name for s in Segment.objects.exclude(pk=segment.pk) if segment.pk in referenced_segments(s.rules)]
    if users:
        return _refusal(409, "id", f"segment(s) {', '.join(users)} name this one")
    campaigns = list(Campaign.objects.filter(segments=segment).values_list("pk", flat=True)[:10]) + list(
        Campaign.objects.filter(exclude_segments=segment).values_list("pk", flat=True)[:10])
    if campaigns:
        return _refusal(409, "id", f"campaign(s) {', '.join(map(str, sorted(set(campaigns))))} are aimed with it")
    segment.delete()
    return Status(204, None)


@router.get("/segments/{segment_id}/count", response=CountOut, summary="How many contacts a segment matches now, "
                                                                       "with a sample")
@requires("campaigns.view_segment")
def count_segment(request, segment_id: int):
    return _counted(segment_q(get_object_or_404(Segment, pk=segment_id)))


@router.get("/segments/{segment_id}/contacts", response=MemberPage, summary="The contacts a segment matches now")
@requires("campaigns.view_segment")
def segment_contacts(request, segment_id: int, page: Query[PageIn]):
    segment = get_object_or_404(Segment, pk=segment_id)
    return _page(Contact.objects.filter(segment_q(segment)).order_by("id"), page)


@router.get("/campaigns/{campaign_id}/audience", response=AudienceOut,
            summary="Who a send now would reach: the count the send confirmation shows")
@requires("campaigns.view_campaign")
def campaign_audience(request, campaign_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    return {"recipients": planner.count_audience(campaign), "notes": audiences.notes(campaign)}


@router.post("/campaigns/{campaign_id}/follow-up", response={201: CampaignOut, 409: ErrorOut},
             summary="A draft for the recipients who did not open, did not click, or clicked")
@requires("campaigns.add_campaign")
def follow_up(request, campaign_id: int, payload: FollowUpIn):
    original = get_object_or_404(Campaign, pk=campaign_id)
    try:
        follow = followups.create(original, payload.audience, subject=payload.subject.strip(),
                                  delay=datetime.timedelta(hours=payload.delay_hours),
                                  machine_opens=payload.machine_opens, variant=payload.variant)
    except followups.FollowUpError as exc:
        return _refusal(409, "status", str(exc))
    return Status(201, follow)
