"""Produce this directory's bounces by running real Postfix instances on loopback.

Run from the project root: ``.venv/bin/python tests/tracking/bounce_corpus/postfix_local/generate.py``
(as root, with Postfix installed). Nothing leaves 127.0.0.1:

- ``sender`` (Postfix) takes each test message from sendmail(1) and relays it
  by transport map to ``receiver`` or to a closed port;
- ``receiver`` (Postfix) refuses in its own words: an unknown local user, a
  relay it does not allow, a message over its size limit; and delivers to a
  virtual mailbox with a tiny size limit, bouncing in its own right;
- every bounce and delay notice goes to ``news@sink.test``, which both
  instances route to a small SMTP server in this script that writes each
  message it receives to a file here, unchanged.
"""

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from aiosmtpd.controller import Controller

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
from tests.support.programs import program  # noqa: E402  (the project root is on the path only now)
from tests.support.wait import process_gone, wait_until  # noqa: E402

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
virtual   unix - n n - - virtual -o message_size_limit=2000
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    def __init__(self, name, port, settings):
        self.dir = Path(tempfile.mkdtemp(prefix=f"herald-{name}-"))
        self.dir.chmod(0o755)
        for sub in ("queue", "data", "mail"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix", "postfix")
        shutil.chown(self.dir / "mail", "postfix", "postfix")
        common = f"""\
            compatibility_level = 3.6
            queue_directory = {self.dir}/queue
            data_directory = {self.dir}/data
            mail_owner = postfix
            setgid_group = postdrop
            inet_interfaces = loopback-only
            inet_protocols = ipv4
            smtputf8_enable = no
            maillog_file_prefixes = {self.dir}
            maillog_file = {self.dir}/maillog
            alias_maps =
            alias_database =
            queue_run_delay = 1s
            minimal_backoff_time = 1s
            maximal_backoff_time = 2s
            smtp_tls_security_level = none
            """
        (self.dir / "main.cf").write_text(textwrap.dedent(common) + textwrap.dedent(settings).format(dir=self.dir))
        (self.dir / "master.cf").write_text(MASTER_CF.format(port=port))

    def run(self, *args):
        result = subprocess.run([program("postfix"), "-c", str(self.dir), *args], capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"postfix {args} in {self.dir}: {result.stdout}{result.stderr}")
        return result

    def sendmail(self, sender, rcpt, message):
        subprocess.run([program("sendmail"), "-C", str(self.dir), "-f", sender, "-i", rcpt], input=message, check=True)

    def halt(self):
        """Stop this instance and wait until its master process is gone."""
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
        subprocess.run([program("postfix"), "-c", str(self.dir), "stop"], capture_output=True)
        if pid:
            wait_until(lambda: process_gone(pid), timeout=20, interval=0.1, message="postfix's master to exit")

    def stop(self):
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


class Keep:
    def __init__(self):
        self.received = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope.original_content)
        return "250 2.0.0 kept"


def message(to, subject, body="Hello,\n\nthis is a test message from Herald.\n"):
    return (f"From: Herald News <news@sink.test>\nTo: <{to}>\nSubject: {subject}\n"
            f"Message-ID: <{subject.replace(' ', '-').lower()}.4f1c9e@sink.test>\n"
            f"Date: Thu, 03 Dec 2026 01:00:00 +0000\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}").encode()


def main():
    keep = Keep()
    sink_port, receiver_port, closed_port = free_port(), free_port(), free_port()
    controller = Controller(keep, hostname="127.0.0.1", port=sink_port)
    controller.start()
    sink_route = f"sink.test smtp:[127.0.0.1]:{sink_port}"
    receiver = Instance("receiver", receiver_port, f"""\
        myhostname = mx.receiver.test
        mydomain = receiver.test
        mydestination = receiver.test
        local_recipient_maps = texthash:{{dir}}/users
        mynetworks = 127.0.0.99/32
        smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
        message_size_limit = 4000
        virtual_mailbox_domains = full.test
        virtual_mailbox_maps = texthash:{{dir}}/mailboxes
        virtual_mailbox_base = {{dir}}/mail
        virtual_uid_maps = static:{_uid('postfix')}
        virtual_gid_maps = static:{_gid('postfix')}
        virtual_mailbox_limit = 2000
        virtual_mailbox_lock = fcntl
        transport_maps = texthash:{{dir}}/transport
        """)
    (receiver.dir / "users").write_text("alice@receiver.test x\n")
    (receiver.dir / "mailboxes").write_text("carol@full.test carol\n")
    (receiver.dir / "transport").write_text(sink_route + "\n")
    sender = Instance("sender", free_port(), """\
        myhostname = out.sender.test
        mydomain = sender.test
        myorigin = sink.test
        mydestination =
        transport_maps = texthash:{dir}/transport
        maximal_queue_lifetime = 0
        bounce_queue_lifetime = 0
        """)
    (sender.dir / "transport").write_text(
        f"{sink_route}\nreceiver.test smtp:[127.0.0.1]:{receiver_port}\nelsewhere.test smtp:[127.0.0.1]:{receiver_port}\n"
        f"full.test smtp:[127.0.0.1]:{receiver_port}\ndown.test smtp:[127.0.0.1]:{closed_port}\n")
    receiver.run("start")
    sender.run("start")
    try:
        sends = [
            ("hard-user-unknown", "ghost@receiver.test", "Spring news", None),
            ("policy-relay-denied", "bob@elsewhere.test", "Summer news", None),
            ("policy-message-too-large", "alice@receiver.test", "Autumn news", "x" * 76 + "\n"),
            ("soft-connection-refused", "dave@down.test", "Winter news", None),
            ("soft-mailbox-full", "carol@full.test", "Year in review", "y" * 76 + "\n"),
            ("soft-mailbox-full", "carol@full.test", "Year in review, part two", "z" * 76 + "\n"),
        ]
        for _label, to, subject, line in sends:
            body = (line * (60 if "large" in _label else 8)) if line else None
            sender.sendmail("news@sink.test", to, message(to, subject, body) if body else message(to, subject))
        # The first message to carol fills her mailbox; only the second bounces.
        _wait(lambda: len(keep.received) >= len(sends) - 1, sender, receiver)
        # A delay notice: warn after a second, keep trying for a day.
        sender.halt()
        (sender.dir / "main.cf").write_text((sender.dir / "main.cf").read_text().replace(
            "maximal_queue_lifetime = 0", "maximal_queue_lifetime = 1d\ndelay_warning_time = 1s"))
        sender.run("start")
        before = len(keep.received)
        sender.sendmail("news@sink.test", "erin@down.test", message("erin@down.test", "Holiday hours"))
        _wait(lambda: len(keep.received) > before, sender, receiver)
    finally:
        sender.stop()
        receiver.stop()
        controller.stop()
    for data in keep.received:
        text = data.decode("utf-8", "replace")
        name = _name(text)
        (HERE / f"{name}.eml").write_bytes(data)
        print("wrote", name)


def _name(text):
    if "Delayed Mail" in text:
        return "delay_warning"
    for key, name in (("ghost@", "user_unknown"), ("bob@elsewhere", "relay_denied"), ("alice@", "message_too_large"),
                      ("dave@", "connection_refused"), ("carol@", "mailbox_full")):
        if key in text:
            return name
    return f"other_{int(time.time() * 1000)}"


def _wait(condition, *instances, timeout=90):
    try:
        wait_until(condition, timeout=timeout, interval=0.2, message="bounces")
    except AssertionError as exc:
        for instance in instances:
            print((instance.dir / "maillog").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise SystemExit(str(exc)) from None


def _uid(user):
    import pwd
    return pwd.getpwnam(user).pw_uid


def _gid(user):
    import pwd
    return pwd.getpwnam(user).pw_gid


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
