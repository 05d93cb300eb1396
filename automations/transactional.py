"""Transactional messages: one templated email to one recipient, sent at once, exactly once per Idempotency-Key.

The message is rendered when posted and stored like mail from the SMTP
submission server (under a login of Herald's own, as the signup confirmation
is), so it joins the same ledger at the default priority, ahead of every
campaign's bulk batches, and shows in the messages API with its events.
The SMTP submission server renders the same templates for mail that names one
in ``X-Herald-Template`` (``render_submitted``, see submission.templated).
"""

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.parser import BytesHeaderParser

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction

from automations.compose import RENDER_ERRORS, render_message
from automations.models import MessageTemplate, TransactionalSend
from campaigns import rendering
from campaigns.models import Contact, email_key
from delivery import dispatch
from submission import store, templated
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
    item = compose(template, to, data, files)
    queued = store.store_batch([item])
    row.outbound_id, row.send_ids = item.outbound_id, item.send_ids
    row.save(update_fields=["outbound_id", "send_ids"])
    if queued:
        dispatch.enqueue_sends(queued, domains=[store.recipient_domain(to)] * len(queued))


def compose(template, to, data, files=(), mail_from="", peer="") -> store.Accepted:
    """The template rendered for one recipient, as a message to store (under Herald's own login for
    transactional mail, tracked or not as the template says)."""
    contact = Contact.objects.filter(email_key=email_key(to)).first()
    raw, message_id = render_message(template, to, contact or rendering.ContactData(to), data, attachments=files)
    subject = BytesHeaderParser(policy=policy.default).parsebytes(raw).get("Subject", "")
    domain = template.from_email.rpartition("@")[2].lower()
    return store.Accepted(credential_id=_credential_id(template.track, domain), mail_from=mail_from or template.from_email,
                          rcpt_tos=[to], raw=raw, from_header=template.from_email, from_domain=domain,
                          subject=str(subject)[:998], message_id=message_id, tag=f"transactional:{template.slug}"[:100],
                          peer=peer)


# --- the same templates from the SMTP submission server (submission.templated) -------------


def render_submitted(login, item) -> list[store.Accepted]:
    """A submitted message naming a template: the template rendered for each of its recipients, with the
    message's data and attachments; raises templated.Refused with the reply for the client."""
    close_old_connections()  # a thread of the submission server, between messages
    try:
        template = find_template(item.template)
    except Refused:
        raise templated.Refused(f"550 5.6.0 No template with id or slug {item.template[:100]!r} "
                                f"({templated.TEMPLATE_HEADER})") from None
    if not login.may_send_from(template.from_email):
        raise templated.Refused(f"550 5.7.1 Template {template.slug!r} sends from <{template.from_email}>, which "
                                f"login {login.username!r} may not use; it may send from: {', '.join(login.domains)}")
    message = message_from_bytes(item.raw, policy=policy.default)
    data = _submitted_data(message)
    files = _submitted_attachments(message)
    try:
        return [compose(template, rcpt, data, files, mail_from=item.mail_from, peer=item.peer) for rcpt in item.rcpt_tos]
    except RENDER_ERRORS as exc:
        raise templated.Refused(f"550 5.6.0 Template {template.slug!r} could not be rendered: line "
                                f"{getattr(exc, 'lineno', '?')}: {' '.join(str(exc).split())[:200]}") from None


def _submitted_data(message) -> dict:
    """The template's data: the JSON object in X-Herald-Template-Data, else in an application/json part."""
    raw = message.get(templated.DATA_HEADER)
    where = templated.DATA_HEADER
    if raw is not None:
        # Unfolded (RFC 5322 2.2.3); the policy has already decoded any encoded words (RFC 2047).
        text = re.sub(r"\r?\n(?=[ \t])", "", str(raw))
    else:
        part = next((p for p in message.walk() if p.get_content_type() == "application/json"
                     and not p.is_attachment()), None)
        if part is None:
            return {}
        where, text = "the application/json part", part.get_content()
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise templated.Refused(f"550 5.6.0 {where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise templated.Refused(f"550 5.6.0 {where} must be a JSON object, such as {{\"order\": \"A-17\"}}")
    return data


def _submitted_attachments(message) -> list[tuple[str, str, bytes]]:
    files, total = [], 0
    limit = settings.HERALD_TRANSACTIONAL_MAX_ATTACHMENTS
    for part in message.iter_attachments() if message.is_multipart() else ():
        if part.get_content_type() == "application/json" and not part.is_attachment():
            continue  # the data, not an attachment
        content = part.get_payload(decode=True) or b""
        total += len(content)
        if total > limit:
            raise templated.Refused(f"552 5.3.4 Attachments of more than {limit} bytes in all")
        name = " ".join((part.get_filename() or "attachment").split())
        files.append((name, part.get_content_type(), content))
    return files
