"""Reading what comes back to the bounce address: DSNs, ARF complaints, and the rest.

``parse(raw, envelope_rcpt)`` turns one message into ``Report``s without
touching the database, so it is fast and testable alone. It understands

- delivery status notifications (RFC 3464 inside RFC 6522 ``multipart/report``):
  one Report per recipient block, classified on ``Action``, ``Status`` (RFC 3463)
  and the diagnostic text;
- abuse feedback reports (ARF, RFC 5965): a complaint, with the original
  message's Message-ID and envelope sender to map a redacted report back;
- anything else that reached a VERP address (an MTA's home-made bounce text):
  the signed token identifies the send and the text decides hard or soft.

Parsing believes nothing: a Report carries what the message claims, and
tracking.feedback decides whether a valid token or Message-ID ties it to a Send.
Replies are read by delivery.classify, the engine's one classifier.

Garbage never raises: a message that cannot be read yields no Report.
"""

import logging
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.parser import HeaderParser

from delivery import classify as replies
from delivery.classify import best_status
from delivery.tokens import unsign

log = logging.getLogger(__name__)

HARD = replies.HARD
SOFT = replies.SOFT
POLICY = replies.POLICY  # the receiver refused the sender or the message, not the mailbox
DELIVERED = replies.DELIVERED
UNKNOWN = replies.UNKNOWN
DELAYED = "delayed"
COMPLAINT = "complaint"

__all__ = ["best_status", "classify", "parse", "token_in", "Report"]

_VERP = re.compile(rb"\b(bounces|unsubscribe)\+([0-9a-z]{1,20}(?:-[0-9a-z]{1,20}){1,3})@", re.I)
_BOUNCE_HINT = re.compile(
    r"mailer-daemon|postmaster|undeliver|delivery (?:status|has failed|failure|incomplete)|returned mail|failure notice"
    r"|non[- ]?delivery|could not be delivered|mail delivery failed",
    re.I,
)
_MAX_TEXT = 20000


@dataclass
class Report:
    kind: str
    recipient: str = ""
    action: str = ""
    status: str = ""
    diagnostic: str = ""
    send_id: int | None = None
    message_id: str = ""  # Message-ID of the original message, without <>
    feedback_type: str = ""
    # False when the recipient is only the returned message's To header, which
    # feedback loops redact: it then names nobody in particular.
    recipient_named: bool = True


def classify(action: str = "", status: str = "", diagnostic: str = "") -> str:
    """Hard, soft, delayed, policy, delivered or unknown, from a DSN's fields or a bare text.

    The reply is read by delivery's one classifier, as the engine reads it at
    send time; a DSN that reports a transient reply as failed (the reporting MTA
    gave up retrying) is a soft bounce, or a policy refusal for 4.7.x.
    """
    action = action.strip().lower()
    if action == "delayed":
        return DELAYED
    if action in ("delivered", "relayed", "expanded"):
        return DELIVERED
    verdict = replies.judge(None, diagnostic, status)
    if verdict.transient:
        return POLICY if verdict.kind == POLICY else SOFT
    if verdict.kind == UNKNOWN and action == "failed":
        return SOFT
    return verdict.kind


def token_in(raw: bytes, envelope_rcpt: str = "", purpose: str = "bounce"):
    """The send id from a valid VERP token: the envelope recipient first, then the message."""
    local = "bounces" if purpose == "bounce" else "unsubscribe"
    candidates = []
    if envelope_rcpt:
        candidates.append(envelope_rcpt.encode("utf-8", "replace"))
    candidates.append(raw[:200000])
    for text in candidates:
        for match in _VERP.finditer(text):
            if match.group(1).lower().decode() != local:
                continue
            parts = unsign(purpose, match.group(2).decode())
            if parts and len(parts) == 1:
                return parts[0]
    return None


def parse(raw: bytes, envelope_rcpt: str = "") -> list[Report]:
    """Every Report in one inbound message; an empty list when it says nothing usable."""
    try:
        return _parse(raw, envelope_rcpt)
    except Exception:  # hostile input must never stop the caller
        log.warning("unreadable bounce message (%d bytes) to %r", len(raw), envelope_rcpt, exc_info=True)
        return []


class _Parts:
    """The message's parts with their content types, walked once."""

    def __init__(self, msg):
        self.msg = msg
        self.parts = []
        stack = [msg]
        while stack and len(self.parts) < 200:  # a bomb of nested parts stops here
            part = stack.pop()
            self.parts.append((part.get_content_type(), part))
            payload = part.get_payload()
            if part.is_multipart() and isinstance(payload, list):
                stack.extend(reversed(payload))

    def find(self, content_type):
        return next((part for ctype, part in self.parts if ctype == content_type), None)

    def walk(self):
        return self.parts


def _parse(raw, envelope_rcpt):
    msg = _Parts(message_from_bytes(raw))
    send_id = token_in(raw, envelope_rcpt)
    top = msg.parts[0][0]
    report_type = (msg.msg.get_param("report-type") or "").lower() if top == "multipart/report" else ""
    feedback = msg.find("message/feedback-report")
    if report_type == "feedback-report" or feedback is not None:
        return _arf(msg, feedback, send_id)
    status_part = msg.find("message/delivery-status")
    if status_part is not None:
        reports = _dsn(msg, status_part, send_id)
        if reports:
            return reports
    return _non_standard(msg, send_id)


def _original_headers(msg):
    """Headers of the returned original message (message/rfc822 or text/rfc822-headers)."""
    for ctype, part in msg.walk():
        if ctype in ("message/rfc822", "message/rfc822-headers"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
            if isinstance(payload, str):
                return HeaderParser().parsestr(payload)
        if ctype == "text/rfc822-headers":
            return HeaderParser().parsestr(_text(part))
    return None


def _text(part) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = part.get_payload()
        return payload[:_MAX_TEXT] if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload[:_MAX_TEXT].decode(charset, "replace")
    except LookupError:
        return payload[:_MAX_TEXT].decode("utf-8", "replace")


def _address(value) -> str:
    """``rfc822; Alice@Example.com`` → ``Alice@Example.com``."""
    value = str(value or "").strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    return value.strip().strip("<>").strip()


def _message_id(original) -> str:
    if original is None:
        return ""
    return str(original.get("Message-ID", "") or "").strip().strip("<>").strip()


def _fields(part):
    """The field blocks of a message/delivery-status part: per-message first, then per-recipient."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser().parsestr(block) for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()]


def _dsn(msg, status_part, send_id):
    original = _original_headers(msg)
    message_id = _message_id(original)
    if send_id is None and original is not None:
        send_id = token_in(str(original.get("Return-Path", "")).encode())
    reports = []
    for block in _fields(status_part):
        action = str(block.get("Action", "") or "").strip().lower()
        recipient = _address(block.get("Final-Recipient") or block.get("Original-Recipient"))
        if not action or not recipient:
            continue  # the per-message block, or a broken one
        status = str(block.get("Status", "") or "").strip()
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "") or "").split())
        if ";" in diagnostic[:20]:  # "smtp; 550 5.1.1 …": drop the diagnostic type
            diagnostic = diagnostic.split(";", 1)[1].strip()
        kind = classify(action, status, diagnostic)
        code = best_status(status, diagnostic)
        reports.append(Report(kind, recipient, action, code or status[:16], diagnostic[:2000], send_id, message_id))
    return reports


def _arf(msg, feedback, send_id):
    payload = feedback.get_payload() if feedback is not None else ""
    if isinstance(payload, list) and payload:
        fields = payload[0]  # the parser read the report's fields as a message's headers
    else:
        fields = HeaderParser().parsestr(_text(feedback) if feedback is not None else "")
    original = _original_headers(msg)
    feedback_type = str(fields.get("Feedback-Type", "abuse") or "abuse").strip().lower()
    if feedback_type == "not-spam":
        return []
    if send_id is None:
        mail_from = str(fields.get("Original-Mail-From", "") or "")
        send_id = token_in(mail_from.encode())
    if send_id is None and original is not None:
        send_id = token_in(str(original.get("Return-Path", "")).encode())
    recipient = _address(fields.get("Original-Rcpt-To") or fields.get("Removal-Recipient") or "")
    named = bool(recipient)
    if not recipient and original is not None:
        recipient = _address(original.get("To", ""))
    return [Report(COMPLAINT, recipient, "", "", feedback_type, send_id, _message_id(original), feedback_type, named)]


def _non_standard(msg, send_id):
    """A bounce in free text: read when it carries a VERP token or is clearly a failure notice."""
    text = next((_text(part) for ctype, part in msg.walk() if ctype.startswith("text/")), "")
    headers = msg.msg
    headline = f"{headers.get('From', '')} {headers.get('Subject', '')}"
    recipient = _address(headers.get("X-Failed-Recipients", "")).split(",")[0].strip()
    diagnostic = _diagnostic_line(text)
    kind = classify("", "", diagnostic or text[:2000])
    if kind in (UNKNOWN, DELIVERED):
        if not _BOUNCE_HINT.search(headline):
            return []  # an auto-reply or a stray message, not a failure
        kind = SOFT
    if send_id is None and not recipient:
        return []
    original = _original_headers(msg)
    return [Report(kind, recipient, "failed", best_status("", diagnostic or text[:2000]), diagnostic[:2000], send_id,
                   _message_id(original))]


def _diagnostic_line(text: str) -> str:
    """The line of a bounce text that explains the failure."""
    for line in text.splitlines():
        line = line.strip()
        if replies.STATUS_CODE.search(line) or replies.BASIC_CODE.search(line) or replies.hint(line):
            return line[:1000]
    return ""
