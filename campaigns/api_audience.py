"""API: mailing lists, contacts (CRUD, filters, pagination, CSV export) and CSV imports.

Every refusal is JSON naming the field: 422 ``{"detail": "email: ...",
"errors": [{"field": "email", "message": "..."}]}`` for bad values, 409 for an
address or a list name that exists already, 413 for an upload over
HERALD_IMPORT_MAX_BYTES. Imports run as a Celery task; ``GET /imports/{id}``
reports progress and counts, ``GET /imports/{id}/errors`` the error report.
"""

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from django.db import IntegrityError, transaction
from django.db.models import Count, Prefetch, Q
from django.http import FileResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, File, Form, Query, Router, Schema
from ninja.files import UploadedFile
from pydantic import AfterValidator

from campaigns import audit
from campaigns.csvfiles import CsvRejected, check_encoding, parse_delimiter, size_refusal
from campaigns.exports import contact_rows
from campaigns.imports import is_valid_address
from campaigns.models import Contact, Import, MailingList, Subscription, Suppression, email_key
from campaigns.suppression import is_erased
from herald.permissions import requires

router = Router(tags=["audience"])

MAX_PAGE_SIZE = 500


def _no_nul(value):
    # PostgreSQL cannot store NUL in text: refuse it here rather than fail later.
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _clean_attributes(value):
    if len(value) > 200:
        raise ValueError("at most 200 attributes")

    def walk(item, depth=0):
        if depth > 5:
            raise ValueError("nested too deeply (at most 5 levels)")
        if isinstance(item, str):
            _no_nul(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, dict):
            for key, sub in item.items():
                _no_nul(key)
                walk(sub, depth + 1)
        elif isinstance(item, list):
            for sub in item:
                walk(sub, depth + 1)

    walk(value)
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Attributes = Annotated[dict[str, Any], AfterValidator(_clean_attributes)]
ContactStatus = Literal["active", "unsubscribed", "blocklisted"]
OptIn = Literal["single", "double"]


class FieldError(Schema):
    field: str
    message: str


class ErrorOut(Schema):
    # Herald's own errors say it in a sentence; django-ninja's request
    # validation answers 422 with a list of {loc, msg, type}.
    detail: str | list[dict]
    errors: list[FieldError] = []


def _error(status, field, message):
    return status, {"detail": f"{field}: {message}", "errors": [{"field": field, "message": message}]}


class PageIn(Schema):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(50, ge=1, le=MAX_PAGE_SIZE)


def _page(queryset, page: PageIn):
    start = (page.page - 1) * page.page_size
    return {
        "count": queryset.count(),
        "page": page.page,
        "page_size": page.page_size,
        "items": list(queryset[start : start + page.page_size]),
    }


# --- lists -------------------------------------------------------------------


class ListIn(Schema):
    name: Text = Field(min_length=1, max_length=200)
    description: Text = ""
    optin: OptIn = "single"


class ListPatch(Schema):
    name: Text | None = Field(None, min_length=1, max_length=200)
    description: Text | None = None
    optin: OptIn | None = None


class ListOut(Schema):
    id: int
    name: str
    description: str
    optin: str
    subscribers: int = 0
    unsubscribed: int = 0
    created_at: datetime
    updated_at: datetime


class ListPage(Schema):
    count: int
    page: int
    page_size: int
    items: list[ListOut]


def lists_with_counts():
    """Lists with subscriber counts in one query (the (list, status) index serves it)."""
    live = ~Q(subscriptions__status=Subscription.Status.UNSUBSCRIBED)
    return MailingList.objects.annotate(
        subscribers=Count("subscriptions", filter=live),
        unsubscribed=Count("subscriptions", filter=Q(subscriptions__status=Subscription.Status.UNSUBSCRIBED)),
    )


@router.get("/lists", response=ListPage, summary="Mailing lists with subscriber counts")
@requires("campaigns.view_mailinglist")
def list_lists(request, page: Query[PageIn]):
    return _page(lists_with_counts().order_by("name"), page)


@router.post("/lists", response={201: ListOut, 409: ErrorOut}, summary="Add a mailing list")
@requires("campaigns.add_mailinglist")
def create_list(request, payload: ListIn):
    name = payload.name.strip()
    if not name:
        return _error(422, "name", "must not be blank")
    if MailingList.objects.filter(name=name).exists():
        return _error(409, "name", f"a list named {name!r} exists already")
    row = MailingList.objects.create(name=name, description=payload.description, optin=payload.optin)
    return 201, lists_with_counts().get(pk=row.pk)


@router.get("/lists/{list_id}", response=ListOut, summary="One mailing list")
@requires("campaigns.view_mailinglist")
def get_list(request, list_id: int):
    return get_object_or_404(lists_with_counts(), pk=list_id)


@router.patch("/lists/{list_id}", response={200: ListOut, 409: ErrorOut, 422: ErrorOut}, summary="Change a mailing list")
@requires("campaigns.change_mailinglist")
def update_list(request, list_id: int, payload: ListPatch):
    row = get_object_or_404(MailingList, pk=list_id)
    data = payload.dict(exclude_unset=True)
    if data.get("name") is not None:
        data["name"] = data["name"].strip()
        if not data["name"]:
            return _error(422, "name", "must not be blank")
        if MailingList.objects.filter(name=data["name"]).exclude(pk=row.pk).exists():
            return _error(409, "name", f"a list named {data['name']!r} exists already")
    for key, value in data.items():
        if value is not None:
            setattr(row, key, value)
    row.save()
    return 200, lists_with_counts().get(pk=row.pk)


@router.delete("/lists/{list_id}", response={204: None}, summary="Delete a mailing list and its subscriptions")
@requires("campaigns.delete_mailinglist")
def delete_list(request, list_id: int):
    get_object_or_404(MailingList, pk=list_id).delete()
    return 204, None


# --- contacts ----------------------------------------------------------------


class ContactIn(Schema):
    email: Text = Field(min_length=1, max_length=320)
    first_name: Text = Field("", max_length=200)
    last_name: Text = Field("", max_length=200)
    attributes: Attributes = {}
    status: ContactStatus = "active"
    lists: list[int] = Field([], description="ids of the lists to subscribe to", max_length=1000)
    confirmed: bool = Field(False, description="the person confirmed the subscription elsewhere: without it, "
                                              "subscriptions to double opt-in lists stay unconfirmed and unmailed")


class ContactPatch(Schema):
    email: Text | None = Field(None, min_length=1, max_length=320)
    first_name: Text | None = Field(None, max_length=200)
    last_name: Text | None = Field(None, max_length=200)
    attributes: Attributes | None = None
    status: ContactStatus | None = None
    lists: list[int] | None = Field(
        None, max_length=1000,
        description="the full set of list ids; lists not named are left. An unsubscribe is kept either way: a list the "
                    "contact unsubscribed from stays unsubscribed when named again (see POST /contacts/{id}/resubscribe)",
    )
    confirmed: bool = Field(False, description="new subscriptions to double opt-in lists were confirmed elsewhere")


class ResubscribeIn(Schema):
    list: int = Field(description="id of the list the contact unsubscribed from")
    reason: Text = Field(min_length=1, max_length=2000, description="why the contact is resubscribed; kept as evidence")


class SubscriptionOut(Schema):
    list_id: int
    list_name: str
    status: str


class ResubscribedOut(Schema):
    contact_id: int
    contact_status: str
    list_id: int
    list_name: str
    status: str
    resubscribed_at: datetime
    resubscribed_by: str
    resubscribe_reason: str
    suppressed: str | None = Field(None, description="the reason the address is still suppressed, if it is: no "
                                                     "campaign mails it until the suppression is lifted")


class ContactOut(Schema):
    id: int
    email: str
    first_name: str
    last_name: str
    attributes: dict
    status: str
    subscriptions: list[SubscriptionOut]
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_subscriptions(obj):
        return [
            {"list_id": s.mailing_list_id, "list_name": s.mailing_list.name, "status": s.status}
            for s in obj.subscriptions.all()
        ]

    @staticmethod
    def resolve_attributes(obj):
        return obj.attributes if isinstance(obj.attributes, dict) else {}


class ContactPage(Schema):
    count: int
    page: int
    page_size: int
    items: list[ContactOut]


class ContactFilter(Schema):
    email: Text | None = Field(None, max_length=320, description="exact address, any case")
    email_contains: Text | None = Field(None, max_length=320, description="part of the address")
    list_id: int | None = Field(None, description="subscribed to this list")
    status: ContactStatus | None = None


def _contacts():
    subs = Subscription.objects.select_related("mailing_list").order_by("mailing_list__name")
    return Contact.objects.prefetch_related(Prefetch("subscriptions", queryset=subs))


def _filtered(filters: ContactFilter):
    qs = Contact.objects.all()
    if filters.email:
        qs = qs.filter(email_key=email_key(filters.email))
    if filters.email_contains:
        qs = qs.filter(email_key__contains=filters.email_contains.strip().lower())
    if filters.list_id is not None:
        qs = qs.filter(subscriptions__mailing_list_id=filters.list_id)
    if filters.status:
        qs = qs.filter(status=filters.status)
    return qs


def _check_email(value):
    value = value.strip()
    reason = is_valid_address(value) if value else "the address is missing"
    return value, reason


def _unknown_lists(ids):
    known = set(MailingList.objects.filter(pk__in=ids).values_list("pk", flat=True))
    return sorted(set(ids) - known)


def _api_caller(request) -> str:
    token = getattr(request, "api_token", None)
    who = request.user.get_username() if getattr(request, "user", None) and request.user.is_authenticated else "?"
    return f"API token {token.prefix}… of {who}" if token is not None else f"API as {who}"


def _subscribe(request, contact, list_ids, confirmed=False):
    """Subscribe to lists the contact is not on; an existing row, unsubscribed above all, is left as it is.

    The API call is the consent evidence; a double opt-in list's subscription
    stays unconfirmed unless the caller says the person confirmed elsewhere.
    """
    optins = dict(MailingList.objects.filter(pk__in=list_ids).values_list("pk", "optin"))
    now = timezone.now()
    detail = (_api_caller(request) + (", confirmed elsewhere" if confirmed else ""))[:200]
    Subscription.objects.bulk_create(
        [
            Subscription(
                contact=contact,
                mailing_list_id=pk,
                status=(Subscription.Status.UNCONFIRMED if optin == MailingList.OptIn.DOUBLE and not confirmed
                        else Subscription.Status.CONFIRMED),
                source=Subscription.Source.API, source_detail=detail, confirmed_at=now if confirmed else None,
            )
            for pk, optin in optins.items()
        ],
        ignore_conflicts=True,
    )


@router.get("/contacts", response=ContactPage, summary="Contacts, filtered by address, list or status; paginated")
@requires("campaigns.view_contact")
def list_contacts(request, filters: Query[ContactFilter], page: Query[PageIn]):
    ids = _filtered(filters).order_by("id").values("id")
    qs = _contacts().filter(id__in=ids).order_by("id")
    return _page(qs, page)


@router.get("/contacts/export", summary="Contacts as CSV (formula cells neutralised)", response={200: None})
@requires("campaigns.view_contact")
def export_contacts(request, filters: Query[ContactFilter]):
    qs = Contact.objects.filter(id__in=_filtered(filters).values("id"))
    audit.record("contacts.export", filters=filters.dict(exclude_none=True))
    response = StreamingHttpResponse(contact_rows(qs), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="contacts.csv"'
    return response


@router.post("/contacts", response={201: ContactOut, 409: ErrorOut, 422: ErrorOut}, summary="Add a contact")
@requires("campaigns.add_contact")
def create_contact(request, payload: ContactIn):
    email, reason = _check_email(payload.email)
    if reason:
        return _error(422, "email", reason)
    unknown = _unknown_lists(payload.lists)
    if unknown:
        return _error(422, "lists", f"no list with id {', '.join(map(str, unknown))}")
    existing = Contact.objects.filter(email_key=email_key(email)).values_list("pk", flat=True).first()
    if existing:
        return _error(409, "email", f"a contact with this address exists already (id {existing})")
    try:
        with transaction.atomic():
            contact = Contact.objects.create(
                email=email, first_name=payload.first_name.strip(), last_name=payload.last_name.strip(),
                attributes=payload.attributes,
                # An address whose owner had their data erased is never mailed again.
                status=Contact.Status.BLOCKLISTED if is_erased(email) else payload.status,
            )
            _subscribe(request, contact, payload.lists, payload.confirmed)
    except IntegrityError:
        return _error(409, "email", "a contact with this address exists already")
    return 201, _contacts().get(pk=contact.pk)


@router.get("/contacts/{contact_id}", response=ContactOut, summary="One contact with its subscriptions")
@requires("campaigns.view_contact")
def get_contact(request, contact_id: int):
    return get_object_or_404(_contacts(), pk=contact_id)


@router.patch("/contacts/{contact_id}", response={200: ContactOut, 409: ErrorOut, 422: ErrorOut},
              summary="Change a contact; attributes are merged, lists replace the subscriptions but never an unsubscribe")
@requires("campaigns.change_contact")
def update_contact(request, contact_id: int, payload: ContactPatch):
    contact = get_object_or_404(Contact, pk=contact_id)
    data = payload.dict(exclude_unset=True)
    if data.get("email") is not None:
        email, reason = _check_email(data["email"])
        if reason:
            return _error(422, "email", reason)
        other = Contact.objects.filter(email_key=email_key(email)).exclude(pk=contact.pk).values_list("pk", flat=True).first()
        if other:
            return _error(409, "email", f"another contact has this address (id {other})")
        contact.email = email
    lists = data.get("lists")
    if lists is not None:
        unknown = _unknown_lists(lists)
        if unknown:
            return _error(422, "lists", f"no list with id {', '.join(map(str, unknown))}")
    for name in ("first_name", "last_name"):
        if data.get(name) is not None:
            setattr(contact, name, data[name].strip())
    if data.get("status") is not None:
        if contact.status == Contact.Status.UNSUBSCRIBED and data["status"] == Contact.Status.ACTIVE:
            return _error(409, "status", "the contact unsubscribed; only POST /api/v1/contacts/"
                                         f"{contact.pk}/resubscribe, with a reason, brings them back")
        contact.status = data["status"]
    if data.get("attributes") is not None:
        contact.attributes = {**(contact.attributes or {}), **data["attributes"]}
    try:
        with transaction.atomic():
            contact.save()
            if lists is not None:
                # An unsubscribed row is the record of the unsubscribe: it stays,
                # so naming the list again cannot turn it into a subscription.
                contact.subscriptions.exclude(mailing_list_id__in=lists).exclude(
                    status=Subscription.Status.UNSUBSCRIBED).delete()
                _subscribe(request, contact, lists, bool(data.get("confirmed")))
    except IntegrityError:
        return _error(409, "email", "another contact has this address")
    return 200, _contacts().get(pk=contact.pk)


@router.post("/contacts/{contact_id}/resubscribe", response={200: ResubscribedOut, 409: ErrorOut, 422: ErrorOut},
             summary="Resubscribe a contact who unsubscribed from a list; who and why are recorded")
@requires("campaigns.change_contact")
def resubscribe_contact(request, contact_id: int, payload: ResubscribeIn):
    """The only way back for a contact who unsubscribed from a list.

    Editing a contact's lists, the admin and CSV imports leave an unsubscribe in
    place. This sets the subscription to confirmed and keeps the caller, the time
    and the reason on it (and in the contact's history); a contact unsubscribed
    from everything becomes active again. A suppression is not lifted here.
    """
    contact = get_object_or_404(Contact, pk=contact_id)
    if not payload.reason.strip():
        return _error(422, "reason", "say why the contact is resubscribed")
    if not MailingList.objects.filter(pk=payload.list).exists():
        return _error(422, "list", f"no list with id {payload.list}")
    with transaction.atomic():
        sub = Subscription.objects.select_for_update().filter(contact=contact, mailing_list_id=payload.list).first()
        if sub is None or not sub.is_unsubscribed:
            state = sub.status if sub else "not on the list"
            return _error(409, "list", f"the contact has not unsubscribed from list {payload.list} ({state}); "
                                       f"add lists with PATCH /api/v1/contacts/{contact.pk}")
        sub.resubscribe(request.user, payload.reason)
    contact.refresh_from_db(fields=["status"])
    return 200, {
        "contact_id": contact.pk, "contact_status": contact.status, "list_id": sub.mailing_list_id,
        "list_name": sub.mailing_list.name, "status": sub.status, "resubscribed_at": sub.resubscribed_at,
        "resubscribed_by": request.user.get_username(), "resubscribe_reason": sub.resubscribe_reason,
        "suppressed": Suppression.objects.filter(email_key=contact.email_key).values_list("reason", flat=True).first(),
    }


@router.delete("/contacts/{contact_id}", response={204: None}, summary="Delete a contact and its subscriptions")
@requires("campaigns.delete_contact")
def delete_contact(request, contact_id: int):
    get_object_or_404(Contact, pk=contact_id).delete()
    return 204, None


# --- imports -----------------------------------------------------------------


class ImportOut(Schema):
    id: int
    status: str
    list_id: int | None = Field(None, alias="mailing_list_id")
    original_name: str
    mode: str
    delimiter: str
    encoding: str
    rows_processed: int
    created: int
    updated: int
    skipped: int
    invalid: int
    error: str
    error_report: str | None = None
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def resolve_error_report(obj):
        return f"/api/v1/imports/{obj.pk}/errors" if obj.error_report else None


class ImportPage(Schema):
    count: int
    page: int
    page_size: int
    items: list[ImportOut]


def _too_large(upload):
    refusal = size_refusal(upload.size)
    return _error(413, "file", refusal) if refusal else None


# "list" is the form field's name; the parameter cannot be called that.
_LIST_NAME = Form(None, alias="list", max_length=200, description="list name, created when missing")


@router.post("/imports", response={202: ImportOut, 413: ErrorOut, 422: ErrorOut},
             summary="Upload a CSV file to import into a list (multipart); runs in the background")
@requires("campaigns.add_import")
def create_import(
    request,
    file: File[UploadedFile],
    list_id: Form[int | None] = None,
    list_name: Text | None = _LIST_NAME,
    mode: Form[Literal["upsert", "skip-existing"]] = "upsert",
    confirmed: Form[bool] = False,
    delimiter: Form[Text | None] = None,
    encoding: Form[Text | None] = None,
):
    delimiter, encoding = delimiter or "", (encoding or "").strip()
    refused = _too_large(file)
    if refused:
        return refused
    try:
        parse_delimiter(delimiter)
    except CsvRejected as exc:
        return _error(422, "delimiter", str(exc))
    if encoding:
        try:
            check_encoding(encoding)
        except CsvRejected as exc:
            return _error(422, "encoding", str(exc))
    if list_id is not None:
        mailing_list = MailingList.objects.filter(pk=list_id).first()
        if mailing_list is None:
            return _error(422, "list_id", f"no list with id {list_id}")
    elif list_name and list_name.strip():
        mailing_list, _ = MailingList.objects.get_or_create(name=list_name.strip())
    else:
        return _error(422, "list_id", "give list_id (an existing list) or list (a name, created when missing)")

    from campaigns.tasks import enqueue_import

    with transaction.atomic():
        imp = Import(mailing_list=mailing_list, original_name=(file.name or "")[:255], mode=mode, confirmed=confirmed,
                     delimiter=delimiter, encoding=encoding, created_by=request.user)
        imp.file.save(f"import-{imp.original_name or 'upload.csv'}", file, save=False)
        imp.save()
        enqueue_import(imp)
    return 202, imp


@router.get("/imports", response=ImportPage, summary="Imports, newest first")
@requires("campaigns.view_import")
def list_imports(request, page: Query[PageIn]):
    return _page(Import.objects.order_by("-created_at", "-id"), page)


@router.get("/imports/{import_id}", response=ImportOut, summary="An import's progress, counts and error")
@requires("campaigns.view_import")
def get_import(request, import_id: int):
    return get_object_or_404(Import, pk=import_id)


@router.get("/imports/{import_id}/errors", response={200: None, 404: ErrorOut},
            summary="The error report as CSV: row, column, value, reason")
@requires("campaigns.view_import")
def import_errors(request, import_id: int):
    imp = get_object_or_404(Import, pk=import_id)
    if not imp.error_report:
        return 404, {"detail": "error_report: this import has no error report (no row was rejected or skipped)"}
    response = FileResponse(imp.error_report.open("rb"), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{imp.pk}-errors.csv"'
    return response
