"""API: automations with their steps, manual enrolment, custom events of a contact.

    GET/POST  /automations                  list, create (with its steps)
    GET/PATCH /automations/{id}             one (steps and per-step statistics); change (steps replace the list)
    POST      /automations/{id}/pause|resume|migrate|enrol
    POST      /contacts/{id}/events         a custom event (``purchase`` with JSON) for event triggers
"""

import datetime
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.errors import HttpError

from automations import stats, triggers, versions
from automations.models import Automation, Step
from campaigns.models import Contact, Segment
from herald.permissions import requires

router = Router(tags=["automations"])


class StepIn(Schema):
    position: int | None = Field(None, ge=0, description="default: 10, 20, 30… in list order")
    kind: Literal["email", "wait", "branch", "update", "end"]
    template_id: int | None = None
    wait_seconds: int = Field(0, ge=0)
    wait_weekday: int | None = Field(None, ge=0, le=6)
    wait_time: datetime.time | None = None
    condition: Literal["", "opened", "clicked", "rules"] = ""
    rules: dict[str, Any] = {}
    else_position: int | None = Field(None, ge=0)
    update: dict[str, Any] = {}


class StepOut(StepIn):
    id: int
    position: int
    entered: int = Field(description="contacts who reached this step")
    waiting: int = Field(0, description="contacts at this step now (in its wait, or due to move on)")
    exited: int = Field(description="contacts who left the automation at this step (ended, finished, unsubscribed, "
                                    "suppressed or erased); entered = waiting + exited + went on")
    sent: int = 0
    opened: int = 0
    clicked: int = 0


class AutomationIn(Schema):
    name: str = Field(min_length=1, max_length=200)
    trigger: Literal["subscribed", "segment", "date", "clicked", "event", "manual"]
    status: Literal["draft", "active", "paused"] = "draft"
    mailing_list_id: int | None = None
    segment_id: int | None = None
    date_attribute: str = ""
    date_yearly: bool = True
    date_hour: int = Field(9, ge=0, le=23)
    link_url: str = ""
    event_name: str = ""
    reentry: Literal["once", "interval", "always"] = "once"
    reentry_days: int = Field(30, ge=1)
    steps: list[StepIn] = []


class AutomationPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=200)
    status: Literal["draft", "active", "paused"] | None = None
    reentry: Literal["once", "interval", "always"] | None = None
    reentry_days: int | None = Field(None, ge=1)
    steps: list[StepIn] | None = None


class AutomationOut(Schema):
    id: int
    name: str
    trigger: str
    status: str
    version: int
    mailing_list_id: int | None
    segment_id: int | None
    date_attribute: str
    date_yearly: bool
    date_hour: int
    link_url: str
    event_name: str
    reentry: str
    reentry_days: int
    enrolments: dict[str, int]
    steps: list[StepOut]


class EnrolIn(Schema):
    segment_id: int | None = None
    contact_ids: list[int] = []


class EventIn(Schema):
    name: str = Field(min_length=1, max_length=100, description="e.g. purchase")
    payload: dict[str, Any] = Field(default_factory=dict, description="what templates see as {{ data }}")


class EventOut(Schema):
    id: int
    contact_id: int
    name: str
    enrolled: int


def _out(automation: Automation) -> dict:
    figures = {row["step_id"]: row for row in stats.step_statistics(automation)}
    steps = []
    for step in automation.current_steps():
        row = {f: getattr(step, f) for f in ("id", "position", "kind", "template_id", "wait_seconds", "wait_weekday",
                                             "wait_time", "condition", "rules", "else_position", "update", "entered",
                                             "exited")}
        row.update({k: figures.get(step.pk, {}).get(k, 0) for k in ("waiting", "sent", "opened", "clicked")})
        steps.append(row)
    data = {f: getattr(automation, f) for f in ("id", "name", "trigger", "status", "version", "mailing_list_id",
                                                "segment_id", "date_attribute", "date_yearly", "date_hour", "link_url",
                                                "event_name", "reentry", "reentry_days")}
    return {**data, "enrolments": stats.enrolment_counts(automation), "steps": steps}


def _checked(obj, field_prefix=""):
    try:
        obj.full_clean(exclude=["automation"] if isinstance(obj, Step) else None)
    except ValidationError as exc:
        first = next(iter(exc.message_dict.items()))
        raise HttpError(422, f"{field_prefix}{first[0]}: {first[1][0]}") from None


def _replace_steps(automation: Automation, steps: list[StepIn]):
    versions.before_edit(automation)
    automation.refresh_from_db(fields=["version"])
    for old in automation.current_steps():
        if old.messages.exists():
            Step.objects.filter(pk=old.pk).update(version=0)  # retired: kept for the messages it sent
        else:
            old.delete()
    for n, item in enumerate(steps):
        data = item.dict()
        data["position"] = data["position"] if data["position"] is not None else (n + 1) * 10
        step = Step(automation=automation, version=automation.version, **data)
        _checked(step, f"steps[{n}].")
        step.save()


@router.get("/automations", response=list[AutomationOut], summary="Automations")
@requires("automations.view_automation")
def list_automations(request):
    return [_out(a) for a in Automation.objects.all()]


@router.post("/automations", response={201: AutomationOut}, summary="Add an automation with its steps")
@requires("automations.add_automation")
def create_automation(request, payload: AutomationIn):
    data = payload.dict(exclude={"steps"})
    with transaction.atomic():
        automation = Automation(**data)
        _checked(automation)
        try:
            automation.save()
        except IntegrityError:
            raise HttpError(409, "name: an automation of this name exists") from None
        _replace_steps(automation, payload.steps)
    return Status(201, _out(automation))


@router.get("/automations/{automation_id}", response=AutomationOut, summary="One automation, with per-step statistics")
@requires("automations.view_automation")
def get_automation(request, automation_id: int):
    return _out(get_object_or_404(Automation, pk=automation_id))


@router.patch("/automations/{automation_id}", response=AutomationOut,
              summary="Change an automation; steps replace its list (contacts mid-way keep theirs)")
@requires("automations.change_automation")
def update_automation(request, automation_id: int, payload: AutomationPatch):
    automation = get_object_or_404(Automation, pk=automation_id)
    with transaction.atomic():
        for name, value in payload.dict(exclude_unset=True, exclude={"steps"}).items():
            setattr(automation, name, value)
        _checked(automation)
        automation.save()
        if payload.steps is not None:
            _replace_steps(automation, payload.steps)
    return _out(automation)


def _set_status(automation_id, status):
    automation = get_object_or_404(Automation, pk=automation_id)
    automation.status = status
    automation.save(update_fields=["status", "watermark", "updated_at"])
    return _out(automation)


@router.post("/automations/{automation_id}/pause", response=AutomationOut, summary="Pause: contacts wait where they are")
@requires("automations.change_automation")
def pause(request, automation_id: int):
    return _set_status(automation_id, Automation.Status.PAUSED)


@router.post("/automations/{automation_id}/resume", response=AutomationOut, summary="Activate or resume")
@requires("automations.change_automation")
def resume(request, automation_id: int):
    return _set_status(automation_id, Automation.Status.ACTIVE)


@router.post("/automations/{automation_id}/migrate", response=AutomationOut,
             summary="Move contacts mid-way onto the current steps")
@requires("automations.change_automation")
def migrate(request, automation_id: int):
    automation = get_object_or_404(Automation, pk=automation_id)
    versions.migrate(automation)
    return _out(automation)


@router.post("/automations/{automation_id}/enrol", response=dict[str, int],
             summary="Enrol a segment or contacts by hand (the re-entry rule applies)")
@requires("automations.change_automation")
def enrol(request, automation_id: int, payload: EnrolIn):
    automation = get_object_or_404(Automation, pk=automation_id)
    if automation.status == Automation.Status.DRAFT:
        raise HttpError(409, "status: activate the automation before enrolling contacts")
    entered = 0
    if payload.segment_id is not None:
        entered += triggers.enrol_segment(automation, get_object_or_404(Segment, pk=payload.segment_id))
    if payload.contact_ids:
        from automations.enrol import enrol as enrol_contacts

        entered += enrol_contacts(automation, payload.contact_ids)
    return {"enrolled": entered}


@router.post("/contacts/{contact_id}/events", response={201: EventOut},
             summary="Record a custom event; automations waiting for its name enrol the contact")
@requires("automations.add_contactevent")
def post_event(request, contact_id: int, payload: EventIn):
    contact = get_object_or_404(Contact, pk=contact_id)
    event, entered = triggers.record_event(contact, payload.name, payload.payload)
    return Status(201, {"id": event.pk, "contact_id": contact.pk, "name": event.name, "enrolled": entered})
