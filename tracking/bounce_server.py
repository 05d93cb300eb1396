"""The inbound SMTP server for bounces, complaints and mailto unsubscribes (aiosmtpd).

It is never a relay: RCPT is accepted only for ``bounces+<token>@`` and
``unsubscribe+<token>@`` at HERALD_BOUNCE_DOMAIN with a token that verifies;
every other recipient gets a 5xx. Messages are size-limited (ESMTP SIZE),
simultaneous connections are capped, and whatever a message contains, the
client gets an answer and the server keeps running: parse errors are logged.

A token that verifies lets a message in; it does not make its contents true.
tracking.feedback applies a report only to the Send its token or Message-ID
names (never to "the newest send" of an address the report mentions).
"""

import asyncio
import logging
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from delivery.tokens import unsign
from tracking.feedback import process_message

log = logging.getLogger(__name__)


def accepts(address: str):
    """(purpose, send id) for an address this server takes mail for, else None."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    if domain.lower() != settings.HERALD_BOUNCE_DOMAIN.lower():
        return None
    prefix, plus, token = local.partition("+")
    purpose = {"bounces": "bounce", "unsubscribe": "unsubscribe"}.get(prefix.lower())
    if not plus or purpose is None:
        return None
    parts = unsign(purpose, token)
    if not parts or len(parts) != 1:
        return None
    return purpose, parts[0]


def _process(data: bytes, rcpt: str):
    close_old_connections()
    try:
        return process_message(data, rcpt, source="bounce-server")
    finally:
        close_old_connections()


class BounceHandler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if accepts(address) is None:
            domain = address.rpartition("@")[2].lower()
            if domain != settings.HERALD_BOUNCE_DOMAIN.lower():
                log.info("refused relay from %s to %r", session.peer, address[:200])
                return "550 5.7.1 Relaying denied: this server only accepts its own bounce addresses"
            log.info("refused unknown bounce address %r from %s", address[:200], session.peer)
            return "550 5.1.1 No such bounce address"
        if envelope.rcpt_tos:
            # One VERP address per message: a second one would mix two sends' reports.
            return "452 4.5.3 One recipient per message, please send the rest separately"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        try:
            events = await sync_to_async(_process, thread_sensitive=False)(data, envelope.rcpt_tos[0])
        except Exception:
            # The report is lost for now; a 4xx makes the sending MTA try again later.
            log.exception("could not record the report to %s from %s", envelope.rcpt_tos[0], session.peer)
            return "451 4.3.0 Could not process the report now, try again later"
        log.info("report to %s from %s: %d new event(s)", envelope.rcpt_tos[0], session.peer, len(events))
        return "250 2.0.0 Report received"


class _Limits:
    def __init__(self, max_connections):
        self.max_connections = max_connections
        self.open = 0
        self.lock = threading.Lock()


class BounceSMTP(SMTP):
    """aiosmtpd's SMTP with a cap on simultaneous connections."""

    def __init__(self, handler, limits, **kwargs):
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._counted = False

    def connection_made(self, transport):
        first = self.transport is None
        super().connection_made(transport)
        if first:
            with self._limits.lock:
                self._over_cap = self._limits.open >= self._limits.max_connections
                if not self._over_cap:
                    self._limits.open += 1
                    self._counted = True

    def connection_lost(self, error):
        if self._counted:
            with self._limits.lock:
                self._limits.open -= 1
            self._counted = False
        super().connection_lost(error)

    async def _handle_client(self):
        if getattr(self, "_over_cap", False):
            log.warning("refused connection from %s: %d connections open", self.session.peer, self._limits.max_connections)
            await self.push("421 4.7.0 Too many connections, try again later")
            self.transport.close()
            return
        await super()._handle_client()


class BounceServer(Controller):
    """Start with ``.start()`` (a thread of its own) and stop with ``.stop()``."""

    def __init__(self, host="127.0.0.1", port=2525, max_size=None, max_connections=None, timeout=60):
        self.limits = _Limits(max_connections or settings.HERALD_BOUNCE_MAX_CONNECTIONS)
        self.max_size = max_size or settings.HERALD_BOUNCE_MAX_MESSAGE_SIZE
        self.timeout = timeout
        super().__init__(BounceHandler(), hostname=host, port=port, ready_timeout=10)

    def factory(self):
        return BounceSMTP(
            self.handler, self.limits, data_size_limit=self.max_size, timeout=self.timeout,
            ident="Herald bounce server", decode_data=False, enable_SMTPUTF8=True,
        )


def serve_forever(host, port, **kwargs):
    server = BounceServer(host, port, **kwargs)
    server.start()
    log.info("bounce server listening on %s:%s for *@%s", host, port, settings.HERALD_BOUNCE_DOMAIN)
    try:
        asyncio.run(_wait_forever())
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


async def _wait_forever():
    await asyncio.Event().wait()
