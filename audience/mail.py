"""Mail to one person from the public pages (the signup confirmation, the data-export link), sent by the engine.

Such a message is stored like one from the SMTP submission server, under a
login of Herald's own that no client can use (it has no secret), and its Send
joins the same ledger: the engine delivers it with its retries, VERP and
DKIM, suppressed addresses are skipped, and it goes on the queue at the
default priority, ahead of every campaign's bulk batches.
"""

import quopri
import secrets
from email.utils import format_datetime

from django.utils import timezone
from jinja2 import TemplateError

from campaigns import rendering
from delivery import dispatch
from delivery.message import address_header, fold_header
from submission import store
from submission.models import SmtpCredential

SYSTEM_LOGIN = "herald-public-pages"


def check_template(source: str) -> str | None:
    """A problem with a confirmation template, said for its author; None when it renders."""
    try:
        rendering.text_env.from_string(source).render(
            contact=rendering.ContactData("preview@example.com"), confirm_url="https://example.invalid/c", lists="News")
    except TemplateError as exc:
        return f"line {getattr(exc, 'lineno', '?')}: {exc}"
    return None


_compiled: dict[str, object] = {}


def render_text(source: str, **context) -> str:
    template = _compiled.get(source)
    if template is None:
        if len(_compiled) > 200:
            _compiled.clear()
        template = _compiled[source] = rendering.text_env.from_string(source)
    return template.render(**context)


def _credential_id(domain: str) -> int:
    """Herald's own login for these messages, allowed the sender's domain (so it is DKIM-signed for it)."""
    row = SmtpCredential.objects.filter(username=SYSTEM_LOGIN).first()
    if row is None:
        row, _ = SmtpCredential.objects.get_or_create(
            username=SYSTEM_LOGIN, defaults={"allowed_domains": domain, "secret_hash": "",
                                             "default_tag": "herald-public-pages"})
    if domain not in row.domain_list():
        row.allowed_domains = "\n".join([*row.domain_list(), domain])
        row.save(update_fields=["allowed_domains", "updated_at"])
    return row.pk


def build(from_email: str, from_name: str, to: str, subject: str, text: str) -> tuple[bytes, str]:
    """A text/plain message (quoted-printable UTF-8) and its Message-ID."""
    domain = from_email.rpartition("@")[2].lower() or "localhost"
    message_id = f"<{secrets.token_hex(12)}@{domain}>"
    head = b"".join([
        address_header("From", from_name, from_email),
        fold_header("To", to),
        fold_header("Subject", subject),
        fold_header("Date", format_datetime(timezone.now())),
        fold_header("Message-ID", message_id),
        # RFC 3834: made by a program, so no autoresponder answers it.
        b"Auto-Submitted: auto-generated\r\n",
        b"MIME-Version: 1.0\r\n",
        b'Content-Type: text/plain; charset="utf-8"\r\n',
        b"Content-Transfer-Encoding: quoted-printable\r\n",
    ])
    body = quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8")).replace(b"\n", b"\r\n")
    return head + b"\r\n" + body, message_id


def send(from_email: str, from_name: str, to: str, subject: str, text: str, tag: str) -> list[int]:
    """Store one message to ``to`` and hand its Send to the engine once the transaction commits."""
    return send_many([(from_email, from_name, to, subject, text)], tag)


def send_many(messages, tag: str) -> list[int]:
    """Store [(from_email, from_name, to, subject, text)] in one batch and hand their Sends to the engine once
    the transaction commits."""
    items, credentials = [], {}
    for from_email, from_name, to, subject, text in messages:
        raw, message_id = build(from_email, from_name, to, subject, text)
        domain = from_email.rpartition("@")[2].lower()
        if domain not in credentials:
            credentials[domain] = _credential_id(domain)
        items.append(store.Accepted(credential_id=credentials[domain], mail_from=from_email, rcpt_tos=[to], raw=raw,
                                    from_header=from_email, from_domain=domain, subject=subject[:998],
                                    message_id=message_id, tag=tag))
    if not items:
        return []
    ids = store.store_batch(items)
    if ids:
        # Their domains are known: the engine need not read them back (a suppressed recipient has no queued send).
        domains = {pk: store.recipient_domain(rcpt) for item in items
                   for pk, rcpt in zip(item.send_ids, item.rcpt_tos, strict=True)}
        dispatch.enqueue_sends(ids, domains=[domains[pk] for pk in ids])
    return ids
