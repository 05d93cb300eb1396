"""Turning a stored submitted message into the bytes the engine sends to one recipient.

The engine calls ``build_for_send(send)`` for every Send with no campaign. The
client's message is kept as received wherever possible (its body is never
re-encoded, so what the client signed or wrote survives); Herald only
- removes ``X-Herald-Tag`` (internal grouping), ``Bcc`` (RFC 5322 3.6.3: the other
  recipients must not see it) and any ``Return-Path`` (set at final delivery),
- adds the Message-ID and Date fixed at acceptance when the client gave none,
- rewrites links and adds an open pixel when the credential enables tracking,
- sets the VERP envelope sender, and DKIM-signs when Herald holds a key for the From
  domain validated at acceptance (never a domain read again from the raw header).
"""

import html
import re
from email import message_from_bytes, policy
from email.utils import format_datetime

from delivery import dkim, tokens
from delivery.message import BuiltMessage
from delivery.models import SendingDomain
from submission.models import OutboundMessage

_DROP = {b"x-herald-tag", b"bcc", b"return-path"}
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"'\s]+)\2""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_SIGNED = [b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc", b"mime-version",
           b"content-type", b"content-transfer-encoding", b"in-reply-to", b"references", b"list-unsubscribe",
           b"list-unsubscribe-post", b"feedback-id"]


def split(raw: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines and CRLF) and the body."""
    end = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if end < 0 else (raw[: end + 2], raw[end + 4:])
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        elif line:
            fields.append(line + b"\r\n")
    return fields, body


def field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def tracked_links(html_text: str) -> list[str]:
    """The http(s) links of an HTML part in document order: a click token's index points into this list."""
    return [html.unescape(m.group(3)) for m in _HREF.finditer(html_text)]


def _html_parts(message):
    return [part for part in message.walk() if part.get_content_type() == "text/html" and not part.is_attachment()]


def links_of(outbound: OutboundMessage) -> list[str]:
    """Every tracked link of a stored message, across its HTML parts, in the order tracking numbers them."""
    message = message_from_bytes(bytes(outbound.raw), policy=policy.default)
    links = []
    for part in _html_parts(message):
        links.extend(tracked_links(part.get_content()))
    return links


def link_for(send, index: int) -> str | None:
    """The destination of click ``index`` in a submitted message, for the click redirect."""
    outbound = OutboundMessage.objects.filter(pk=send.outbound_id).only("raw").first()
    if outbound is None:
        return None
    links = links_of(outbound)
    return links[index] if 0 <= index < len(links) else None


def add_tracking(raw: bytes, send_id: int) -> bytes:
    """Links rewritten to click redirects and an open pixel added, in every HTML part."""
    message = message_from_bytes(raw, policy=policy.default)
    parts = _html_parts(message)
    if not parts:
        return raw
    counter = 0
    for part in parts:
        text = part.get_content()

        def rewrite(match):
            nonlocal counter
            url = tokens.click_url(send_id, counter)
            counter += 1
            return f"{match.group(1)}{match.group(2)}{url}{match.group(2)}"

        text = _HREF.sub(rewrite, text)
        pixel = f'<img src="{tokens.open_url(send_id)}" width="1" height="1" alt="" style="display:none">'
        text = _BODY_END.sub(lambda m, p=pixel: p + m.group(0), text, count=1) if _BODY_END.search(text) else text + pixel
        part.set_content(text, subtype="html", charset="utf-8", cte="quoted-printable")
    utf8 = not raw.isascii()
    return message.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)


_signers: dict[tuple, object] = {}


def _signer(domain: str):
    """delivery.dkim's Signer for the domain's current key; loading a key costs more than signing, so keep it."""
    row = (
        SendingDomain.objects.filter(domain__iexact=domain).exclude(private_key="")
        .values_list("domain", "selector", "private_key").first()
    )
    if row is None:
        return None
    signer = _signers.get(row)
    if signer is None:
        if len(_signers) > 100:
            _signers.clear()
        signer = _signers[row] = dkim.Signer(row[0].lower(), row[1], row[2])
    return signer


def dkim_sign(data: bytes, from_domain: str) -> bytes:
    """``data`` with a DKIM-Signature prepended when Herald holds a key for the From domain."""
    signer = _signer(from_domain)
    if signer is None:
        return data
    fields, body = split(data)
    last = {}
    for field in fields:
        last[field_name(field)] = field
    headers = [(name, last[name]) for name in _SIGNED if name in last]
    return signer.sign(headers, body) + data


def signing_domain(outbound: OutboundMessage) -> str:
    """The domain Herald may sign this message for, or "" for none.

    Only the From domain validated at acceptance counts, and only while it is
    still one of the credential's domains: one tenant's message is never
    signed with another tenant's key, whatever its raw From header says.
    """
    domain = outbound.from_domain
    return domain if domain and domain in outbound.credential.domain_list() else ""


def build_for_send(send) -> BuiltMessage:
    outbound = OutboundMessage.objects.select_related("credential").get(pk=send.outbound_id)
    raw = bytes(outbound.raw)
    if outbound.credential.tracking:
        raw = add_tracking(raw, send.pk)
    fields, body = split(raw)
    kept = [f for f in fields if field_name(f) not in _DROP]
    names = {field_name(f) for f in kept}
    added = []
    if b"message-id" not in names and outbound.message_id:
        added.append(f"Message-ID: {outbound.message_id}\r\n".encode())
    if b"date" not in names:
        added.append(f"Date: {format_datetime(outbound.created_at)}\r\n".encode())
    data = b"".join(added + kept) + b"\r\n" + body
    domain = signing_domain(outbound)
    if domain:
        data = dkim_sign(data, domain)
    return BuiltMessage(tokens.verp_address(send.pk), send.email, data, outbound.message_id.strip("<>"))
