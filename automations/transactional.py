"""Transactional messages: one templated email to one recipient, sent at once, exactly once per Idempotency-Key.

The message is rendered when posted and stored like mail from the SMTP
submission server (under a login of Herald's own, as the signup confirmation
is), so it joins the same ledger at the default priority, ahead of every
campaign's bulk batches, and shows in the messages API with its events.
"""

import base64
import binascii
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction

from automations.compose import render_message
from automations.models import MessageTemplate, TransactionalSend
from campaigns import rendering
from campaigns.models import Contact, email_key
from delivery import dispatch
from submission import store
from submission.models import SmtpCredential

LOGINS = {False: "herald-transactional", True: "herald-transactional-tracked"}


class Refused(Exception):
    def __init__(self, field, message, status=422):
        super().__init__(f"{field}: {message}")
        self.status = status


@dataclass
class Attachment:
    filename: str
    content_type: str
    content_base64: str


def _credential_id(track: bool, domain: str) -> int:
    """Herald's own login for these messages (no secret: no client can use it), allowed the sender's domain."""
    username = LOGINS[track]
    row, _ = SmtpCredential.objects.get_or_create(
        username=username, defaults={"allowed_domains": domain, "secret_hash": "", "tracking": track,
                                     "default_tag": "transactional"})
    if domain not in row.domain_list():
        row.allowed_domains = "\n".join([*row.domain_list(), domain])
        row.save(update_fields=["allowed_domains", "updated_at"])
    return row.pk


def find_template(ref) -> MessageTemplate:
    ref = str(ref)
    found = MessageTemplate.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
    found = found or MessageTemplate.objects.filter(slug=ref).first()
    if found is None:
        raise Refused("template", f"no template with id or slug {ref!r}", status=404)
    return found


def decode_attachments(items: list[Attachment]) -> list[tuple[str, str, bytes]]:
    out, total = [], 0
    for n, item in enumerate(items):
        try:
            content = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(f"attachments[{n}].content_base64", "not valid base64") from None
        total += len(content)
        if total > settings.HERALD_TRANSACTIONAL_MAX_ATTACHMENTS:
            raise Refused("attachments", f"more than {settings.HERALD_TRANSACTIONAL_MAX_ATTACHMENTS} bytes in all",
                          status=413)
        if not item.filename or "\r" in item.filename or "\n" in item.filename:
            raise Refused(f"attachments[{n}].filename", "a file name on one line is needed")
        out.append((item.filename, item.content_type, content))
    return out


def send(user_id: int, key: str | None, template: MessageTemplate, to: str, data: dict,
         attachments=()) -> tuple[TransactionalSend, bool]:
    """(the send, whether it was sent now): a key already used by this user returns its first send, sending nothing."""
    files = decode_attachments(list(attachments))
    if key:
        first = TransactionalSend.objects.filter(user_id=user_id, key=key).first()
        if first is not None:
            return first, False
    try:
        with transaction.atomic():
            # The key's row first: a concurrent request with the same key waits on it, then fails here.
            row = TransactionalSend.objects.create(user_id=user_id, key=key or f"auto:{uuid.uuid4().hex}",
                                                   template=template, to=to)
            _store(row, template, to, data, files)
    except IntegrityError:
        return TransactionalSend.objects.get(user_id=user_id, key=key), False
    return row, True


def _store(row, template, to, data, files):
    contact = Contact.objects.filter(email_key=email_key(to)).first()
    raw, message_id = render_message(template, to, contact or rendering.ContactData(to), data, attachments=files)
    domain = template.from_email.rpartition("@")[2].lower()
    item = store.Accepted(credential_id=_credential_id(template.track, domain), mail_from=template.from_email,
                          rcpt_tos=[to], raw=raw, from_header=template.from_email, from_domain=domain,
                          subject=template.subject[:998], message_id=message_id, tag=f"transactional:{template.slug}"[:100])
    queued = store.store_batch([item])
    row.outbound_id, row.send_ids = item.outbound_id, item.send_ids
    row.save(update_fields=["outbound_id", "send_ids"])
    if queued:
        dispatch.enqueue_sends(queued, domains=[store.recipient_domain(to)] * len(queued))
