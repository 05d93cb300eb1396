"""API: warm-up schedules, with today's allowance and usage per provider and the daily steps taken."""

from datetime import date, datetime

from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from delivery import warmup
from delivery.models import Warmup
from herald.permissions import requires

router = Router(tags=["warm-up"])

PRESETS = "^(" + "|".join(Warmup.Preset.values) + ")$"


class WarmupIn(Schema):
    identity: str = Field(min_length=3, max_length=255, description="The sending domain, e.g. news.example.com.")
    preset: str = Field(Warmup.Preset.STANDARD, pattern=PRESETS)
    stage: int = Field(0, ge=0, le=100, description="Start further along the schedule (0: its first day).")


class WarmupPatch(Schema):
    preset: str | None = Field(None, pattern=PRESETS)
    stage: int | None = Field(None, ge=0, le=100)


class StepOut(Schema):
    day: date
    action: str
    from_stage: int
    to_stage: int
    attempts: int
    hard_bounces: int
    complaints: int
    reason: str


class WarmupOut(Schema):
    id: int
    identity: str
    preset: str
    stage: int
    daily_allowance: int | None = Field(description="Per provider per day; null: no limit (off or complete).")
    schedule: list[int] = Field(description="Every stage's daily volume per provider, until the limit ends.")
    today: dict[str, int] = Field(description="Messages admitted today, per provider.")
    stepped_on: date | None
    reason: str
    steps: list[StepOut]
    created_at: datetime


def _out(row):
    state = warmup.status(row)
    return {"id": row.pk, "identity": row.identity, "preset": row.preset, "stage": row.stage,
            "daily_allowance": state.allowance, "schedule": state.schedule, "today": state.usage,
            "stepped_on": row.stepped_on, "reason": row.reason, "steps": list(row.steps.all()[:60]),
            "created_at": row.created_at}


def _identity(value):
    identity = value.strip().lower().rstrip(".")
    if "@" in identity or " " in identity or "." not in identity:
        raise HttpError(422, f"identity: {value!r} is not a domain name such as news.example.com")
    return identity


@router.get("/warmups", response=list[WarmupOut], summary="Warm-up schedules, with today's usage per provider")
@requires("delivery.view_warmup")
def list_warmups(request):
    return [_out(row) for row in Warmup.objects.all()]


@router.post("/warmups", response={201: WarmupOut}, summary="Put a sending domain on a warm-up schedule")
@requires("delivery.add_warmup")
def create_warmup(request, payload: WarmupIn):
    row = Warmup(identity=_identity(payload.identity), preset=payload.preset, stage=payload.stage)
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:
        raise HttpError(409, f"identity: {row.identity} already has a warm-up schedule") from None
    return 201, _out(row)


@router.get("/warmups/{warmup_id}", response=WarmupOut, summary="One warm-up schedule")
@requires("delivery.view_warmup")
def get_warmup(request, warmup_id: int):
    return _out(get_object_or_404(Warmup, pk=warmup_id))


@router.patch("/warmups/{warmup_id}", response=WarmupOut, summary="Change the preset (off ends the limit) or the stage")
@requires("delivery.change_warmup")
def update_warmup(request, warmup_id: int, payload: WarmupPatch):
    row = get_object_or_404(Warmup, pk=warmup_id)
    if payload.preset is not None:
        row.preset = payload.preset
    if payload.stage is not None:
        row.stage = payload.stage
    row.save()
    return _out(row)


@router.delete("/warmups/{warmup_id}", response={204: None}, summary="Remove a warm-up schedule: no daily limit")
@requires("delivery.delete_warmup")
def delete_warmup(request, warmup_id: int):
    get_object_or_404(Warmup, pk=warmup_id).delete()
    return 204, None
