"""Reading bounces from a mailbox (IMAP or POP3) instead of, or beside, the bounce server.

The mailbox is named by a URL (HERALD_BOUNCE_MAILBOX):

    imaps://user:password@host[:993][/Folder]     implicit TLS (the default kind)
    imap://user:password@host[:143][/Folder]      STARTTLS, required (also imap+starttls://)
    pop3s://user:password@host[:995]              implicit TLS
    pop3://user:password@host[:110]               STLS, required (also pop3+starttls://)
    imap+plain://… and pop3+plain://…             no TLS at all: loopback or tests only

Certificates are verified against the system's CAs, or HERALD_BOUNCE_MAILBOX_CAFILE.
A processed message is marked done: flagged \\Seen on IMAP (only unseen ones
are fetched), deleted on POP3, which has no flags.
"""

import imaplib
import logging
import poplib
import ssl
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tracking.feedback import process_message

log = logging.getLogger(__name__)

_SCHEMES = {
    "imaps": ("imap", "tls", 993),
    "imap": ("imap", "starttls", 143),
    "imap+starttls": ("imap", "starttls", 143),
    "imap+plain": ("imap", "none", 143),
    "pop3s": ("pop3", "tls", 995),
    "pop3": ("pop3", "starttls", 110),
    "pop3+starttls": ("pop3", "starttls", 110),
    "pop3+plain": ("pop3", "none", 110),
}
_TIMEOUT = 60


@dataclass
class Mailbox:
    protocol: str
    security: str
    host: str
    port: int
    user: str
    password: str
    folder: str = "INBOX"

    @classmethod
    def from_url(cls, url: str, setting: str = "HERALD_BOUNCE_MAILBOX"):
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ImproperlyConfigured(f"{setting}: scheme {parts.scheme!r} is not one of {', '.join(_SCHEMES)}")
        protocol, security, default_port = _SCHEMES[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            raise ImproperlyConfigured(f"{setting}: the port is not a number") from None
        if not parts.hostname or not parts.username or parts.password is None:
            raise ImproperlyConfigured(f"{setting}: needs user, password and host, as in imaps://user:pass@host/INBOX")
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        return cls(protocol, security, parts.hostname, port, unquote(parts.username), unquote(parts.password), folder)


@dataclass
class PollResult:
    processed: int = 0
    events: int = 0
    failed: list = field(default_factory=list)


def _context():
    return ssl.create_default_context(cafile=settings.HERALD_BOUNCE_MAILBOX_CAFILE or None)


def _envelope_rcpt(raw: bytes) -> str:
    """The address the message was delivered to, so a mailto unsubscribe is recognised too."""
    headers = BytesHeaderParser().parsebytes(raw[:65536])
    for name in ("Delivered-To", "X-Original-To", "Envelope-To"):
        value = str(headers.get(name, "") or "").strip().strip("<>")
        if value.lower().startswith("unsubscribe+"):
            return value
    return ""


def _handle(raw: bytes, source: str, result: PollResult, ref) -> bool:
    try:
        events = process_message(raw, _envelope_rcpt(raw), source=source)
    except Exception:
        # Left unmarked so the next poll tries again (a database outage, say).
        log.exception("could not process message %s from the bounce mailbox", ref)
        result.failed.append(ref)
        return False
    result.processed += 1
    result.events += len(events)
    return True


def poll(url: str | None = None, limit: int = 500) -> PollResult:
    """Process up to ``limit`` new messages of the bounce mailbox and mark each one done."""
    url = url if url is not None else settings.HERALD_BOUNCE_MAILBOX
    if not url:
        raise ImproperlyConfigured("HERALD_BOUNCE_MAILBOX is not set")
    box = Mailbox.from_url(url)
    return _poll_imap(box, limit) if box.protocol == "imap" else _poll_pop3(box, limit)


def _check(status, data, what):
    if status != "OK":
        raise imaplib.IMAP4.error(f"{what} failed: {data!r}")
    return data


def _poll_imap(box: Mailbox, limit: int) -> PollResult:
    result = PollResult()
    if box.security == "tls":
        conn = imaplib.IMAP4_SSL(box.host, box.port, ssl_context=_context(), timeout=_TIMEOUT)
    else:
        conn = imaplib.IMAP4(box.host, box.port, timeout=_TIMEOUT)
        if box.security == "starttls":
            conn.starttls(ssl_context=_context())
    try:
        conn.login(box.user, box.password)
        _check(*conn.select(_quote(box.folder)), f"SELECT {box.folder}")
        (found,) = _check(*conn.uid("SEARCH", None, "UNSEEN"), "SEARCH UNSEEN")
        for uid in found.split()[:limit]:
            data = _check(*conn.uid("FETCH", uid, "(BODY.PEEK[])"), f"FETCH {uid!r}")
            raw = next((item[1] for item in data if isinstance(item, tuple)), None)
            if raw is None:
                continue
            if _handle(raw, "imap", result, uid.decode()):
                _check(*conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)"), f"STORE {uid!r}")
        conn.close()
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return result


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _poll_pop3(box: Mailbox, limit: int) -> PollResult:
    result = PollResult()
    if box.security == "tls":
        conn = poplib.POP3_SSL(box.host, box.port, context=_context(), timeout=_TIMEOUT)
    else:
        conn = poplib.POP3(box.host, box.port, timeout=_TIMEOUT)
        if box.security == "starttls":
            conn.stls(context=_context())
    try:
        conn.user(box.user)
        conn.pass_(box.password)
        count, _ = conn.stat()
        for number in range(1, min(count, limit) + 1):
            _, lines, _ = conn.retr(number)
            if _handle(b"\r\n".join(lines) + b"\r\n", "pop3", result, number):
                conn.dele(number)
    finally:
        # QUIT commits the deletions (RFC 1939 UPDATE state).
        conn.quit()
    return result
