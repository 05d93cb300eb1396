"""An email from a MessageTemplate, rendered for one contact and a payload.

Automation email steps are rendered when the engine builds their Send
(automations.builder); transactional sends are rendered when posted, and
stored like submitted mail. Both come out of ``render_message``.
"""

import secrets
import threading
from email.message import EmailMessage
from email.utils import format_datetime

from django.utils import timezone
from jinja2 import TemplateError

from campaigns import rendering
from campaigns.sandbox import render_budget
from delivery.message import one_line

# What a template's expressions may raise on data they do not expect ({{ data.total / data.count }} with a
# count of 0, data['items']|length without items): the data's fault, never worth a retry.
RENDER_ERRORS = (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError)

_compiled: dict[tuple, tuple] = {}
_lock = threading.Lock()


def compiled_for(template):
    key = (template.pk, template.updated_at, template.layout.updated_at if template.layout_id else None)
    with _lock:
        hit = _compiled.get(key)
    if hit is not None:
        return hit
    layout = template.layout
    html = rendering.join_layout(layout.html if layout else "", template.html_body)
    text_source = template.text_body
    if text_source and layout and layout.text:
        text_source = rendering.join_layout(layout.text, text_source)
    hit = (rendering.text_env.from_string(template.subject), rendering.text_env.from_string(template.from_name),
           rendering.html_env.from_string(html) if html.strip() else None,
           rendering.text_env.from_string(text_source) if text_source.strip() else None)
    with _lock:
        if len(_compiled) > 256:
            _compiled.clear()
        _compiled[key] = hit
    return hit


def check(template) -> dict:
    """Problems of a template's fields, for the person writing it: {field: message}."""
    errors = rendering.validate_campaign_fields(template.subject, template.from_name, template.html_body,
                                                template.text_body, template.from_email, template.reply_to)
    out = {}
    for error in errors:
        out.setdefault(getattr(error, "field", "html_body"), str(error))
    if not template.html_body.strip() and not template.text_body.strip():
        out.setdefault("html_body", "write an HTML or a text body")
    try:
        compiled_for(template)
    except TemplateError as exc:
        out.setdefault("html_body", f"line {getattr(exc, 'lineno', '?')}: {exc}")
    return out


def render_message(template, to: str, contact, data: dict, unsubscribe: tuple[str, str] | None = None,
                   attachments=(), message_id_domain: str | None = None) -> tuple[bytes, str]:
    """The message's bytes (CRLF, as stored by the submission app) and its Message-ID.

    ``unsubscribe``: (https URL, mailto) for List-Unsubscribe (RFC 8058), for mail that is not transactional;
    ``attachments``: (file name, MIME type, bytes).
    """
    subject, from_name, html, text = compiled_for(template)
    ctx = {"contact": contact if isinstance(contact, rendering.ContactData) else rendering.ContactData.of(contact),
           "data": data or {}, "unsubscribe_url": unsubscribe[0] if unsubscribe else ""}
    with render_budget():
        html_out = html.render(ctx) if html is not None else ""
        text_out = text.render(ctx) if text is not None else rendering.html_to_text(html_out)
        subject_out, name_out = one_line(subject.render(ctx)), one_line(from_name.render(ctx))
    domain = (message_id_domain or template.from_email.rpartition("@")[2] or "localhost").lower()
    message_id = f"<{secrets.token_hex(12)}@{domain}>"
    msg = EmailMessage()
    msg["From"] = f"{name_out} <{one_line(template.from_email)}>" if name_out else one_line(template.from_email)
    msg["To"] = one_line(to)
    msg["Subject"] = subject_out
    msg["Date"] = format_datetime(timezone.now())
    msg["Message-ID"] = message_id
    if one_line(template.reply_to):
        msg["Reply-To"] = one_line(template.reply_to)
    if unsubscribe:
        msg["List-Unsubscribe"] = f"<{unsubscribe[0]}>, <{unsubscribe[1]}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text_out, cte="quoted-printable")
    if html_out.strip():
        msg.add_alternative(html_out, subtype="html", cte="quoted-printable")
    for filename, content_type, content in attachments:
        maintype, _, subtype = (content_type or "application/octet-stream").partition("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")), message_id
