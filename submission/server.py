"""The SMTP submission server (RFC 6409) on aiosmtpd.

Port 587 style: STARTTLS first, AUTH offered only inside TLS. Port 465 style
(``implicit_tls``): TLS from the first byte (RFC 8314). Every MAIL needs AUTH,
so the server is never an open relay. A message is answered 250 only after it
and one Send row per recipient were committed (RFC 5321 6.1); see store.py.
"""

import asyncio
import itertools
import logging
import os
import re
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.header import decode_header, make_header
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses

import redis.asyncio as aioredis
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session, TLSSetupException
from django.conf import settings
from django.db import connections

from submission import templated
from submission.auth import Limits, Login, Verifier, address_domain
from submission.handoff import Handoff, HandoffProcess
from submission.store import Accepted, store_batch

log = logging.getLogger(__name__)

_LINE_ENDINGS = re.compile(rb"\r?\n")
_AUTH_PARAM = re.compile(r"\s+AUTH=\S*", re.IGNORECASE)
_TAG_MAX = 100
_SIMPLE_PATH = re.compile(r"\s*<([^<>\s\"()\[\]\\,;:@]+@[^<>\s\"()\\,;:@]+|)>(.*)$")
_END = b"\r\n.\r\n"
_CLOSED, _TOO_BIG = object(), object()
_ids = itertools.count()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class Committer:
    """Groups messages that arrive together into one transaction per batch.

    Each worker is a single thread with its own database connection; while one
    commits, the next batch gathers, so commits overlap with reading DATA.
    """

    def __init__(self, workers: int = 1, max_batch: int = 200, handoff_process: bool = False, leftovers: bool = False):
        self.max_batch = max_batch
        self.queue: asyncio.Queue | None = None
        self.executors = [ThreadPoolExecutor(1, thread_name_prefix=f"submission-store-{n}") for n in range(workers)]
        self.tasks = []
        self.inflight = 0
        self.handoff_process = handoff_process
        self.leftovers = leftovers
        self.handoff = None

    def start(self):
        kind = HandoffProcess if self.handoff_process else Handoff
        self.handoff = kind(leftovers=self.leftovers)
        self.queue = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._run(executor)) for executor in self.executors]

    async def submit(self, item: Accepted) -> Accepted:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def _run(self, executor):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self.inflight += 1
            try:
                queued = await loop.run_in_executor(executor, store_batch, [item for item, _ in batch])
            except Exception as exc:
                log.exception("could not store %d messages", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for item, future in batch:
                    # A client that hung up before its 250 may send again: the
                    # duplicate RFC 5321 6.1 accepts, never a loss.
                    if not future.done():
                        future.set_result(item)
                self.handoff.put(queued)
            finally:
                self.inflight -= 1

    async def stop(self, timeout: float = 30):
        """Finish the batches already received (their clients are waiting for a 250), then stop."""
        deadline = time.monotonic() + timeout
        while self.queue is not None and (not self.queue.empty() or self.inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for executor in self.executors:
            await loop.run_in_executor(executor, connections.close_all)
            executor.shutdown()
        if self.handoff is not None:
            await loop.run_in_executor(None, self.handoff.stop)


class _Session(Session):
    # aiosmtpd assigns the deprecated login_data on every successful AUTH and
    # logs a warning each time; Herald reads auth_data only.
    login_data = None


class SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP with logins checked off the event loop and limited per address."""

    def _create_session(self):
        return _Session(self.loop)

    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(self, handler, *, herald, **kwargs):
        self.herald = herald
        super().__init__(handler, **kwargs)

    def _peer_ip(self) -> str:
        peer = self.session.peer if self.session else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "unknown")

    async def smtp_AUTH(self, arg):
        wait = await self.herald.limits.login_blocked_for(self._peer_ip())
        if wait:
            await self.push(f"454 4.7.0 Too many failed logins from {self._peer_ip()}; try again in {wait} seconds")
            return
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg):
        # RFC 4954's AUTH= parameter names the submitter for relays between
        # trusted servers; the session's own login is what counts here.
        await super().smtp_MAIL(_AUTH_PARAM.sub("", arg) if arg else arg)

    async def smtp_STARTTLS(self, arg):
        """STARTTLS through the event loop's own TLS (uvloop's is in C), not aiosmtpd's pure-Python layer."""
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if not self.tls_context or self._tls_protocol:
            await self.push("454 4.7.0 TLS not available")
            return
        await self.push("220 2.0.0 Ready to start TLS")
        plain = self.transport
        try:
            secure = await self.loop.start_tls(plain, self, self.tls_context, server_side=True, ssl_handshake_timeout=60)
        except Exception as error:
            raise TLSSetupException() from error
        self.transport = self._reader._transport = self._writer._transport = secure
        # aiosmtpd tests _tls_protocol only for "TLS is on".
        self._tls_protocol = secure
        # RFC 3207 4.2: forget everything the client said before TLS.
        self._reader._buffer.clear()
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = secure.get_extra_info("peername")
        self.session.ssl = {"cipher": secure.get_extra_info("cipher"), "peercert": secure.get_extra_info("peercert")}
        self._tls_handshake_okay = True

    def _getaddr(self, arg):
        # aiosmtpd parses every address with the email package's full RFC 5322
        # grammar, which costs more than the rest of MAIL and RCPT together; the
        # plain <local@domain> form is read here and anything else goes there.
        match = _SIMPLE_PATH.match(arg or "")
        if match:
            return match.group(1), match.group(2)
        return super()._getaddr(arg)

    async def smtp_DATA(self, arg):
        """DATA read in chunks rather than line by line; the same checks and replies as aiosmtpd's."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content = await self._read_data()
        if content is _CLOSED:
            return
        if content is _TOO_BIG:
            self._set_post_data_state()
            await self.push(f"552 5.3.4 Message exceeds the size limit of {self.data_size_limit} bytes")
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self):
        """The message up to CRLF.CRLF with dots unstuffed (RFC 5321 4.5.2), _TOO_BIG or _CLOSED."""
        limit = self.data_size_limit or 0
        # A CRLF in front lets one search find the terminator even for an empty message.
        buf = bytearray(b"\r\n")
        dropped = 0
        while True:
            start = max(0, len(buf) - len(_END))
            chunk = await self._reader.read(65536)
            if not chunk:
                self.transport.close()
                return _CLOSED
            buf += chunk
            self._reset_timeout()
            end = buf.find(_END, start)
            if end >= 0:
                break
            if limit and dropped + len(buf) > limit + 2 + len(_END):
                # Keep reading to the end, but not the bytes: the reply is 552 anyway.
                dropped += len(buf) - len(_END)
                del buf[: -len(_END)]
        rest = bytes(buf[end + len(_END):])
        if rest:  # a client that pipelined past the end: give the bytes back
            self._reader._buffer[0:0] = rest
        if dropped or (limit and end > limit):
            return _TOO_BIG
        return bytes(buf[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]

    async def auth_PLAIN(self, _, args):
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args):
        return await self._checked(await super().auth_LOGIN(_, args))

    def _authenticate(self, mechanism, auth_data):
        # Called by aiosmtpd's mechanisms once the username and secret are
        # decoded; the check itself runs in _checked, off the event loop.
        return AuthResult(success=True, handled=False, auth_data=auth_data)

    async def _checked(self, result: AuthResult) -> AuthResult:
        if not result.success or not isinstance(result.auth_data, LoginPassword):
            return result
        username = result.auth_data.login.decode("utf-8", "replace")
        secret = result.auth_data.password.decode("utf-8", "replace")
        login = await asyncio.get_running_loop().run_in_executor(
            self.herald.auth_executor, self.herald.verifier.verify, username, secret
        )
        if login is None:
            await self.herald.limits.record_failure(self._peer_ip())
            log.info("failed login for %r from %s", username, self._peer_ip())
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=login)


class SubmissionHandler:
    def __init__(self, herald):
        self.herald = herald

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        login = session.auth_data if session.authenticated else None
        if not isinstance(login, Login):
            return "530 5.7.0 Authentication required: log in with AUTH before MAIL"
        if not address:
            return "550 5.7.1 A null envelope sender is not accepted for submission"
        if not login.may_send_from(address):
            return (
                f"553 5.7.1 Sender <{address}> is not allowed for login {login.username!r};"
                f" it may send from: {', '.join(login.domains)}"
            )
        if not await self.herald.limits.take_message(login):
            return f"450 4.7.1 Login {login.username!r} reached its rate limit; try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or "." not in domain.strip("."):
            return f"501 5.1.3 Recipient <{address}> is not a full address (user@domain)"
        if len(envelope.rcpt_tos) >= self.herald.max_recipients:
            return f"452 4.5.3 Too many recipients; at most {self.herald.max_recipients} per message"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        login = session.auth_data
        raw = envelope.original_content or b""
        if raw.count(b"\n") != raw.count(b"\r\n"):
            raw = _LINE_ENDINGS.sub(b"\r\n", raw)
        item, refusal = read_message(raw, login)
        if refusal:
            return refusal
        item.mail_from = envelope.mail_from
        item.rcpt_tos = list(envelope.rcpt_tos)
        peer = session.peer
        item.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer or "")
        items = [item]
        if item.template:
            try:
                items = await asyncio.get_running_loop().run_in_executor(
                    self.herald.template_executor, templated.render, login, item)
            except templated.Refused as refusal:
                return refusal.reply
            except Exception:
                log.exception("could not render template %r", item.template)
                return "451 4.3.0 The template could not be rendered; nothing was accepted, try again"
        try:
            stored = await asyncio.gather(*(self.herald.committer.submit(one) for one in items))
        except Exception:
            return "451 4.3.0 The message could not be stored; nothing was accepted, try again"
        return f"250 2.0.0 Ok: queued as {' '.join(str(one.outbound_id) for one in stored)}"


def read_message(raw: bytes, login: Login) -> tuple[Accepted | None, str | None]:
    """The headers Herald needs from a submitted message, or the reply refusing it."""
    end = raw.find(b"\r\n\r\n")
    head = (raw if end < 0 else raw[: end + 2]).decode("utf-8", "replace")
    try:
        # compat32 reads raw header strings: a fraction of the cost of the
        # structured headers of policy.default, and all that is needed here.
        headers = HeaderParser(policy=compat32).parsestr(head, headersonly=True)
        from_headers = headers.get_all("From") or []
        if len(from_headers) != 1:
            count = "no" if not from_headers else "more than one"
            return None, f"550 5.6.0 The message has {count} From header; it needs exactly one"
        addresses = [addr for _, addr in getaddresses(from_headers) if addr]
        subject = str(make_header(decode_header(headers.get("Subject", "")))) if headers.get("Subject") else ""
        tag = " ".join(headers.get("X-Herald-Tag", "").split())[:_TAG_MAX]
        template = " ".join(headers.get(templated.TEMPLATE_HEADER, "").split())
        message_id = " ".join(headers.get("Message-ID", "").split())
    except Exception as exc:
        return None, f"550 5.6.0 The message headers cannot be read: {str(exc)[:200]}"
    if not addresses or any("@" not in a for a in addresses):
        return None, "550 5.6.0 The From header holds no valid address"
    for address in addresses:
        if not login.may_send_from(address):
            return None, (
                f"550 5.7.1 From address <{address}> is not allowed for login {login.username!r};"
                f" it may send from: {', '.join(login.domains)}"
            )
    # The domain just checked is the one kept for DKIM: the raw header may hide
    # another domain in a comment or a stray bracket, and is never read again for signing.
    from_domain = address_domain(addresses[0])
    if not message_id:
        message_id = new_message_id(from_domain)
    item = Accepted(
        credential_id=login.id,
        mail_from="",
        rcpt_tos=[],
        raw=raw,
        from_header=" ".join(from_headers[0].split()),
        from_domain=from_domain,
        subject=subject,
        message_id=message_id,
        tag=tag or login.default_tag,
        template=template,
    )
    return item, None


def new_message_id(domain: str) -> str:
    """Unique without reading the system's entropy pool for every message: time, process, counter."""
    return f"<{time.time_ns():x}.{os.getpid():x}.{next(_ids):x}.herald@{domain}>"


class SubmissionServer:
    """One listening socket. ``serve_forever`` for the command; ``start_in_thread`` for tests.

    ``leftovers``: on start, hand the engine what an earlier run stored and did
    not hand off (one process of a server does it, not each).
    """

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, implicit_tls: bool = False,
                 hostname: str | None = None, committers: int = 1, handoff_process: bool = False,
                 leftovers: bool = False):
        self.host, self.port = host, port
        self.context = context
        self.implicit_tls = implicit_tls
        self.hostname = hostname or getattr(settings, "HERALD_SUBMISSION_HOSTNAME", "") or "localhost"
        self.max_size = getattr(settings, "HERALD_SUBMISSION_MAX_SIZE", 25 * 1024 * 1024)
        self.max_recipients = getattr(settings, "HERALD_SUBMISSION_MAX_RECIPIENTS", 500)
        self.committer = Committer(workers=committers, handoff_process=handoff_process, leftovers=leftovers)
        self.auth_executor = ThreadPoolExecutor(1, thread_name_prefix="submission-auth")
        self.template_executor = ThreadPoolExecutor(1, thread_name_prefix="submission-templates")
        self.verifier = Verifier()
        self.limits = None
        self.handler = SubmissionHandler(self)
        self._server = None
        self._loop = None
        self._thread = None

    def _protocol(self):
        return SubmissionSMTP(
            self.handler,
            herald=self,
            hostname=self.hostname,
            ident="Herald submission",
            data_size_limit=self.max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            # Implicit TLS wraps the socket itself, so aiosmtpd sees no STARTTLS
            # and must not wait for one before offering AUTH.
            tls_context=None if self.implicit_tls else self.context,
            require_starttls=not self.implicit_tls,
            auth_require_tls=not self.implicit_tls,
            timeout=300,
            loop=asyncio.get_running_loop(),
        )

    async def start(self, sock=None):
        """Listen on host:port, or on ``sock`` when several processes share one listening socket."""
        self.limits = Limits(aioredis.Redis.from_url(settings.REDIS_URL))
        self.committer.start()
        tls = self.context if self.implicit_tls else None
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._protocol, sock=sock, ssl=tls, backlog=1024)
        else:
            self._server = await loop.create_server(self._protocol, self.host, self.port, ssl=tls, reuse_address=True,
                                                    backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("submission server listening on %s:%s (%s)", self.host, self.port,
                 "implicit TLS" if self.implicit_tls else "STARTTLS")

    async def stop(self):
        if self._server is not None:
            self._server.close()
        await self.committer.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.auth_executor, connections.close_all)
        self.auth_executor.shutdown()
        await loop.run_in_executor(self.template_executor, connections.close_all)
        self.template_executor.shutdown()
        if self.limits is not None:
            await self.limits.redis.aclose()

    async def serve_forever(self, stop_event: asyncio.Event):
        await self.start()
        try:
            await stop_event.wait()
        finally:
            await self.stop()

    def start_in_thread(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="submission-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(timeout=30)
        return self

    def stop_thread(self):
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
