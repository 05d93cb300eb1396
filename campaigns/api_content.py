"""API: templates and campaigns (CRUD), test sends, previews and a campaign's links.

A template that does not compile, a literal header field with a line break or
an invalid address is answered 422 with ``detail`` naming the field and line
(``html_body, line 3: unexpected '}'``) and ``errors`` listing every problem.
The send actions (send, schedule, pause, resume, cancel) live with the engine.

Test sends and previews build the real message, which is the delivery layer's
job; campaigns never imports delivery, so they are looked up by dotted path
at call time, as Send counts are looked up through the app registry.
"""

from datetime import date, datetime, time, timedelta
from typing import Literal

from django.apps import apps
from django.db import models
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.module_loading import import_string
from email_validator import EmailNotValidError, validate_email
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from campaigns import presend, rendering
from campaigns.models import (
    Campaign,
    CampaignLink,
    CampaignVariant,
    Contact,
    MailingList,
    PassedZones,
    Segment,
    Template,
    WinnerMetric,
)
from campaigns.preview import sample_contact
from herald.permissions import requires

router = Router(tags=["content"])

# Once a campaign starts, its content is frozen (campaigns.models.CampaignContent):
# every recipient gets the same message, pause or not. Changes go into a new campaign.
EDITABLE = {Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.MISSED}


class ErrorItem(Schema):
    field: str
    line: int | None = None
    message: str


class ContentErrorOut(Schema):
    """Herald's 422: ``detail`` names field and line, ``errors`` lists each problem.

    Request validation by django-ninja answers 422 too, with ``detail`` as a
    list of ``{loc, msg, type}``: the schema admits both.
    """

    detail: str | list[dict]
    errors: list[ErrorItem] | None = None


FORMAT_HELP = "html, markdown or mjml: the language of html (and of the bodies of campaigns that use it)"
LAYOUT_HELP = "markdown only: the id of the HTML or MJML template its text goes into (the default layout when null)"


class TemplateIn(Schema):
    name: str = Field(min_length=1, max_length=200)
    format: Literal["html", "markdown", "mjml"] = Field("html", description=FORMAT_HELP)
    html: str = Field(min_length=1)
    text: str = ""
    layout_id: int | None = Field(None, description=LAYOUT_HELP)


class TemplatePatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=200)
    format: Literal["html", "markdown", "mjml"] | None = Field(None, description=FORMAT_HELP)
    html: str | None = Field(None, min_length=1)
    text: str | None = None
    layout_id: int | None = Field(None, description=LAYOUT_HELP)


class TemplateOut(Schema):
    id: int
    name: str
    format: str
    html: str
    text: str
    layout_id: int | None
    created_at: datetime
    updated_at: datetime


class VariantIn(Schema):
    number: int = Field(ge=1, le=5, description="1 for A, 2 for B, …")
    subject: str = Field("", max_length=998, description="Blank: the campaign's.")
    preheader: str = Field("", max_length=300)
    from_name: str = Field("", max_length=200)
    html_body: str = ""
    text_body: str = ""


class VariantOut(VariantIn):
    letter: str


Metric = Literal[tuple(WinnerMetric.values)]
Passed = Literal[tuple(PassedZones.values)]


class ScheduleFields(Schema):
    """A/B testing and local-time delivery; sent with a campaign, each may be left out."""

    test_share: int = Field(20, ge=1, le=100, description="Percent of the audience testing the variants; 100: all.")
    winner_metric: Metric = Field("opens", description="opens, clicks, click_to_open or manual")
    winner_wait: timedelta | None = Field(None, description="How long the test runs (ISO 8601 or seconds).")
    local_date: date | None = Field(None, description="Local-time delivery: the date …")
    local_time: time | None = Field(None, description="… and the time of day in each recipient's zone.")
    passed_zones: Passed = Field("now", description="Zones whose time has passed at the start: now or next_day.")
    quiet_start: time | None = None
    quiet_end: time | None = None


class CampaignIn(ScheduleFields):
    name: str = Field(min_length=1, max_length=200)
    subject: str = Field(min_length=1, max_length=998)
    from_name: str = Field("", max_length=200)
    from_email: str = Field(min_length=3, max_length=320)
    reply_to: str = Field("", max_length=320)
    html_body: str = ""
    text_body: str = ""
    template_id: int | None = None
    lists: list[int] = []
    segments: list[int] = []
    exclude_lists: list[int] = []
    exclude_segments: list[int] = []
    track_opens: bool = True
    track_clicks: bool = True
    variants: list[VariantIn] = Field([], max_length=5, description="None, or 2 to 5 A/B variants.")


class CampaignPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=200)
    subject: str | None = Field(None, min_length=1, max_length=998)
    from_name: str | None = Field(None, max_length=200)
    from_email: str | None = Field(None, min_length=3, max_length=320)
    reply_to: str | None = Field(None, max_length=320)
    html_body: str | None = None
    text_body: str | None = None
    template_id: int | None = None
    lists: list[int] | None = None
    segments: list[int] | None = None
    exclude_lists: list[int] | None = None
    exclude_segments: list[int] | None = None
    track_opens: bool | None = None
    track_clicks: bool | None = None
    test_share: int | None = Field(None, ge=1, le=100)
    winner_metric: Metric | None = None
    winner_wait: timedelta | None = None
    local_date: date | None = None
    local_time: time | None = None
    passed_zones: Passed | None = None
    quiet_start: time | None = None
    quiet_end: time | None = None
    variants: list[VariantIn] | None = Field(None, max_length=5, description="Replaces every variant.")


class CampaignOut(ScheduleFields):
    id: int
    name: str
    subject: str
    from_name: str
    from_email: str
    reply_to: str
    html_body: str
    text_body: str
    template_id: int | None
    lists: list[int]
    segments: list[int]
    exclude_lists: list[int]
    exclude_segments: list[int]
    follow_up_of: int | None = Field(None, description="The campaign this one follows up, if any.")
    follow_up_audience: str = Field("", description="not_opened, not_clicked or clicked, for a follow-up.")
    follow_up_machine_opens: bool
    follow_up_variant: int | None = Field(None, description="Only the recipients who got this variant (1 = A).")
    not_before: datetime | None
    status: str
    status_reason: str
    scheduled_at: datetime | None
    track_opens: bool
    track_clicks: bool
    variants: list[VariantOut]
    winner: int | None = Field(None, description="The A/B test's winner (1 for A …), once chosen.")
    waves: list[dict] = Field([], description="Local-time release waves: at, recipients, zones.")
    total: int
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_lists(obj):
        return sorted(m.pk for m in obj.lists.all())

    @staticmethod
    def resolve_segments(obj):
        return sorted(m.pk for m in obj.segments.all())

    @staticmethod
    def resolve_exclude_lists(obj):
        return sorted(m.pk for m in obj.exclude_lists.all())

    @staticmethod
    def resolve_exclude_segments(obj):
        return sorted(m.pk for m in obj.exclude_segments.all())

    @staticmethod
    def resolve_follow_up_of(obj):
        return obj.follow_up_of_id

    @staticmethod
    def resolve_variants(obj):
        return [{**v.frozen(), "letter": v.letter} for v in obj.variants.all()]


class CampaignDetail(CampaignOut):
    counts: dict[str, int]

    @staticmethod
    def resolve_counts(obj):
        return send_counts(obj.pk)


class TestIn(Schema):
    addresses: list[str] = Field(min_length=1, max_length=10)
    variant: int | None = Field(None, ge=1, le=5, description="An A/B test's variant to send (1 = A); "
                                                              "empty: the campaign's own content.")


class TestResultOut(Schema):
    address: str
    ok: bool
    detail: str
    status: str = Field("", description="sent, failed, invalid, suppressed (not mailed) or throttled (try again later)")


class PreviewOut(Schema):
    subject: str
    from_: str = Field(alias="from")
    to: str
    headers: str
    text: str
    html: str
    missing: list[str]
    size: int


class FindingOut(Schema):
    code: str = Field(description="no_unsubscribe, html_size, image_alt, image_only, plain_http, broken_link, "
                                  "subject_length, subject_empty, subject_spam or template_error")
    message: str
    blocks: bool = Field(description="True when the campaign cannot be sent until it is fixed")


class LinkOut(Schema):
    index: int
    url: str


def send_counts(campaign_id):
    """Sends per status, every status present: one aggregate query on delivery's Send."""
    send = apps.get_model("delivery", "Send")
    counts = dict.fromkeys(send.Status.values, 0)
    rows = send.objects.filter(campaign_id=campaign_id).values("status").annotate(n=models.Count("id")).order_by()
    for row in rows:
        counts[row["status"]] = row["n"]
    return counts


def _unprocessable(errors):
    items = [{"field": e.field, "line": e.line, "message": e.message} for e in errors]
    return 422, {"detail": "; ".join(str(e) for e in errors), "errors": items}


def _check_address(value, field, errors, required=True):
    if not value and not required:
        return
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        errors.append(rendering.ContentError(field, f"not a valid address: {exc}"))


# The campaign's audience: each a list of ids of the model named.
AUDIENCE = {"lists": MailingList, "segments": Segment, "exclude_lists": MailingList, "exclude_segments": Segment}


def _pop_audience(data) -> dict:
    return {key: data.pop(key, None) for key in AUDIENCE}


def _set_audience(campaign, audience):
    for key, ids in audience.items():
        if ids is not None:
            getattr(campaign, key).set(ids)


def _audience_errors(audience):
    errors = []
    for key, ids in audience.items():
        model = AUDIENCE[key]
        unknown = sorted(set(ids or []) - set(model.objects.filter(pk__in=ids or []).values_list("pk", flat=True)))
        if unknown:
            what = "list" if model is MailingList else "segment"
            errors.append(rendering.ContentError(key, f"no {what} with id {', '.join(map(str, unknown))}"))
    return errors


def _pop_variants(data):
    variants = data.pop("variants", None)
    return None if variants is None else [dict(v) for v in variants]


def _variant_errors(variants):
    if variants is None:
        return []
    errors = []
    numbers = [v["number"] for v in variants]
    if len(variants) == 1:
        errors.append(rendering.ContentError("variants", "an A/B test needs 2 to 5 variants (or none)"))
    if len(set(numbers)) != len(numbers):
        errors.append(rendering.ContentError("variants", "each variant needs a number of its own"))
    for v in variants:
        for problem in rendering.validate_campaign_fields(v["subject"], v["from_name"], v["html_body"], v["text_body"],
                                                          "a@example.com", ""):
            errors.append(rendering.ContentError(f"variants[{v['number']}].{problem.field}", problem.message,
                                                 problem.line))
    return errors


def _set_variants(campaign, variants):
    if variants is not None:
        campaign.variants.all().delete()
        CampaignVariant.objects.bulk_create([CampaignVariant(campaign=campaign, **v) for v in variants])


def _campaign_errors(campaign, audience):
    errors = rendering.validate_campaign_fields(campaign.subject, campaign.from_name, campaign.html_body,
                                                campaign.text_body, campaign.from_email, campaign.reply_to)
    if not any(e.field == "from_email" for e in errors):
        _check_address(campaign.from_email, "from_email", errors)
    if not any(e.field == "reply_to" for e in errors):
        _check_address(campaign.reply_to, "reply_to", errors, required=False)
    if campaign.template_id is not None and not Template.objects.filter(pk=campaign.template_id).exists():
        errors.append(rendering.ContentError("template_id", f"no template with id {campaign.template_id}"))
    errors.extend(_audience_errors(audience))
    if not (campaign.html_body or "").strip() and not (campaign.text_body or "").strip():
        errors.append(rendering.ContentError("html_body", "a campaign needs an HTML body or a text body"))
    return errors


# --- templates ---------------------------------------------------------------


@router.get("/templates", response=list[TemplateOut], summary="Layouts")
@requires("campaigns.view_template")
def list_templates(request):
    return Template.objects.all()


@router.post("/templates", response={201: TemplateOut, 409: dict, 422: ContentErrorOut}, summary="Add a layout")
@requires("campaigns.add_template")
def create_template(request, payload: TemplateIn):
    template = Template(**payload.dict())
    errors = _template_errors(template)
    if errors:
        return _unprocessable(errors)
    if Template.objects.filter(name=payload.name).exists():
        return 409, {"detail": f"name: a template named {payload.name!r} already exists"}
    template.save()
    return 201, template


def _template_errors(template):
    """Errors of a template's sources in its format, and of its layout (Markdown only; HTML or MJML, not itself)."""
    if template.format != "markdown":
        template.layout_id = None
    layout = None
    if template.layout_id is not None:
        layout = Template.objects.filter(pk=template.layout_id).exclude(format="markdown").first()
        if layout is None or layout.pk == template.pk:
            return [rendering.ContentError("layout_id", f"no HTML or MJML template with id {template.layout_id}")]
    return rendering.validate_template_row(template.html, template.text, template.format, layout)


@router.get("/templates/{template_id}", response=TemplateOut, summary="One layout")
@requires("campaigns.view_template")
def get_template(request, template_id: int):
    return get_object_or_404(Template, pk=template_id)


@router.patch("/templates/{template_id}", response={200: TemplateOut, 409: dict, 422: ContentErrorOut},
              summary="Change a layout")
@requires("campaigns.change_template")
def update_template(request, template_id: int, payload: TemplatePatch):
    template = get_object_or_404(Template, pk=template_id)
    for key, value in payload.dict(exclude_unset=True).items():
        if value is not None or key == "layout_id":
            setattr(template, key, value)
    errors = _template_errors(template)
    if errors:
        return _unprocessable(errors)
    if Template.objects.filter(name=template.name).exclude(pk=template.pk).exists():
        return 409, {"detail": f"name: a template named {template.name!r} already exists"}
    template.save()
    return 200, template


@router.delete("/templates/{template_id}", response={204: None, 409: dict}, summary="Delete a layout")
@requires("campaigns.delete_template")
def delete_template(request, template_id: int):
    template = get_object_or_404(Template, pk=template_id)
    used = list(Campaign.objects.filter(template=template).values_list("pk", flat=True)[:10])
    if used:
        return 409, {"detail": f"template is used by campaign(s) {', '.join(map(str, used))}"}
    template.delete()
    return 204, None


# --- campaigns ---------------------------------------------------------------


def frozen_reason(campaign) -> str:
    return (f"status: campaign {campaign.pk} is {campaign.status}, and a campaign's content is frozen when it starts "
            "sending, so that every recipient gets the same message; to send changed content, make a new campaign "
            "(in the admin: Duplicate)")


@router.get("/campaigns", response=list[CampaignOut], summary="Campaigns, newest first")
@requires("campaigns.view_campaign")
def list_campaigns(request, status: str | None = None):
    rows = Campaign.objects.prefetch_related(*AUDIENCE, "variants")
    if status:
        if status not in Campaign.Status.values:
            raise HttpError(422, f"status: {status!r} is not one of {', '.join(Campaign.Status.values)}")
        rows = rows.filter(status=status)
    return rows


@router.post("/campaigns", response={201: CampaignDetail, 422: ContentErrorOut}, summary="Add a campaign (a draft)")
@requires("campaigns.add_campaign")
def create_campaign(request, payload: CampaignIn):
    data = payload.dict()
    audience = _pop_audience(data)
    variants = _pop_variants(data) or None
    campaign = Campaign(**data)
    errors = _campaign_errors(campaign, audience) + _variant_errors(variants)
    if errors:
        return _unprocessable(errors)
    campaign.save()
    _set_audience(campaign, audience)
    _set_variants(campaign, variants)
    return 201, campaign


@router.get("/campaigns/{campaign_id}", response=CampaignDetail, summary="One campaign, with send counts by status")
@requires("campaigns.view_campaign")
def get_campaign(request, campaign_id: int):
    return get_object_or_404(Campaign.objects.prefetch_related(*AUDIENCE), pk=campaign_id)


@router.patch("/campaigns/{campaign_id}", response={200: CampaignDetail, 409: dict, 422: ContentErrorOut},
              summary="Change a campaign's content (only before it starts: then its content is frozen)")
@requires("campaigns.change_campaign")
def update_campaign(request, campaign_id: int, payload: CampaignPatch):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if campaign.status not in EDITABLE:
        return 409, {"detail": frozen_reason(campaign)}
    changes = payload.dict(exclude_unset=True)
    audience = _pop_audience(changes)
    variants = _pop_variants(changes)
    for key, value in changes.items():
        if value is None and key not in NULLABLE:
            continue
        setattr(campaign, key, value)
    errors = _campaign_errors(campaign, audience) + _variant_errors(variants)
    if errors:
        return _unprocessable(errors)
    campaign.save()
    _set_audience(campaign, audience)
    _set_variants(campaign, variants)
    return 200, campaign


# Fields a PATCH may set to null.
NULLABLE = {"template_id", "winner_wait", "local_date", "local_time", "quiet_start", "quiet_end"}


@router.delete("/campaigns/{campaign_id}", response={204: None, 409: dict}, summary="Delete a campaign")
@requires("campaigns.delete_campaign")
def delete_campaign(request, campaign_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if campaign.status in (Campaign.Status.STARTING, Campaign.Status.SENDING):
        return 409, {"detail": f"status: a {campaign.status} campaign cannot be deleted (cancel it first)"}
    campaign.delete()
    return 204, None


@router.post("/campaigns/{campaign_id}/test", response={200: list[TestResultOut], 422: ContentErrorOut, 429: dict},
             summary="Send the real message to a few addresses now (limited per user; suppressed addresses skipped)")
@requires("campaigns.change_campaign")
def test_send(request, campaign_id: int, payload: TestIn, response: HttpResponse):
    """Each user may mail HERALD_TEST_SEND_LIMIT recipients per hour; over it the answer is 429 with Retry-After.
    Test sends take the same relay, throttles and connection caps as campaign sends."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    try:
        results = import_string("delivery.testsend.send_test")(campaign, payload.addresses, user=request.user,
                                                              variant=payload.variant)
    except rendering.ContentError as exc:
        return _unprocessable([exc])
    except ValueError as exc:
        if retry_after := getattr(exc, "retry_after", None):  # delivery.testsend.TestSendLimited
            response["Retry-After"] = str(retry_after)
            return 429, {"detail": f"addresses: {exc}", "retry_after": retry_after}
        field, _, message = str(exc).partition(": ") if str(exc).startswith("variant: ") else ("addresses", "", str(exc))
        return _unprocessable([rendering.ContentError(field, message)])
    return 200, [{"address": r.address, "ok": r.ok, "detail": r.detail, "status": r.status} for r in results]


@router.get("/campaigns/{campaign_id}/preview", response={200: PreviewOut, 404: dict, 422: ContentErrorOut},
            summary="The message a contact would receive, and the variables it lacks", by_alias=True)
@requires("campaigns.view_campaign")
def preview(request, campaign_id: int, contact_id: int | None = None, email: str = "", variant: int | None = None):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    contact = None
    if contact_id is not None:
        contact = Contact.objects.filter(pk=contact_id).first()
        if contact is None:
            return 404, {"detail": f"contact_id: no contact with id {contact_id}"}
    elif email:
        contact = Contact.objects.filter(email_key=email.strip().lower()).first()
    try:
        return 200, import_string("delivery.testsend.preview")(campaign, contact, email, variant=variant)
    except rendering.ContentError as exc:
        return _unprocessable([exc])
    except ValueError as exc:  # no such variant
        return _unprocessable([rendering.ContentError("variant", str(exc).removeprefix("variant: "))])


@router.get("/campaigns/{campaign_id}/check", response=list[FindingOut],
            summary="The pre-send check: what to fix before sending (a missing unsubscribe link blocks the send)")
@requires("campaigns.view_campaign")
def presend_check(request, campaign_id: int, links: bool = True):
    """Checked as the campaign's first recipient would get it; ``links=false`` skips asking each link's server."""
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    return [f.as_dict() for f in presend.check(campaign, sample_contact(campaign), links=links)]


@router.get("/campaigns/{campaign_id}/links", response=list[LinkOut], summary="The campaign's tracked links")
@requires("campaigns.view_campaign")
def links(request, campaign_id: int):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    try:
        rendering.campaign_links(campaign)
    except rendering.ContentError:
        pass  # a broken draft still lists the links it had
    return [{"index": i, "url": u} for i, u in CampaignLink.objects.filter(campaign=campaign).values_list("index", "url")]
