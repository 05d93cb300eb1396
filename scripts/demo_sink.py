"""The demo's SMTP sink: it imitates several recipient domains and keeps an inbox of a few addresses.

Used by scripts/demo_campaign.py. The sink listens on loopback only. It
records when each recipient was accepted (for the per-domain peaks of the
summary), keeps the messages of the recipients the engagement simulation
plays (scripts/demo_engagement.py reads the tracking URLs out of them), and
writes the messages of a few inbox addresses to files a newcomer can open:
each as the .eml a mail client reads and as a .txt with the headers and every
MIME part decoded.
"""

import asyncio
import re
import secrets
import smtplib
import threading
import time
from collections import defaultdict
from email import message_from_bytes, policy
from email.utils import make_msgid

SLOW_DELAY = 0.05
# The generated contacts (scripts/demo_campaign.py write_contacts); any other
# recipient is someone's test send, and lands in the inbox.
GENERATED = re.compile(r"^(reader|gone|moved)\d+$")
INBOX_LIMIT = 200


def readable(data: bytes, envelope_from: str, rcpt: str) -> str:
    """A message as text: every header decoded, then each MIME part decoded, as a recipient's client shows it."""
    message = message_from_bytes(data, policy=policy.default)
    lines = [f"Return-Path: <{envelope_from}>", f"Delivered-To: {rcpt}"]
    lines += [f"{name}: {value}" for name, value in message.items()]
    leaves = [part for part in message.walk() if not part.is_multipart()]
    for number, part in enumerate(leaves, 1):
        encoding = part.get("Content-Transfer-Encoding", "7bit")
        lines += ["", f"===== part {number} of {len(leaves)}: {part.get_content_type()}, "
                      f"charset {part.get_content_charset() or 'none'}, sent as {encoding}, decoded below =====", ""]
        if part.get_content_maintype() == "text":
            lines.append(part.get_content().rstrip("\n"))
        else:
            lines.append(f"({len(part.get_payload(decode=True) or b'')} bytes of {part.get_content_type()})")
    return "\n".join(lines) + "\n"


class Inbox:
    """The messages for a few demo addresses (and every test send), kept as files: .eml and a readable .txt."""

    def __init__(self, directory, addresses):
        self.directory = directory
        self.addresses = list(dict.fromkeys(a.lower() for a in addresses))
        self.kept = []  # (recipient, .eml path, .txt path), in arrival order
        self.lock = threading.Lock()

    def wants(self, rcpt):
        return rcpt in self.addresses or not GENERATED.match(rcpt.partition("@")[0])

    def keep(self, rcpt, data, envelope_from):
        with self.lock:
            if len(self.kept) >= INBOX_LIMIT:
                return None
            folder = self.directory / rcpt
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / f"{sum(1 for r, _, _ in self.kept if r == rcpt) + 1:03d}"
            eml, txt = stem.with_suffix(".eml"), stem.with_suffix(".txt")
            # As a mail delivery agent stores it: the envelope sender and recipient on top.
            eml.write_bytes(f"Return-Path: <{envelope_from}>\r\nDelivered-To: {rcpt}\r\n".encode() + data)
            txt.write_text(readable(data, envelope_from, rcpt), encoding="utf-8")
            self.kept.append((rcpt, eml, txt))
            return txt

    def messages(self):
        """(recipient, .eml path, .txt path) of each message kept, in arrival order."""
        with self.lock:
            return list(self.kept)

    def in_order(self):
        """The messages kept, by the order of the addresses given, then the others'; each address's in arrival order."""
        order = {address: n for n, address in enumerate(self.addresses)}
        return sorted(self.messages(), key=lambda m: (order.get(m[0], len(order)), m[0], m[1].name))


class DomainSink:
    """aiosmtpd on loopback: records every accepted recipient with its time, per domain."""

    def __init__(self, port, bounce_port, inbox, played):
        from aiosmtpd.controller import Controller

        self.port = port
        self.bounce_port = bounce_port
        self.inbox = inbox
        self.played = played  # recipient -> whether the engagement simulation plays them
        self.received = {}  # recipient -> the last message accepted for them, when played
        self.accepted = defaultdict(list)  # domain -> [time]
        self.deferred_once = set()
        self.dsn_sent = []
        self.dsn_due = 0  # late bounces decided, sent or not yet
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, _, domain = address.lower().rpartition("@")
        if domain == "reject.example.io" and local.startswith("gone"):
            return f"550 5.1.1 <{address}>: no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        rcpts = [r.lower() for r in envelope.rcpt_tos]
        domains = {r.rpartition("@")[2] for r in rcpts}
        if "slow.example.net" in domains:
            await asyncio.sleep(SLOW_DELAY)
        if "defer.example.org" in domains:
            with self.lock:
                first = [r for r in rcpts if r not in self.deferred_once]
                self.deferred_once.update(first)
            if first:
                return "451 4.3.0 Greylisted, please come back later"
        now = time.time()
        with self.lock:
            for r in rcpts:
                # Test sends go out at once, outside any throttle: only the campaign's count here.
                if GENERATED.match(r.partition("@")[0]):
                    self.accepted[r.rpartition("@")[2]].append(now)
                if self.played(r):
                    self.received[r] = envelope.content
        for r in rcpts:
            if self.inbox.wants(r):
                self.inbox.keep(r, envelope.content, envelope.mail_from or "")
        moved = [r for r in rcpts if r.partition("@")[0].startswith("moved")]
        if moved and envelope.mail_from:
            with self.lock:
                self.dsn_due += len(moved)
            threading.Thread(target=self.send_dsn, args=(envelope.mail_from, moved), daemon=True).start()
        return f"250 2.0.0 queued as {secrets.token_hex(6)}"

    def send_dsn(self, return_path, recipients):
        """A late bounce, as a receiving MTA sends it: an RFC 3464 report to the VERP return path."""
        boundary = "dsn-" + secrets.token_hex(8)
        per_recipient = "".join(
            f"\r\nFinal-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 mailbox moved away\r\n" for r in recipients
        )
        report = (
            f"From: MAILER-DAEMON@reject.example.io\r\nTo: {return_path}\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: {make_msgid(domain='reject.example.io')}\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
            f"The mailbox has moved away; your message could not be delivered.\r\n"
            f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.reject.example.io\r\n{per_recipient}"
            f"--{boundary}--\r\n"
        )
        try:
            with smtplib.SMTP("127.0.0.1", self.bounce_port, timeout=30) as smtp:
                smtp.sendmail("", [return_path], report.encode())
            with self.lock:
                self.dsn_sent.extend(recipients)
        except (OSError, smtplib.SMTPException) as exc:
            print(f"sink: the bounce server refused a DSN: {exc}", flush=True)
            with self.lock:
                self.dsn_due -= len(recipients)

    def messages_for_played(self):
        """recipient -> the message they received, for the recipients the simulation plays."""
        with self.lock:
            return dict(self.received)

    def peak_rates(self):
        """Per domain: the most recipients accepted within any one second."""
        peaks = {}
        with self.lock:
            for domain, times in self.accepted.items():
                times = sorted(times)
                best, start = 0, 0
                for end in range(len(times)):
                    while times[end] - times[start] >= 1.0:
                        start += 1
                    best = max(best, end - start + 1)
                peaks[domain] = best
        return peaks
