"""API: ``POST /transactional``, one templated message now; a repeated Idempotency-Key returns the first result."""

from typing import Any

from email_validator import EmailNotValidError, validate_email
from ninja import Field, Header, Router, Schema, Status
from ninja.errors import HttpError

from automations import transactional
from automations.compose import RENDER_ERRORS
from delivery.models import Send
from herald.permissions import requires

router = Router(tags=["transactional"])


class AttachmentIn(Schema):
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = "application/octet-stream"
    content_base64: str


class TransactionalIn(Schema):
    template: str | int = Field(description="the template's id or slug")
    to: str = Field(min_length=3, max_length=320)
    data: dict[str, Any] = Field(default_factory=dict, description="what the template sees as {{ data }}")
    attachments: list[AttachmentIn] = []


class TransactionalOut(Schema):
    id: int
    idempotency_key: str
    to: str
    template_id: int
    message_id: int | None = Field(description="the message's id in /messages, with its events")
    status: str
    replayed: bool


def _out(row, replayed):
    statuses = list(Send.objects.filter(id__in=row.send_ids).values_list("status", flat=True))
    return {"id": row.pk, "idempotency_key": row.key, "to": row.to, "template_id": row.template_id,
            "message_id": row.outbound_id, "status": statuses[0] if statuses else "unknown", "replayed": replayed}


@router.post("/transactional", response={201: TransactionalOut, 200: TransactionalOut},
             summary="Send one templated message now (Idempotency-Key: a repeat returns the first result)")
@requires("automations.add_transactionalsend")
def send_transactional(request, payload: TransactionalIn, idempotency_key: str = Header(None, alias="Idempotency-Key")):
    try:
        address = validate_email(payload.to, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise HttpError(422, f"to: {exc}") from None
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise HttpError(422, "Idempotency-Key: between 1 and 255 characters")
    try:
        template = transactional.find_template(payload.template)
        row, sent = transactional.send(request.user.pk, idempotency_key, template, address, payload.data,
                                       [transactional.Attachment(**a.dict()) for a in payload.attachments])
    except transactional.Refused as exc:
        raise HttpError(exc.status, str(exc)) from None
    except RENDER_ERRORS as exc:
        raise HttpError(422, f"template: line {getattr(exc, 'lineno', '?')}: {exc}") from None
    return Status(201 if sent else 200, _out(row, replayed=not sent))
