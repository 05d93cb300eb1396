"""A small, fast SMTP client for the send engine, and the per-process connection pool.

Why not smtplib or aiosmtplib: the engine sends hundreds of single-recipient
messages over one connection, and with ESMTP PIPELINING (RFC 2920) each message
then costs one round trip: the message body, its final dot and the next
message's MAIL, RCPT and DATA go out in one write. Neither library pipelines:
each waits for the reply to MAIL, to every RCPT, to DATA and to the final dot,
four round trips per message (80 ms at a 20 ms round trip instead of 20 ms),
and aiosmtplib's event loop buys nothing in a prefork worker that sends one
batch at a time. Everything else (greeting, EHLO, STARTTLS, AUTH) is plain
RFC 5321. This one client serves the engine, test sends (delivery.testsend)
and relay checks (delivery.relaycheck), so all three route, authenticate and
trust certificates (HERALD_SMTP_CA_FILE) alike; aiosmtplib is therefore not a
dependency (the servers Herald runs use aiosmtpd, the server side).

Connections are blocking sockets owned by one worker process; a Celery prefork
child runs one batch at a time, so there is nothing to share between threads.
"""

import base64
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass

from django.conf import settings

from delivery import throttle
from delivery.heartbeat import HEARTBEAT_TTL, heartbeat

log = logging.getLogger(__name__)


class SMTPFailure(Exception):
    """The session could not go on; ``fatal`` failures (TLS, AUTH) will not fix themselves on retry."""

    fatal = False

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class ConnectFailed(SMTPFailure):
    pass


class TLSFailed(SMTPFailure):
    fatal = True


class CertificateRejected(TLSFailed):
    pass


class AuthFailed(SMTPFailure):
    fatal = True


class ConnectionLost(SMTPFailure):
    pass


# How long an MX host whose opportunistic STARTTLS failed is sent to in
# plaintext without trying TLS again (HERALD_TLS_FALLBACK_SECONDS).
TLS_FALLBACK_KEY = "tls-failed:"


def tls_failed_recently(host: str) -> bool:
    try:
        return bool(throttle.client().exists(throttle.PREFIX + TLS_FALLBACK_KEY + host.lower()))
    except Exception:
        return False  # without Redis each session simply tries TLS again


def remember_tls_failure(host: str, why: str):
    seconds = getattr(settings, "HERALD_TLS_FALLBACK_SECONDS", 3600)
    try:
        throttle.client().set(throttle.PREFIX + TLS_FALLBACK_KEY + host.lower(), why[:500], ex=max(int(seconds), 1))
    except Exception:
        pass


@dataclass
class Timeouts:
    """RFC 5321 4.5.3.2 minimums by default; HERALD_SMTP_TIMEOUT (seconds) caps them all."""

    connect: float = 60
    greeting: float = 300
    command: float = 300
    data_start: float = 120
    final_dot: float = 600

    @classmethod
    def from_settings(cls):
        cap = getattr(settings, "HERALD_SMTP_TIMEOUT", 0)
        t = cls()
        if cap:
            for name in ("connect", "greeting", "command", "data_start", "final_dot"):
                setattr(t, name, min(getattr(t, name), cap))
        return t


@dataclass
class Endpoint:
    """Where and how to connect. ``security``: none | starttls | tls | opportunistic (direct MX).

    ``opportunistic`` is Postfix's ``smtp_tls_security_level = may``: STARTTLS
    when offered, certificate not checked, and plaintext when TLS fails.
    ``tls_name`` is the name the certificate must match (an MX host name when
    ``host`` is its address); ``required_by`` names what demands verified TLS
    (an MTA-STS policy), so a failure says why it is not sent in plaintext;
    ``report_to`` names what only wants a rejected certificate reported (an
    MTA-STS policy in testing mode), and the mail still goes, unverified.
    """

    host: str
    port: int
    security: str = "none"
    verify: bool = True
    username: str = ""
    password: str = ""
    helo: str = ""
    label: str = ""  # what errors call it
    tls_name: str = ""
    required_by: str = ""
    report_to: str = ""  # opportunistic with ``verify``: a rejected certificate is reported, then not checked
    cafile: str | None = None  # see tls_context
    source: str | None = None  # the local address to connect from (direct delivery from a pool of addresses)

    @property
    def where(self):
        return self.label or f"{self.host}:{self.port}"


def tls_context(verify: bool, cafile: str | None = None) -> ssl.SSLContext:
    """``cafile``: a CA bundle, "" for the system's, None for HERALD_SMTP_CA_FILE (the relay's)."""
    if cafile is None:
        cafile = getattr(settings, "HERALD_SMTP_CA_FILE", "")
    ctx = ssl.create_default_context(cafile=cafile or None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_LONE_LF = re.compile(rb"(?<!\r)\n")


def wire_data(data: bytes) -> bytes:
    """CRLF line ends, leading dots doubled (RFC 5321 4.5.2), and the final dot."""
    if data.count(b"\n") != data.count(b"\r\n"):
        data = _LONE_LF.sub(b"\r\n", data.replace(b"\r\r\n", b"\r\n"))
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _addr(address: str) -> bytes:
    return address.replace("\r", "").replace("\n", "").encode("utf-8")


def needs(msg) -> tuple[bool, bool]:
    """(SMTPUTF8, 8BITMIME): what a message needs from the server beyond plain 7-bit SMTP.

    A non-ASCII envelope address or header needs SMTPUTF8 (RFC 6531); 8-bit
    bytes in the body need BODY=8BITMIME (RFC 6152). Almost every message is
    ASCII throughout, and for those this is one scan of the bytes.
    """
    data = msg.data
    if data.isascii() and msg.mail_from.isascii() and msg.rcpt.isascii():
        return False, False
    end = data.find(b"\r\n\r\n")
    head, body = (data, b"") if end < 0 else (data[:end], data[end:])
    utf8 = not (head.isascii() and msg.mail_from.isascii() and msg.rcpt.isascii())
    return utf8, not body.isascii()


class Connection:
    def __init__(self, endpoint: Endpoint, timeouts: Timeouts | None = None):
        self.endpoint = endpoint
        self.timeouts = timeouts or Timeouts.from_settings()
        self.sock = None
        self.file = None
        self.extensions = {}
        self.sent = 0  # messages on this connection
        self.accepted = 0  # of which the server took (2xx after the final dot)
        # Per reply of the last send_many: "session" (RSET, MAIL: about the
        # sender's session), "recipient" (RCPT, DATA, the final dot) or "" (not
        # the server's: refused before sending, or the connection broke).
        self.stages = []
        self.opened_at = self.last_used = 0.0
        self.tls = False
        self.broken = False
        self.needs_rset = False  # a failed transaction is still open on the session
        self.steps = []  # what happened while opening, for the relay check
        self.plaintext = False  # opportunistic TLS failed: this session goes without it
        self.unverified = False  # a report-only check rejected the certificate: not checked again

    # --- low level -------------------------------------------------------
    def _timeout(self, seconds):
        # A system call each time; most calls repeat the previous value.
        if seconds != self._current_timeout:
            self.sock.settimeout(seconds)
            self._current_timeout = seconds

    def _read_reply(self, timeout):
        self._timeout(timeout)
        lines = []
        try:
            while True:
                line = self.file.readline(2048)
                if not line:
                    raise ConnectionLost(f"{self.endpoint.where} closed the connection")
                if len(line) < 4 or not line[:3].isdigit():
                    raise ConnectionLost(f"{self.endpoint.where} sent a malformed reply: {line[:80]!r}")
                lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
                if line[3:4] != b"-":
                    return int(line[:3]), "\n".join(lines)
        except TimeoutError:
            self.broken = True
            raise ConnectionLost(f"{self.endpoint.where} did not answer within {timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            self.broken = True
            raise ConnectionLost(f"connection to {self.endpoint.where} lost: {exc}") from None

    def _write(self, data: bytes, timeout=None):
        self._timeout(timeout or self.timeouts.command)
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            self.broken = True
            raise ConnectionLost(f"connection to {self.endpoint.where} lost: {exc}") from None

    def command(self, line: bytes, timeout=None):
        self._write(line + b"\r\n", timeout)
        return self._read_reply(timeout or self.timeouts.command)

    # --- session ---------------------------------------------------------
    def open(self):
        ep = self.endpoint
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=self.timeouts.connect,
                                            source_address=(ep.source, 0) if ep.source else None)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {ep.where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ep.security == "tls":
            sock = self._wrap(sock, verify=ep.verify)
        self._attach(sock)
        code, text = self._read_reply(self.timeouts.greeting)
        how = f" with implicit TLS ({self._tls_info()})" if self.tls else ""
        self.steps.append(f"connected to {ep.where}{how}: {code} {text}")
        if code != 220:
            self.close()
            raise ConnectFailed(f"{code} {text} from {ep.where}", code)
        self._ehlo()
        if ep.security == "starttls":
            self._starttls()
        elif ep.security == "opportunistic" and "starttls" in self.extensions and not self.plaintext:
            if tls_failed_recently(ep.tls_name or ep.host):
                self.steps.append("STARTTLS skipped: it failed with this host recently")
            else:
                try:
                    self._starttls()
                except CertificateRejected as exc:
                    if not (ep.report_to and ep.verify and not self.unverified):
                        return self._reopen_plaintext(exc)
                    log.warning("%s: %s; sending with TLS, certificate not verified", ep.report_to, exc)
                    return self._reopen(unverified=True)
                except (TLSFailed, ConnectionLost) as exc:
                    return self._reopen_plaintext(exc)
        if ep.username:
            self._auth()
        self.opened_at = self.last_used = time.monotonic()
        return self

    def _reopen_plaintext(self, exc):
        """Opportunistic TLS failed (a 454, a handshake Python refuses): like
        Postfix at ``may``, reconnect and send without it, and skip the attempt
        with this host for a while."""
        self.close(quit=False)
        remember_tls_failure(self.endpoint.tls_name or self.endpoint.host, str(exc))
        self.steps.append(f"STARTTLS failed, sending in plaintext: {exc}")
        self.plaintext = True
        return self._reopen()

    def _reopen(self, unverified=False):
        self.close(quit=False)
        self.unverified = self.unverified or unverified
        self.tls, self.broken, self.extensions = False, False, {}
        return self.open()

    def _attach(self, sock):
        self.sock = sock
        self._current_timeout = sock.gettimeout()
        self.file = sock.makefile("rb")

    def _wrap(self, sock, verify):
        try:
            context = tls_context(verify, self.endpoint.cafile)
            wrapped = context.wrap_socket(sock, server_hostname=self.endpoint.tls_name or self.endpoint.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            why = f"TLS certificate of {self.endpoint.where} not accepted: {exc.verify_message}"
            if self.endpoint.cafile is None:  # a relay: say which CAs were trusted, and where a private one goes
                ca = getattr(settings, "HERALD_SMTP_CA_FILE", "")
                why += f" (checked against {ca}, HERALD_SMTP_CA_FILE)" if ca else \
                    " (checked against the system's CAs; name a private CA's certificate in HERALD_SMTP_CA_FILE)"
            raise CertificateRejected(self._why(why)) from None
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise TLSFailed(self._why(f"TLS with {self.endpoint.where} failed: {exc}")) from None
        self.tls = True
        return wrapped

    def _why(self, text):
        """A TLS failure's reason; under an MTA-STS policy it says why nothing goes in plaintext (RFC 8461 5)."""
        if self.endpoint.required_by:
            return f"4.7.5 {text}; not sent in plaintext, as the {self.endpoint.required_by} requires verified TLS"
        return text

    def _ehlo(self):
        # gethostname, not getfqdn: no reverse DNS look-up on every connection.
        helo = self.endpoint.helo or socket.gethostname() or "localhost"
        helo = "".join(helo.split()) or "localhost"  # never a CR, LF or space into the command
        code, text = self.command(b"EHLO " + helo.encode("idna"))
        if code != 250:
            code, text = self.command(b"HELO " + helo.encode("idna"))
            if code != 250:
                raise ConnectFailed(f"{code} {text} from {self.endpoint.where} (HELO)", code)
            self.extensions = {}
            return
        ext = {}
        for line in text.split("\n")[1:]:
            word, _, params = line.partition(" ")
            ext[word.lower()] = params
        self.extensions = ext

    def _starttls(self):
        if "starttls" not in self.extensions:
            self.close()
            # Never fall back to plaintext when STARTTLS was chosen.
            what = "which this relay requires" if not self.endpoint.required_by else "which it must"
            raise TLSFailed(self._why(f"{self.endpoint.where} does not offer STARTTLS, {what}"))
        code, text = self.command(b"STARTTLS")
        if code != 220:
            self.close()
            raise TLSFailed(self._why(f"{code} {text} from {self.endpoint.where} (STARTTLS)"), code)
        ep = self.endpoint
        verify = ep.verify if ep.security == "starttls" else bool(ep.report_to and ep.verify and not self.unverified)
        self._attach(self._wrap(self.sock, verify))
        self.steps.append(f"STARTTLS negotiated ({self._tls_info()})")
        self._ehlo()

    def _tls_info(self):
        verified = "certificate verified" if self.sock.context.verify_mode == ssl.CERT_REQUIRED else "certificate not verified"
        return f"{self.sock.version()}, {verified}"

    def _auth(self):
        ep = self.endpoint
        mechanisms = self.extensions.get("auth", "").upper().split()
        user, password = ep.username.encode(), ep.password.encode()
        if "PLAIN" in mechanisms or not mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            code, text = self.command(b"AUTH PLAIN " + token)
        elif "LOGIN" in mechanisms:
            code, text = self.command(b"AUTH LOGIN")
            if code == 334:
                code, text = self.command(base64.b64encode(user))
            if code == 334:
                code, text = self.command(base64.b64encode(password))
        else:
            self.close()
            raise AuthFailed(f"{ep.where} offers no supported AUTH mechanism ({' '.join(mechanisms)})")
        if code != 235:
            self.close()
            raise AuthFailed(f"{code} {text} from {ep.where}", code)
        self.steps.append(f"authenticated as {ep.username}: {code} {text}")

    @property
    def pipelining(self):
        return "pipelining" in self.extensions

    def close(self, quit=True):
        if self.sock is None:
            return
        if quit and not self.broken:
            try:
                self._timeout(2)
                self.sock.sendall(b"QUIT\r\n")
                self._read_reply(2)
            except (SMTPFailure, OSError):
                pass
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass
        self.sock = self.file = None
        self.broken = True

    # --- transactions ----------------------------------------------------
    def _mail_params(self, msg):
        """The MAIL FROM parameters for ``msg`` on this session, or None when the server cannot take it."""
        params = f" SIZE={len(msg.data)}".encode() if "size" in self.extensions else b""
        utf8, eight_bit = needs(msg)
        if eight_bit:
            if "8bitmime" not in self.extensions:
                return None
            params += b" BODY=8BITMIME"
        if utf8:
            if "smtputf8" not in self.extensions:
                return None
            params += b" SMTPUTF8"
        return params

    def _refusal(self, msg):
        """The permanent reply for a message the server cannot take; never downgraded (RFC 6531 3.2)."""
        utf8, _ = needs(msg)
        if utf8:
            return (554, f"5.6.7 {self.endpoint.where} does not offer SMTPUTF8, which this message needs "
                         "(non-ASCII address or header); not sent, as RFC 6531 forbids downgrading it")
        return (554, f"5.6.3 {self.endpoint.where} does not offer 8BITMIME, which this message needs "
                     "(8-bit body); not sent")

    def _envelope(self, msg, rset: bool, params: bytes) -> bytes:
        out = b"RSET\r\n" if rset else b""
        return (out + b"MAIL FROM:<" + _addr(msg.mail_from) + b">" + params
                + b"\r\nRCPT TO:<" + _addr(msg.rcpt) + b">\r\nDATA\r\n")

    def send_many(self, items, message=lambda item: item, stop=None):
        """Send each item's message (one recipient each) from an iterable; returns (sent, leftovers).

        ``sent`` is [(item, (code, text))] in order; ``message(item)`` gives the
        BuiltMessage. Items are pulled one ahead, so the caller's building of the
        next message overlaps the server's work on this one. When the connection
        breaks, the last reply is ``(None, why)`` for the message in flight and
        ``leftovers`` holds items already pulled but not sent. A break after the
        final dot is an unknown outcome (RFC 5321 6.1): the message may have been
        delivered, and a retry may duplicate it. ``stop(item)``, asked before
        an item's envelope goes out, may hold it back: it and everything after
        it become leftovers (a pause between two messages).
        """
        results = []
        self.stages = stages = []

        def add(item, reply, stage):
            results.append((item, reply))
            stages.append(stage)

        it = iter(items)
        end = object()
        cur = next(it, end)
        ahead = []  # pulled, not yet sent
        t = self.timeouts
        pipelined = self.pipelining
        # A transaction that failed at the end of the previous call left the
        # session mid-envelope: the next MAIL would be answered 503 "nested".
        rset = self.needs_rset
        written = False  # cur's envelope already went out with the previous body
        reused, answered = self.sent > 0, False
        try:
            while cur is not end:
                if stop is not None and not written and stop(cur):
                    # Nothing of this message went out: the session is between transactions.
                    self.needs_rset = rset
                    self.last_used = time.monotonic()
                    return results, [cur, *ahead]
                msg = message(cur)
                # A written envelope was checked before it went out.
                params = b"" if written else self._mail_params(msg)
                if params is None:
                    # Refused here, before any command: the session is as it was.
                    add(cur, self._refusal(msg), "")
                    cur = ahead.pop(0) if ahead else next(it, end)
                    continue
                if pipelined:
                    if not written:
                        self._write(self._envelope(msg, rset, params))
                    replies = []
                    for _ in range(4 if rset else 3):
                        replies.append(self._read_reply(t.command))
                        answered = True
                        if replies[-1][0] == 421:
                            # The server is closing the session (RFC 5321 3.8).
                            self.broken = True
                            add(cur, replies[-1], "session" if len(replies) <= (2 if rset else 1) else "recipient")
                            return results, ahead + list(it)
                    if rset:
                        replies.pop(0)
                else:
                    replies = self._sequential(msg, rset, params)
                    closing = next((n for n, r in enumerate(replies) if r[0] == 421), None)
                    if closing is not None:
                        self.broken = True
                        add(cur, replies[closing], "session" if closing == 0 else "recipient")
                        return results, ahead + list(it)
                answered = True
                written = False
                (mcode, mtext), (rcode, rtext), (dcode, dtext) = replies
                if dcode != 354:
                    if mcode >= 300:
                        add(cur, (mcode, mtext), "session")
                    elif rcode >= 300:
                        add(cur, (rcode, rtext), "recipient")
                    else:
                        add(cur, (dcode, dtext), "recipient")
                    rset = True
                    cur = ahead.pop(0) if ahead else next(it, end)
                    continue
                rset = False
                body = wire_data(msg.data)
                if not ahead:
                    nxt = next(it, end)
                    if nxt is not end:
                        ahead.append(nxt)
                next_params = self._mail_params(message(ahead[0])) if pipelined and ahead else None
                if next_params is not None:
                    # Message content may open the next group (RFC 2920 3.1).
                    self._write(body + self._envelope(message(ahead[0]), False, next_params), t.final_dot)
                    written = True
                    # Build the one after while the server works on this one.
                    after = next(it, end)
                    if after is not end:
                        ahead.append(after)
                else:
                    self._write(body, t.final_dot)
                reply = self._read_reply(t.final_dot)
                add(cur, reply, "recipient")
                self.sent += 1
                self.accepted += 200 <= reply[0] < 300
                if reply[0] == 421:
                    self.broken = True  # the server is closing the session
                    return results, ahead + list(it)
                cur = ahead.pop(0) if ahead else end
        except ConnectionLost as exc:
            self.broken = True
            if reused and not answered:
                # The server dropped the idle connection before we spoke: nothing
                # was tried, so the caller sends it all on a fresh connection.
                return results, [cur] + ahead + list(it)
            add(cur, (None, str(exc)), "")
            return results, ahead + list(it)
        self.needs_rset = rset
        self.last_used = time.monotonic()
        return results, []

    def _sequential(self, msg, rset, params):
        if rset:
            reset = self.command(b"RSET")
            if reset[0] == 421:
                return [reset, (503, "not tried"), (503, "not tried")]
        mail = self.command(b"MAIL FROM:<" + _addr(msg.mail_from) + b">" + params)
        if mail[0] >= 300:
            return [mail, (503, "not tried"), (503, "not tried")]
        rcpt = self.command(b"RCPT TO:<" + _addr(msg.rcpt) + b">")
        if rcpt[0] >= 300:
            return [mail, rcpt, (503, "not tried")]
        return [mail, rcpt, self.command(b"DATA", self.timeouts.data_start)]


# A connection in use holds its slot for this long, renewed by the worker's
# heartbeat timer (every half of it) until the connection goes back to the
# pool: a long batch never loses its slot, and a killed worker's connections
# stop counting against the cap as soon as its claims come back.
BUSY_SLOT_SECONDS = HEARTBEAT_TTL


class Pool:
    """Open connections of this process, kept across batches and tasks.

    Each key (a relay, or an MX host in direct mode) has a connection cap held
    across all workers by a Redis slot set. A connection in use keeps its slot
    while this process lives (see BUSY_SLOT_SECONDS); an idle one until its
    idle timeout, then the slot expires even if this process died.
    """

    def __init__(self):
        self.idle = {}  # key -> [Connection]
        self.opened = 0

    def _holder(self, conn):
        return f"{socket.gethostname()}:{os.getpid()}:{id(conn)}"

    def get(self, key, endpoint, cap, idle_timeout, max_messages):
        """An open connection for ``key``, or None when every slot is taken."""
        self.close_idle()
        stack = self.idle.setdefault(key, [])
        while stack:
            conn = stack.pop()
            if conn.broken or conn.sent >= max_messages or not self._in_use(conn):
                self._close(key, conn)  # spent, or its idle slot expired and another worker took it
                continue
            conn.idle_timeout = idle_timeout
            return conn
        conn = Connection(endpoint)
        conn.key, conn.cap, conn.idle_timeout, conn.holder = key, cap, idle_timeout, self._holder(conn)
        if not self._in_use(conn):
            return None
        try:
            conn.open()
        except SMTPFailure:
            self._not_in_use(conn)
            throttle.release_slot(key, conn.holder)
            raise
        self.opened += 1
        return conn

    def _in_use(self, conn) -> bool:
        """Hold the slot of a connection handed out; the heartbeat timer renews it until put back."""
        if not throttle.acquire_slot(conn.key, conn.cap, conn.holder, BUSY_SLOT_SECONDS):
            return False
        conn.hold = heartbeat.hold([conn], self._renew, BUSY_SLOT_SECONDS)
        return True

    @staticmethod
    def _renew(conns):
        try:
            for conn in conns:
                if conn.sock is not None:
                    throttle.acquire_slot(conn.key, conn.cap, conn.holder, BUSY_SLOT_SECONDS)
        except Exception as exc:  # Redis restarting: tried again next second, never at the leases' cost
            log.debug("connection slot not renewed: %s", exc)

    @staticmethod
    def _not_in_use(conn):
        if getattr(conn, "hold", None) is not None:
            heartbeat.release(conn.hold)
            conn.hold = None

    def put(self, conn, max_messages):
        self._not_in_use(conn)
        if conn.broken or conn.sent >= max_messages:
            self._close(conn.key, conn)
            return
        if not throttle.acquire_slot(conn.key, conn.cap, conn.holder, conn.idle_timeout + 5):
            self._close(conn.key, conn)  # the slot expired meanwhile and someone took it
            return
        self.idle.setdefault(conn.key, []).append(conn)

    def _close(self, key, conn):
        self._not_in_use(conn)
        conn.close()
        try:
            throttle.release_slot(key, conn.holder)
        except Exception:
            pass  # the slot expires on its own

    def close_idle(self):
        now = time.monotonic()
        for key, stack in self.idle.items():
            keep = []
            for conn in stack:
                if now - conn.last_used > conn.idle_timeout:
                    self._close(key, conn)
                else:
                    keep.append(conn)
            stack[:] = keep

    def close_all(self):
        for key, stack in self.idle.items():
            for conn in stack:
                self._close(key, conn)
        self.idle = {}


pool = Pool()
