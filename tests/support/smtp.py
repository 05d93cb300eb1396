"""A real SMTP server for tests: aiosmtpd on loopback, recording what it receives.

Behaviour can be set per recipient address: a reply to RCPT, a reply to DATA,
a delay, or a dropped connection. Tests wait on conditions with deadlines.
"""

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    data: bytes
    at: float
    peer: tuple = ()

    @property
    def message(self):
        return message_from_bytes(self.data, policy=policy.SMTP)


@dataclass
class Rules:
    rcpt: dict = field(default_factory=dict)  # address -> "550 5.1.1 no such user"
    data: dict = field(default_factory=dict)  # address -> "451 4.3.0 try later"
    defer_first: set = field(default_factory=set)  # addresses answered 451 on first DATA
    drop_after_data: set = field(default_factory=set)  # close the connection instead of replying
    delay: float = 0.0  # seconds before each DATA reply


class SinkHandler:
    def __init__(self, sink):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.rules.rcpt.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        rules = self.sink.rules
        if rules.delay:
            await asyncio.sleep(rules.delay)
        rcpts = [r.lower() for r in envelope.rcpt_tos]
        for r in rcpts:
            if r in rules.drop_after_data:
                session.transport.close()
                return "421 4.4.2 connection dropped"
        for r in rcpts:
            if r in rules.defer_first and r not in self.sink.deferred_once:
                self.sink.deferred_once.add(r)
                return "451 4.3.0 try again later"
            if r in rules.data:
                return rules.data[r]
        self.sink.record(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, time.time(), session.peer))
        return "250 2.0.0 queued"


class Sink:
    """Start with ``with Sink() as sink:``; ``sink.port`` is where it listens."""

    def __init__(self, hostname="127.0.0.1", rules=None, tls_context=None, require_starttls=False,
                 authenticator=None, auth_require_tls=True):
        self.hostname = hostname
        self.port = free_port()
        self.rules = rules or Rules()
        self.received: list[Received] = []
        self.deferred_once: set = set()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        kwargs = {}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        if authenticator is not None:
            kwargs.update(authenticator=authenticator, auth_require_tls=auth_require_tls)
        self.controller = Controller(
            SinkHandler(self), hostname=hostname, port=self.port, ready_timeout=10, **kwargs
        )

    def record(self, item):
        with self._cond:
            self.received.append(item)
            self._cond.notify_all()

    def recipients(self):
        with self._lock:
            return [r for item in self.received for r in item.rcpt_tos]

    def wait_for(self, count, timeout=30.0):
        """Block until at least ``count`` recipients arrived; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(len(i.rcpt_tos) for i in self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = sum(len(i.rcpt_tos) for i in self.received)
                    raise AssertionError(f"SMTP sink got {got} recipients, expected {count} within {timeout}s")
                self._cond.wait(left)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


__all__ = ["SMTP", "Sink", "Rules", "Received", "free_port"]
