"""Test sends: the real message for a few addresses, sent at once through the configured relay.

The message is built exactly as the campaign will build it, for the contact
with that address when there is one (else for a contact with empty fields),
and handed over synchronously: through the first enabled Relay (its host,
port, TLS mode, certificate check and credentials), or through EMAIL_HOST and
EMAIL_PORT when no relay is configured. Each address gets its own result; a
relay error says what the server answered and which server it was.
"""

import smtplib
import ssl
from dataclasses import dataclass

from django.conf import settings
from email_validator import EmailNotValidError, validate_email

from campaigns.models import Contact, email_key
from campaigns.rendering import ContactData
from delivery.message import compile_campaign
from delivery.models import Relay

MAX_ADDRESSES = 10
TIMEOUT = 30


@dataclass
class TestResult:
    address: str
    ok: bool
    detail: str

    __test__ = False  # not a pytest class


@dataclass
class _TestSend:
    """What the builder reads of a Send. Id 0 belongs to no Send: its tracking links lead nowhere."""

    email: str
    pk: int = 0


@dataclass
class _Server:
    host: str
    port: int
    security: str = Relay.Security.NONE
    verify_certificate: bool = True
    username: str = ""
    password: str = ""
    helo_name: str = ""

    @property
    def where(self):
        return f"{self.host}:{self.port}"


def _server():
    relay = Relay.objects.filter(enabled=True).order_by("pk").first()
    if relay is not None:
        return _Server(relay.host, relay.port, relay.security, relay.verify_certificate, relay.username,
                       relay.password, relay.helo_name)
    security = Relay.Security.TLS if getattr(settings, "EMAIL_USE_SSL", False) else (
        Relay.Security.STARTTLS if getattr(settings, "EMAIL_USE_TLS", False) else Relay.Security.NONE)
    return _Server(settings.EMAIL_HOST, settings.EMAIL_PORT, security, True,
                   getattr(settings, "EMAIL_HOST_USER", ""), getattr(settings, "EMAIL_HOST_PASSWORD", ""))


def _tls_context(server):
    context = ssl.create_default_context()
    if not server.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _reply(exc):
    """``535 5.7.8 Authentication failed`` from an smtplib error."""
    code = getattr(exc, "smtp_code", None)
    text = getattr(exc, "smtp_error", b"")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}".strip() if code else str(exc)


def _connect(server):
    helo = server.helo_name or None
    if server.security == Relay.Security.TLS:
        conn = smtplib.SMTP_SSL(server.host, server.port, local_hostname=helo, timeout=TIMEOUT,
                                context=_tls_context(server))
    else:
        conn = smtplib.SMTP(server.host, server.port, local_hostname=helo, timeout=TIMEOUT)
    try:
        conn.ehlo()
        if server.security == Relay.Security.STARTTLS:
            if not conn.has_extn("starttls"):
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS, which this relay requires")
            conn.starttls(context=_tls_context(server))
            conn.ehlo()
        if server.username:
            conn.login(server.username, server.password)
    except BaseException:
        conn.close()
        raise
    return conn


def check_addresses(addresses):
    """(clean addresses, errors) for a list given by a person; at most MAX_ADDRESSES."""
    if not addresses:
        raise ValueError("give at least one address")
    if len(addresses) > MAX_ADDRESSES:
        raise ValueError(f"at most {MAX_ADDRESSES} addresses per test send, got {len(addresses)}")
    clean, errors = [], []
    for address in addresses:
        address = (address or "").strip()
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:
            errors.append(TestResult(address, False, f"not a valid address: {exc}"))
            continue
        clean.append(address)
    return clean, errors


def send_test(campaign, addresses):
    """Send the campaign's real message to each address now; a TestResult per address, in the order given."""
    results = _send_test(campaign, addresses)
    order = {(a or "").strip(): n for n, a in reversed(list(enumerate(addresses)))}
    return sorted(results, key=lambda r: order.get(r.address, len(order)))


def _send_test(campaign, addresses):
    clean, results = check_addresses(addresses)
    if not clean:
        return results
    compiled = compile_campaign(campaign)
    contacts = {c.email_key: c for c in Contact.objects.filter(email_key__in=[email_key(a) for a in clean])}
    built = []
    for address in clean:
        contact = contacts.get(email_key(address))
        built.append(compiled.build(_TestSend(address), contact if contact else ContactData(address)))
    server = _server()
    try:
        conn = _connect(server)
    except smtplib.SMTPException as exc:
        return results + [TestResult(a, False, f"{_reply(exc)} from {server.where}") for a in clean]
    except OSError as exc:  # refused, timed out, or TLS failed (ssl.SSLError is an OSError)
        reason = exc.strerror or str(exc)
        return results + [TestResult(a, False, f"cannot connect to {server.where}: {reason}") for a in clean]
    try:
        for message in built:
            results.append(_send_one(conn, server, message))
    finally:
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()
    return results


def _send_one(conn, server, message):
    try:
        conn.sendmail(message.mail_from, [message.rcpt], message.data)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return TestResult(message.rcpt, False, f"{code} {text.decode('utf-8', 'replace')} from {server.where}")
    except smtplib.SMTPResponseException as exc:
        return TestResult(message.rcpt, False, f"{_reply(exc)} from {server.where}")
    except (smtplib.SMTPException, OSError) as exc:
        return TestResult(message.rcpt, False, f"{exc} ({server.where})")
    return TestResult(message.rcpt, True, f"accepted by {server.where} (Message-ID <{message.message_id}>)")


def preview(campaign, contact=None, address=""):
    """What ``contact`` (or an address with empty fields) would receive: for the admin and the API.

    Returns the raw headers, the text part, the HTML part and the variables
    the templates use that this contact lacks.
    """
    from email import message_from_bytes, policy

    from campaigns.rendering import missing_variables

    data = ContactData.of(contact) if contact is not None else ContactData(address or "preview@example.com")
    built = compile_campaign(campaign).build(_TestSend(data.email), data)
    raw_headers, _, _ = built.data.partition(b"\r\n\r\n")
    msg = message_from_bytes(built.data, policy=policy.default)
    text = html = ""
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not text:
            text = part.get_content()
        elif part.get_content_type() == "text/html" and not html:
            html = part.get_content()
    return {
        "subject": str(msg["Subject"] or ""),
        "from": str(msg["From"] or ""),
        "to": built.rcpt,
        "headers": raw_headers.decode("ascii", "replace").replace("\r\n", "\n"),
        "text": text,
        "html": html,
        "missing": missing_variables(campaign, data),
        "size": len(built.data),
    }
