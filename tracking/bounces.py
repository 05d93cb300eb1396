"""Reading what comes back to the bounce address: DSNs, ARF complaints, and the rest.

``read(raw, envelope_rcpt)`` turns one message into a ``Reading``: one kind for
the whole message (hard, soft, policy, delayed, complaint, auto-reply or not a
bounce), the reason for it, and a ``Report`` per failed recipient.
``parse(raw, envelope_rcpt)`` is its reports alone. Neither touches the
database, so they are fast and testable alone. They understand

- delivery status notifications (RFC 3464 inside RFC 6522 ``multipart/report``):
  one Report per recipient block, classified on ``Action``, ``Status`` (RFC 3463)
  and the diagnostic text, and on the notice's own text where those say nothing;
- abuse feedback reports (ARF, RFC 5965): a complaint, with the original
  message's Message-ID and envelope sender to map a redacted report back;
- failure notices in free text, as qmail, old Exchange, Lotus, Yahoo, smtp32
  and many others write them: flufl.bounce (Mailman's bounce detectors) finds
  the failed recipients, ``delivery.classify.read_notice`` reads the reason;
- delay warnings, which are no bounce, and auto-replies (RFC 3834 headers and
  the usual subjects), which are no failure at all.

Parsing believes nothing: a Report carries what the message claims, and
tracking.feedback decides whether a valid token or Message-ID ties it to a Send.
Replies are read by delivery.classify, the engine's one classifier.

Garbage never raises: a message that cannot be read yields no Report.
"""

import copy
import logging
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

from flufl.bounce._detectors.aol import AOL
from flufl.bounce._detectors.caiwireless import Caiwireless
from flufl.bounce._detectors.exchange import Exchange
from flufl.bounce._detectors.qmail import Qmail
from flufl.bounce._detectors.qmail import introtags as qmail_introtags
from flufl.bounce._detectors.simplematch import SimpleMatch
from flufl.bounce._detectors.yahoo import Yahoo
from flufl.bounce._detectors.yale import Yale
from flufl.bounce._scan import _DETECTORS

from delivery import classify as replies
from delivery.classify import best_status
from delivery.tokens import unsign

log = logging.getLogger(__name__)
# flufl.bounce logs every detector it runs at INFO: a dozen lines per bounce.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)

HARD = replies.HARD
SOFT = replies.SOFT
POLICY = replies.POLICY  # the receiver refused the sender or the message, not the mailbox
DELIVERED = replies.DELIVERED
UNKNOWN = replies.UNKNOWN
DELAYED = "delayed"
COMPLAINT = "complaint"
AUTO_REPLY = "auto_reply"  # out of office, vacation, challenge: never a bounce
NOT_BOUNCE = "not_bounce"

__all__ = ["best_status", "classify", "parse", "read", "token_in", "Reading", "Report"]

_VERP = re.compile(rb"\b(bounces|unsubscribe)\+([0-9a-z]{1,20}(?:-[0-9a-z]{1,20}){1,3})@", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|has failed|failure|failed|incomplete|notification|report|problem|error)"
    r"|returned (?:mail|to sender)|failure (?:notice|delivery)|non[- ]?delivery|could not be delivered|not delivered"
    r"|mail delivery failed|failed mail|mail error|mail not delivered|processing error|rejected mail"
    r"|warning: message|delayed mail|message delayed|mail delivery (?:warning|problem)|delivery status notification"
    r"|nicht zugestellt|unzustellbar|non remis|olevererbar|no entregado|n[aã]o entregue|не доставлено",
    re.I,
)
_DAEMON = re.compile(r"mailer[-_]?daemon|postmaster|mail delivery|delivery subsystem|system administrator|mdaemon"
                     r"|antivirus|e500_smtp", re.I)
_AUTO_SUBJECT = re.compile(
    r"out of (?:the )?office|auto(?:matic)?[ -]?(?:reply|response|answer)|autoreply|auto-re:|vacation|on leave"
    r"|abwesenheit|automatische antwort|r[ée]ponse automatique|absence|respuesta autom[aá]tica|fuera de la oficina"
    r"|resposta autom[aá]tica|ausente|автоответ|автоматический ответ|automati\w* atbilde|atvaļinājums",
    re.I,
)
_DELAY = re.compile(
    r"warning:? message .{0,60}delayed|has been delayed|delivery (?:has been )?delayed|\(delay\)|delayed mail"
    r"|this is (?:just |only )?a warning|warning (?:message )?only|still being retried|will be retried"
    r"|will continue (?:to )?(?:attempt|try)|attempts will continue|has been postponed|not yet been delivered"
    r"|still awaiting delivery|message delayed|verz[öo]gert|noch nicht zugestellt|retard[ée]|retrasad|atrasad|задерж",
    re.I,
)
_FINAL = re.compile(r"permanent|given up|failed|returned to sender|undelivered mail", re.I)
# Where a notice stops explaining and the returned message begins.
_RETURNED = re.compile(
    r"^\s*(?:-+ ?(?:below this line is a copy|this is a copy of|original message|start of returned message"
    r"|message header follows|returned mail follows|header of the source mail)"
    r"|original message follows|a copy of the original message|the first \d+ lines of your original message"
    r"|your message reads \(in part\)|a summary of the undelivered message|---+ ?returned mail follows"
    r"|-+ ?the header of the original message|-+ ?original message -+|-+ ?message removed)",
    re.I | re.M,
)
_INLINE_MESSAGE_ID = re.compile(r"^\s*>?\s*Message-ID:\s*<([^<>\s]{3,250})>", re.I | re.M)
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
# Herald's own recipient rules, for notices flufl.bounce has no detector for.
_OWN_RECIPIENT_RULES = [
    # A full-mailbox notice from a Swiss hosting provider (unknown_code_bounce_01 in the corpus).
    re.compile(r"delivery of email to this address\s+\"([^\"\s]+@[^\"\s]+)\"", re.I),
]
# Which MTA wrote a notice, from the words each one always uses: told in the reason, for an operator.
_FAMILIES = [
    ("qmail", re.compile(r"qmail-send program|I'm afraid I wasn't able to deliver|I've given up", re.I)),
    ("Postfix", re.compile(r"This is the (?:mail system|[\w .()]*Postfix[\w .()]*program) at host|X-Postfix", re.I)),
    ("Gmail", re.compile(r"mailer-daemon@google(?:mail)?\.com|Google tried to deliver|gsmtp", re.I)),
    ("Exim", re.compile(r"created automatically by mail delivery software|X-Failed-Recipients", re.I)),
    ("Sendmail", re.compile(r"addresses had permanent fatal errors|Transcript of session follows", re.I)),
    ("Exchange", re.compile(r"MSEXCH|did not reach the following recipient|RESOLVER\.ADR|Internet Mail Service"
                            r"|Microsoft Exchange", re.I)),
    ("Lotus Domino", re.compile(r"Domino|X-Notes|Name & Address Book", re.I)),
    ("Yahoo", re.compile(r"Message from yahoo\.|MAILER-DAEMON@yahoo", re.I)),
    ("IMail", re.compile(r"SMTP32", re.I)),
    ("MDaemon", re.compile(r"MDaemon", re.I)),
    ("CommuniGate Pro", re.compile(r"CommuniGate", re.I)),
]
_MAX_TEXT = 20000


def _lowercase(pattern):
    """A pattern that ignores case, compiled to search lowercased text instead: the same matches (for the
    letters Herald's patterns spell), several times faster, as ignoring case loses the quick scans for
    literal words."""
    assert not re.search(r"\\[A-Z]", pattern.pattern), "an escape such as \\S must keep its case"
    return re.compile(pattern.pattern.lower(), pattern.flags & ~re.I)


_LOWERCASE_FAMILIES = [(name, _lowercase(words)) for name, words in _FAMILIES]
_LOWERCASE_DELAY = _lowercase(_DELAY)
_RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
_HTML_TAG = re.compile(r"<[^>]{0,1000}>")
_BLANK_LINES = re.compile(r"\r?\n\s*\r?\n")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_FIELD = re.compile(r"([\041-\071\073-\176]+):([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)\r?\n")
_FIELDS = re.compile(r"(?:[\041-\071\073-\176]+:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n)*")
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")


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
    reason: str = ""  # why this kind, for an operator


@dataclass
class Reading:
    """What one inbound message is, and why."""

    kind: str
    reason: str = ""
    reports: list = field(default_factory=list)
    send_id: int | None = None
    family: str = ""  # the MTA that wrote it, when its wording tells


def classify(action: str = "", status: str = "", diagnostic: str = "") -> str:
    """Hard, soft, delayed, policy, delivered or unknown, from a DSN's fields or a bare text.

    The reply is read by delivery's one classifier, as the engine reads it at
    send time; a DSN that reports a transient reply as failed (the reporting MTA
    gave up retrying) is a soft bounce, or a policy refusal for 4.7.x.
    """
    action = (action.strip().split() or [""])[0].lower()
    if action == "delayed":
        return DELAYED
    if action in ("delivered", "relayed", "expanded"):
        return DELIVERED
    verdict = replies.judge(None, diagnostic, status)
    if verdict.transient:
        return POLICY if verdict.kind == POLICY else SOFT
    if verdict.kind == UNKNOWN and action in ("failed", "error", "failure"):
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
        # The pattern ignores case: its words looked up in the lowercased text first, which is far quicker.
        first = text.lower().find(local.encode() + b"+")
        if first < 0:
            continue
        for match in _VERP.finditer(text, max(0, first - 1)):
            if match.group(1).lower().decode() != local:
                continue
            parts = unsign(purpose, match.group(2).decode())
            if parts and len(parts) == 1:
                return parts[0]
    return None


def parse(raw: bytes, envelope_rcpt: str = "") -> list[Report]:
    """Every Report in one inbound message; an empty list when it says nothing usable."""
    return read(raw, envelope_rcpt).reports


def read(raw: bytes, envelope_rcpt: str = "") -> Reading:
    """The kind of one inbound message, the reason, and its Reports."""
    try:
        return _read(raw, envelope_rcpt)
    except Exception:  # hostile input must never stop the caller
        log.warning("unreadable bounce message (%d bytes) to %r", len(raw), envelope_rcpt, exc_info=True)
        return Reading(NOT_BOUNCE, "unreadable")


class _Parts:
    """The message's parts with their content types, walked once."""

    def __init__(self, msg):
        self.msg = msg
        self._explanation = None
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

    @property
    def explanation(self) -> str:
        if self._explanation is None:
            self._explanation = _explanation(self)
        return self._explanation


def _read(raw, envelope_rcpt):
    msg = _Parts(_message(raw))
    send_id = token_in(raw, envelope_rcpt)
    top = msg.parts[0][0]
    report_type = (msg.msg.get_param("report-type") or "").lower() if top == "multipart/report" else ""
    feedback = msg.find("message/feedback-report")
    if report_type == "feedback-report" or feedback is not None:
        reports = _arf(msg, feedback, send_id)
        reason = f"ARF feedback report ({reports[0].feedback_type})" if reports else "ARF report: not spam"
        return Reading(COMPLAINT if reports else NOT_BOUNCE, reason, reports, send_id)
    status_part = msg.find("message/delivery-status")
    reading = _dsn(msg, status_part, send_id) if status_part is not None else None
    if reading is None:
        reading = _notice(msg, send_id)
    if reading.kind not in (AUTO_REPLY, NOT_BOUNCE):
        reading.family = _family(msg, status_part)
        if reading.family:
            reading.reason = f"{reading.family}: {reading.reason}"
            for report in reading.reports:
                report.reason = f"{reading.family}: {report.reason}"
    return reading


def _message(raw: bytes):
    """The message as ``email.message_from_bytes`` reads it, but for the body of any message it returns.

    The returned original is most of a bounce's lines, often multipart itself, and the standard
    parser reads all of it and compiles a pattern for every MIME boundary. Reading needs the
    notice's own parts and the returned message's headers only: parts are split at their
    boundaries with ``str.find``, and a message/* part that follows other parts (a returned
    message, always after the notice's own text) holds its message's headers, with its body as
    unparsed text. A message/* part that comes first is read whole: a notice forwarded by a
    gateway or a list. message/delivery-status is left as text, which ``_fields`` reads.
    """
    return _part(raw.decode("ascii", "surrogateescape"), [0], 0, first=True)


def _part(text, count, depth, first):
    msg, body = _headers(text)
    count[0] += 1
    if depth > 10 or count[0] > 200:  # a bomb of nested parts stops here
        msg.set_payload(body)
        return msg
    ctype = msg.get_content_type()
    if ctype.startswith("message/") and ctype != "message/delivery-status":
        if first:
            msg.set_payload([_part(body, count, depth + 1, first=True)])
        else:
            returned, rest = _headers(body)
            returned.set_payload(rest)
            msg.set_payload([returned])
        return msg
    boundary = msg.get_boundary() if ctype.startswith("multipart/") else None
    parts = _split(body, boundary) if boundary else None
    if parts is None or isinstance(parts, str):  # a leaf, or a multipart without parts: text, as the parser reads it
        msg.set_payload(body if parts is None else parts)
    else:
        msg.set_payload([_part(p, count, depth + 1, first=i == 0) for i, p in enumerate(parts)])
    return msg


class _Message(Message):
    """A compat32 message that finds a header by name in a dict, not by lowering every name it has.

    Reading asks a message for a header (Content-Type above all) hundreds of times; a bounce
    easily has forty headers. A plain value (no undecodable bytes, so the policy returns the
    string itself) is kept as fetched, and so is the content type made from it.
    """

    _index = None
    _indexed = None  # the header list the index was made from…
    _indexed_length = 0  # …and its length then
    _ctype = None  # (index, default type, content type)

    def _lookup(self):
        headers = self._headers
        if self._indexed is not headers or self._indexed_length != len(headers) or self._index is None:
            index = {}
            for key, value in headers:
                index.setdefault(key.lower(), (key, value))
            self._index, self._indexed, self._indexed_length = index, headers, len(headers)
        return self._index

    def get(self, name, failobj=None):
        index = self._lookup()
        lower = name.lower()
        found = index.get(lower)
        if found is None:
            return failobj
        if found.__class__ is str:
            return found
        value = self.policy.header_fetch_parse(*found)
        if value.__class__ is str:
            index[lower] = value
        return value

    def get_content_type(self):
        index = self._lookup()
        cached = self._ctype
        if cached is None or cached[0] is not index or cached[1] != self._default_type:
            cached = self._ctype = (index, self._default_type, super().get_content_type())
        return cached[2]

    def _get_params_preserve(self, failobj, header):
        value = self.get(header)
        if value.__class__ is not str:
            return super()._get_params_preserve(failobj, header)
        params = _PARAMS.get(value)
        if params is None:
            params = tuple(super()._get_params_preserve(failobj, header))
            if len(_PARAMS) >= 1024:
                _PARAMS.clear()
            _PARAMS[value] = params
        return list(params)

    def replace_header(self, name, value):
        self._index = None  # the one change to the header list that keeps its length
        super().replace_header(name, value)


# Parameters of a header value (Content-Type, Content-Disposition), as the email package parses them:
# a notice's parts mostly say the same few things.
_PARAMS = {}


def _headers(text):
    """A message with the header block of ``text`` parsed as the standard (compat32) parser does, and the rest."""
    msg = _Message()
    # Most header blocks are plain fields ending at an empty line: read them a field at a time.
    # The run of plain fields is found in one match, then split into fields: as matching them one by one would.
    pos = _FIELDS.match(text).end()
    fields = [(name, value.lstrip(" \t")) for name, value in _FIELD.findall(text, 0, pos)]
    if text.startswith("\n", pos) or text.startswith("\r\n", pos) or pos == len(text):
        msg._headers = fields
        return msg, text[text.index("\n", pos) + 1:] if pos < len(text) else ""
    # Anything else (a "From " line, a lone CR, a line that is no header) line by line, as the parser reads it.
    name, value = "", []
    pos = 0
    for line in _LINE.finditer(text):
        line = line.group()
        if not _HEADER_LINE.match(line):
            if line.strip("\r\n"):  # a line that is no header ends the block, and belongs to the body
                break
            pos += len(line)  # the empty line that ends the block
            break
        pos += len(line)
        if line[0] in " \t":
            if name:
                value.append(line)
            continue
        if name:
            msg.set_raw(*_header_field(value))
            name, value = "", []
        if line.startswith("From "):
            if pos == len(line):
                msg.set_unixfrom(line.rstrip("\r\n"))
            continue
        colon = line.find(":")
        if colon > 0:
            name, value = line[:colon], [line]
    if name:
        msg.set_raw(*_header_field(value))
    return msg, text[pos:]


def _header_field(lines):
    """Name and value of a header from its lines, as the compat32 policy's ``header_source_parse``."""
    name, value = lines[0].split(":", 1)
    return name, (value.lstrip(" \t") + "".join(lines[1:])).rstrip("\r\n")


def _split(body, boundary):
    """The parts of a multipart body, as the standard parser delimits them; text where it finds none
    (None: no boundary at all, the body stays as it is)."""
    delimiter = "--" + boundary
    parts = []
    start = None  # where the current part begins
    pos = 0
    while (at := body.find(delimiter, pos)) >= 0:
        pos = at + 1
        line = _boundary_line(body, at, delimiter)
        if line is None:
            continue
        end, close = line
        if start is None and close:
            return body[:at]  # a closing boundary before any other: the parser keeps what came before, as text
        if start is not None:
            # The line break before a boundary belongs to the boundary.
            stop = at - 2 if body.startswith("\r\n", at - 2) else at - 1 if at and body[at - 1] in "\r\n" else at
            parts.append(body[start:max(stop, start)])
        if close:
            return parts
        # Boundary lines right after a boundary (closing ones too) open no part: the parser skips them.
        while (line := _boundary_line(body, end, delimiter)) is not None:
            end = line[0]
        start = pos = end
    if start is None:
        return None
    # No closing boundary: the last part runs to the end, less its last line break, as the parser reads it.
    last = body[start:]
    parts.append(last[:-2] if last.endswith("\r\n") else last[:-1] if last.endswith(("\n", "\r")) else last)
    return parts


def _boundary_line(body, at, delimiter):
    """(where the line ends, whether it closes) if a boundary line starts at ``at``, else None."""
    if not body.startswith(delimiter, at) or (at and body[at - 1] not in "\r\n"):
        return None
    end = at + len(delimiter)
    close = body.startswith("--", end)
    if close:
        end += 2
    size = len(body)
    while end < size and body[end] in " \t":
        end += 1
    if end < size:
        if body.startswith("\r\n", end):
            end += 2
        elif body[end] in "\r\n":
            end += 1
        else:
            return None  # a line that only starts like the boundary
    return end, close


def _family(msg, status_part) -> str:
    """The MTA that wrote the notice, from its own words: never from the Received headers of those it passed."""
    headers = msg.msg
    own = [str(headers.get(name, "") or "") for name in ("From", "X-Mailer", "Message-ID")]
    if headers.get("X-Failed-Recipients"):
        own.append("X-Failed-Recipients")
    if status_part is not None:
        own.append(str(status_part.get_payload())[:2000])
    text = " ".join(own) + " " + msg.explanation[:3000]
    text = text.lower()
    return next((name for name, words in _LOWERCASE_FAMILIES if words.search(text)), "")


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
    """``rfc822; Alice@Example.com`` → ``Alice@Example.com``; ``system;<>`` and other non-addresses → ""."""
    value = str(value or "").strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    return value if "@" in value else ""


def _message_id(original) -> str:
    if original is None:
        return ""
    return str(original.get("Message-ID", "") or "").strip().strip("<>").strip()


def _header(msg, name) -> str:
    """A header's text with RFC 2047 encoded words decoded."""
    value = msg.get(name, "")
    if not value:
        return ""
    try:
        return str(make_header(decode_header(str(value))))
    except Exception:  # a broken encoded word: read it as it stands
        return str(value)


def _explanation(msg) -> str:
    """The notice's human-readable text, up to where the returned message begins."""
    plain = html = None
    inside_returned = False
    for ctype, part in msg.walk()[:40]:
        if ctype in ("message/rfc822", "text/rfc822-headers"):
            inside_returned = True  # parts after this belong to the returned message
        if inside_returned or part.get("Content-Disposition", "").lower().startswith("attachment"):
            continue
        if ctype == "text/plain" and plain is None:
            plain = _text(part)
        elif ctype == "text/html" and html is None:
            html = _HTML_TAG.sub(" ", _text(part)).replace("&nbsp;", " ")
    text = plain if plain and plain.strip() else (html or "")
    cut = _RETURNED.search(text)
    return text[:cut.start()] if cut else text


def _fields(part):
    """The field blocks of a message/delivery-status part: per-message first, then per-recipient."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload
    text = payload if isinstance(payload, str) else ""
    return [_headers(block)[0] for block in _BLANK_LINES.split(text) if block.strip()]


def _dsn(msg, status_part, send_id):
    """A Reading from the DSN's recipient blocks, or None when none is usable."""
    original = _original_headers(msg)
    message_id = _message_id(original)
    if send_id is None and original is not None:
        send_id = token_in(str(original.get("Return-Path", "")).encode())
    notice = None
    reports = []
    for block in _fields(status_part):
        action = str(block.get("Action", "") or "").strip().lower()
        # The address the sender gave comes first: Final-Recipient may be an alias's
        # target, or "system;<>" when the reporting MTA knew no better.
        recipient = _address(block.get("Original-Recipient")) or _address(block.get("Final-Recipient"))
        if not action or not recipient:
            continue  # the per-message block, or a broken one
        status = " ".join(str(block.get("Status", "") or "").split())
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "") or "").split())
        if ";" in diagnostic[:20]:  # "smtp; 550 5.1.1 …": drop the diagnostic type
            diagnostic = diagnostic.split(";", 1)[1].strip()
        evidence = diagnostic or status.partition(" ")[2].strip("() ")
        precise = best_status(status, evidence)
        if (not precise or precise.endswith(".0.0")) and not replies.hint(evidence):
            # A bare or generic Status and no telling words: what the notice's text says decides.
            if notice is None:
                notice = replies.read_notice(msg.explanation)
            evidence = f"{evidence} {notice.diagnostic}".strip()
        kind = classify(action, status, evidence)
        code = best_status(status, evidence)
        reason = f"DSN Action {action.split()[0]}, Status {status.split(' ')[0] or 'none'}"
        if code and code != status.split(" ")[0]:
            reason += f", {code} in the diagnostic"
        reports.append(Report(kind, recipient, action.split()[0], code or status[:16], (diagnostic or evidence)[:2000],
                              send_id, message_id, reason=f"{reason}: {kind}"))
    if not reports:
        return None
    return Reading(reports[0].kind, reports[0].reason, reports, send_id)


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
    return [Report(COMPLAINT, recipient, "", "", feedback_type, send_id, _message_id(original), feedback_type, named,
                   reason=f"ARF feedback report ({feedback_type})")]


def _auto_reply(headers, subject) -> str:
    """Why the message is an automatic reply (RFC 3834 and common practice), or ""."""
    auto = str(headers.get("Auto-Submitted", "") or "").strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto[:40]}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-Auto-Response"):
        if headers.get(name):
            return f"{name} header"
    if str(headers.get("Precedence", "") or "").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    if _AUTO_SUBJECT.search(subject):
        return f"subject {subject[:60]!r}"
    return ""


def _notice(msg, send_id):
    """A message with no usable DSN: a failure notice in free text, a delay warning, an auto-reply, or mail."""
    headers = msg.msg
    subject = _header(headers, "Subject")
    sender = _header(headers, "From")
    failed = [a for _, a in getaddresses([str(headers.get("X-Failed-Recipients", "") or "")]) if "@" in a]
    from_daemon = bool(_DAEMON.search(sender)) or sender.replace(" ", "").endswith("<>")  # the null sender
    evidence = ""
    if failed:
        evidence = "X-Failed-Recipients"
    elif _BOUNCE_SUBJECT.search(subject):
        evidence = f"subject {subject[:60]!r}"
    elif from_daemon and sender:
        evidence = f"from {sender[:60]!r}"
    if not evidence:
        auto = _auto_reply(headers, subject)
        if auto:
            return Reading(AUTO_REPLY, f"auto-reply: {auto}", [], send_id)
    text = msg.explanation
    recipients = failed or _recipients(headers, text)
    if not evidence and recipients:
        evidence = "failed recipients named in the notice"
    if not evidence:
        return Reading(NOT_BOUNCE, "no sign of a bounce", [], send_id)
    message_id = _message_id(_original_headers(msg)) or _inline_message_id(msg)
    delay = _LOWERCASE_DELAY.search(f"{subject} {text[:3000]}".lower())
    if delay and not _FINAL.search(subject) and "permanent" not in text.lower():
        kind, reason, notice = DELAYED, "a warning that delivery is still being tried", None
    else:
        notice = replies.read_notice(text)
        kind = notice.kind if notice.kind != UNKNOWN else SOFT
        reason = notice.reason if notice.kind != UNKNOWN else "a failure notice that gives no reason"
    reason = f"{reason} ({evidence})"
    status = notice.status if notice else ""
    diagnostic = notice.diagnostic if notice else ""
    action = "delayed" if kind == DELAYED else "failed"
    if not recipients:
        if send_id is None:
            return Reading(kind, reason, [], None)  # nothing ties it to a send, nobody to name
        recipients = [""]
    reports = [Report(kind, r, action, status, diagnostic[:2000], send_id, message_id, reason=reason) for r in recipients]
    return Reading(kind, reason, reports, send_id)


def _recipients(headers, text) -> list[str]:
    """The failed recipients a free-text notice names: flufl.bounce's detectors, then Herald's own rules."""
    try:
        temporary, permanent = _all_failures(_without_returned_message(headers))
    except Exception:  # flufl.bounce's detectors trip over mangled input: Herald's own rules still run
        temporary, permanent = set(), set()
    found = sorted({a.decode("utf-8", "replace") for a in (permanent | temporary)})
    found = [a for a in found if _ADDRESS.fullmatch(a)]
    if found:
        return found
    for rule in _OWN_RECIPIENT_RULES:
        match = rule.search(text)
        if match:
            return [match.group(1)]
    return []


def _all_failures(msg):
    """flufl.bounce's ``all_failures``: its detectors in its order, the first that finds anyone wins.

    A detector is skipped where the notice lacks words it cannot find anything without (its
    provider's name in From, the line it starts reading after), which changes no result and
    saves reading every line again. Its two catch-all detectors (SimpleMatch and SimpleWarning)
    try some sixty pattern sets, each over every line of the notice; a set only collects
    addresses after a line matches its start pattern. They are given only the sets whose start
    pattern matches somewhere in the notice (its words looked up in the whole text, then the
    pattern searched in it, lines anchored alike), which finds the same addresses.
    """
    # What its detectors read: the From header, and the texts they read line by line
    # (email.iterators.body_line_iterator), as they are and casefolded.
    text = "\n".join(p for p in (part.get_payload() for part in msg.walk()) if isinstance(p, str))
    sources = {"From": str(msg.get("From", "")).lower(), "text": text, "folded": text.casefold()}
    for detector in _DETECTORS:
        where, alternatives = _NEEDS.get(detector, ("", ()))
        if alternatives and not any(all(w in sources[where] for w in words) for words in alternatives):
            continue
        instance = detector()
        if issubclass(detector, SimpleMatch):
            instance.PATTERNS = _patterns_starting_in(detector, text, sources["folded"])
            if not instance.PATTERNS:
                continue
        temporary, permanent = instance.process(msg)
        if temporary or permanent:
            return temporary, permanent
    return frozenset(), frozenset()


def _patterns_starting_in(detector, text, folded):
    return [pattern for pattern, (words, start) in zip(detector.PATTERNS, _START_PATTERNS[detector], strict=True)
            if words in folded and start.search(text)]


def _start_pattern(start):
    """A start pattern that matches at line starts and ends within a whole text, and the words it begins with.

    The words (casefolded, as the pattern ignores case) are a quick test: a text without them cannot match.
    """
    words = []
    for char in start.pattern.removeprefix("^"):
        if char in _REGEX_SYNTAX:
            if char in "*?{" and words:
                words.pop()  # the last character may occur no times at all
            break
        words.append(char)
    if _alternatives_at_top(start.pattern):
        words = []
    return "".join(words).casefold(), re.compile(start.pattern, start.flags | re.M)


def _alternatives_at_top(pattern):
    depth = 0
    escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
    return False


_REGEX_SYNTAX = set("\\.^$*+?{}[]|()")
# Where a detector finds nothing: without all the words of one of these sets in the lowercased From
# header, in the text, or in the casefolded text.
_NEEDS = {
    Yahoo: ("From", [("mailer-daemon", "yahoo")]),
    Yale: ("From", [("mailer-daemon", "yale")]),
    AOL: ("From", [("aol.com",)]),
    Qmail: ("text", [(tag,) for tag in qmail_introtags]),  # a line starting with one of them
    Exchange: ("text", [("did not reach the following recipient",)]),
    Caiwireless: ("folded", [("the following recipients did not receive this message:",)]),
}
_START_PATTERNS = {d: [_start_pattern(start) for start, _, _ in d.PATTERNS]
                   for d in _DETECTORS if issubclass(d, SimpleMatch)}


def _without_returned_message(part, depth=0):
    """A copy of the notice without the message it returns, for flufl.bounce's detectors.

    They read every line of every part; the returned message only slows them
    down (it is most of a notice's lines) and offers them addresses that never failed.
    """
    clone = copy.copy(part)  # shallow: the headers stay shared and unchanged
    payload = part.get_payload()
    if isinstance(payload, list) and depth < 10:
        clone.set_payload([_without_returned_message(p, depth + 1) for p in payload
                           if p.get_content_type() not in _RETURNED_TYPES])
    elif isinstance(payload, str):
        cut = _RETURNED.search(payload, 0, _MAX_TEXT)
        clone.set_payload(payload[:cut.start()] if cut else payload[:_MAX_TEXT])
    return clone


def _inline_message_id(msg) -> str:
    """The Message-ID of a returned message quoted as text (a notice with no message/rfc822 part)."""
    for ctype, part in msg.walk()[:40]:
        if ctype.startswith("text/"):
            text = _text(part)
            cut = _RETURNED.search(text)
            match = _INLINE_MESSAGE_ID.search(text, cut.start() if cut else 0)
            if match:
                return match.group(1)
    return ""
