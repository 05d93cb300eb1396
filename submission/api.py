"""API: SMTP credentials (the secret is shown once, at creation or rotation) and submitted messages.

    GET/POST        /smtp-credentials
    GET/PATCH/DEL   /smtp-credentials/{id}
    POST            /smtp-credentials/{id}/rotate   a new secret, shown once
    GET             /messages?credential=&tag=&recipient=&status=&limit=&offset=
    GET             /messages/{id}
"""

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from delivery.models import Send
from herald.permissions import requires
from submission.models import OutboundMessage, SmtpCredential, validate_domains
from tracking.models import Event

router = Router(tags=["submission"])

PERIODS = "^(" + "|".join(SmtpCredential.Period.values) + ")$"
STATUSES = "^(" + "|".join(Send.Status.values) + ")$"


class CredentialIn(Schema):
    username: str = Field(min_length=1, max_length=150, pattern=r"^[A-Za-z0-9._@+-]+$")
    allowed_domains: list[str] = Field(min_length=1, description="Sender domains, e.g. [\"example.com\"].")
    rate_limit: int = Field(0, ge=0, description="Messages per period; 0 means unlimited.")
    rate_period: str = Field("minute", pattern=PERIODS)
    tracking: bool = False
    default_tag: str = Field("", max_length=100)
    enabled: bool = True


class CredentialPatch(Schema):
    allowed_domains: list[str] | None = Field(None, min_length=1)
    rate_limit: int | None = Field(None, ge=0)
    rate_period: str | None = Field(None, pattern=PERIODS)
    tracking: bool | None = None
    default_tag: str | None = Field(None, max_length=100)
    enabled: bool | None = None


class CredentialOut(Schema):
    id: int
    username: str
    allowed_domains: list[str]
    rate_limit: int
    rate_period: str
    tracking: bool
    default_tag: str
    enabled: bool
    created_at: datetime

    @staticmethod
    def resolve_allowed_domains(obj):
        return obj.domain_list()


class CredentialWithSecret(CredentialOut):
    secret: str = Field(description="Shown only in this response; Herald keeps only a hash.")


class EventOut(Schema):
    type: str
    created_at: datetime
    status: str
    diagnostic: str
    url: str
    machine: bool


class RecipientOut(Schema):
    send_id: int
    email: str
    status: str
    attempts: int
    smtp_code: int | None
    smtp_reply: str
    sent_at: datetime | None
    next_attempt_at: datetime | None
    events: list[EventOut]


class MessageOut(Schema):
    id: int
    credential: str
    mail_from: str
    from_header: str
    from_domain: str = Field(description="The From domain checked against the credential at acceptance; the only "
                                         "domain the message is DKIM-signed for.")
    subject: str
    message_id: str
    tag: str
    size: int
    created_at: datetime
    state: str = Field(description="The recipients' common status, or partial when they differ.")
    recipients: list[RecipientOut]


class MessageFilters(Schema):
    credential: str | None = Field(None, description="Credential id or username.")
    tag: str | None = None
    recipient: str | None = Field(None, description="Recipient address (case-insensitive).")
    status: str | None = Field(None, pattern=STATUSES, description="Messages with at least one recipient in this status.")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)


def _domains(values: list[str], field: str) -> str:
    text = "\n".join(values)
    try:
        validate_domains(text)
    except ValidationError as exc:
        raise HttpError(422, f"{field}: {' '.join(exc.messages)}") from None
    return text


# --- credentials -------------------------------------------------------------------


@router.get("/smtp-credentials", response=list[CredentialOut], summary="SMTP credentials for the submission server")
@requires("submission.view_smtpcredential")
def list_credentials(request):
    return list(SmtpCredential.objects.all())


@router.post("/smtp-credentials", response={201: CredentialWithSecret}, summary="Create a credential; the secret is shown once")
@requires("submission.add_smtpcredential")
def create_credential(request, payload: CredentialIn):
    data = payload.dict()
    data["allowed_domains"] = _domains(payload.allowed_domains, "allowed_domains")
    row = SmtpCredential(**data)
    secret = row.set_new_secret()
    try:
        row.save()
    except IntegrityError:
        raise HttpError(409, f"username: a credential named {payload.username!r} already exists") from None
    row.secret = secret
    return 201, row


@router.get("/smtp-credentials/{credential_id}", response=CredentialOut, summary="One credential")
@requires("submission.view_smtpcredential")
def get_credential(request, credential_id: int):
    return get_object_or_404(SmtpCredential, pk=credential_id)


@router.patch("/smtp-credentials/{credential_id}", response=CredentialOut, summary="Change a credential")
@requires("submission.change_smtpcredential")
def update_credential(request, credential_id: int, payload: CredentialPatch):
    row = get_object_or_404(SmtpCredential, pk=credential_id)
    for name, value in payload.dict(exclude_unset=True).items():
        if value is None:
            raise HttpError(422, f"{name}: may not be null")
        setattr(row, name, _domains(value, name) if name == "allowed_domains" else value)
    row.save()
    return row


@router.post("/smtp-credentials/{credential_id}/rotate", response=CredentialWithSecret,
             summary="Replace the secret; the old one stops working at once")
@requires("submission.change_smtpcredential")
def rotate_credential(request, credential_id: int):
    row = get_object_or_404(SmtpCredential, pk=credential_id)
    secret = row.set_new_secret()
    row.save(update_fields=["secret_hash", "updated_at"])
    row.secret = secret
    return row


@router.delete("/smtp-credentials/{credential_id}", response={204: None}, summary="Delete a credential with no messages")
@requires("submission.delete_smtpcredential")
def delete_credential(request, credential_id: int):
    row = get_object_or_404(SmtpCredential, pk=credential_id)
    try:
        row.delete()
    except ProtectedError:
        raise HttpError(409, "credential: it has sent messages; disable it instead (enabled=false)") from None
    return 204, None


# --- messages ------------------------------------------------------------------------


def _state(statuses: list[str]) -> str:
    distinct = set(statuses)
    return distinct.pop() if len(distinct) == 1 else ("queued" if not distinct else "partial")


def _present(messages: list[OutboundMessage]) -> list[dict]:
    sends = list(Send.objects.filter(outbound_id__in=[m.pk for m in messages]).order_by("id"))
    events: dict[int, list] = {}
    for event in Event.objects.filter(send_id__in=[s.pk for s in sends]).order_by("created_at", "id"):
        events.setdefault(event.send_id, []).append(event)
    by_message: dict[int, list] = {}
    for send in sends:
        by_message.setdefault(send.outbound_id, []).append(send)
    out = []
    for m in messages:
        rows = by_message.get(m.pk, [])
        out.append({
            "id": m.pk, "credential": m.credential.username, "mail_from": m.mail_from, "from_header": m.from_header,
            "from_domain": m.from_domain, "subject": m.subject, "message_id": m.message_id, "tag": m.tag, "size": m.size,
            "created_at": m.created_at,
            "state": _state([s.status for s in rows]),
            "recipients": [{
                "send_id": s.pk, "email": s.email, "status": s.status, "attempts": s.attempts, "smtp_code": s.smtp_code,
                "smtp_reply": s.smtp_reply, "sent_at": s.sent_at, "next_attempt_at": s.next_attempt_at,
                "events": events.get(s.pk, []),
            } for s in rows],
        })
    return out


@router.get("/messages", response=list[MessageOut], summary="Messages accepted by the submission server, newest first")
@requires("submission.view_outboundmessage")
def list_messages(request, filters: Query[MessageFilters]):
    qs = OutboundMessage.objects.select_related("credential").defer("raw")
    if filters.credential:
        key = filters.credential
        qs = qs.filter(credential_id=int(key)) if key.isdigit() else qs.filter(credential__username=key)
    if filters.tag:
        qs = qs.filter(tag=filters.tag)
    send_filter = Send.objects.filter(outbound_id__isnull=False)
    narrowed = False
    if filters.recipient:
        send_filter = send_filter.filter(email__iexact=filters.recipient.strip())
        narrowed = True
    if filters.status:
        send_filter = send_filter.filter(status=filters.status)
        narrowed = True
    if narrowed:
        qs = qs.filter(pk__in=send_filter.values("outbound_id"))
    page = list(qs.order_by("-id")[filters.offset:filters.offset + filters.limit])
    return _present(page)


@router.get("/messages/{message_id}", response=MessageOut, summary="One submitted message with its recipients and events")
@requires("submission.view_outboundmessage")
def get_message(request, message_id: int):
    message = get_object_or_404(OutboundMessage.objects.select_related("credential").defer("raw"), pk=message_id)
    return _present([message])[0]
