"""What survives a crash: accepted means stored, half a message means nothing."""

import base64
import os
import signal
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from delivery import routing
from delivery.models import Send
from submission.models import OutboundMessage
from tests.delivery.workers import Worker
from tests.submission.conftest import (
    ALICE_SECRET,
    PYTHON,
    ServerProcess,
    connect,
    make_credential,
    message,
    subprocess_env,
)
from tests.support.smtp import Sink
from tests.support.wait import process_gone, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class RawClient:
    """A hand-driven SMTP client that can stop anywhere, e.g. in the middle of DATA."""

    def __init__(self, port, client_tls):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.expect(220)
        self.command("EHLO raw.test", 250)
        self.command("STARTTLS", 220)
        self.sock = client_tls.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.command("EHLO raw.test", 250)

    def expect(self, code):
        while True:
            line = self.file.readline().decode()
            if line[3:4] != "-":
                assert line.startswith(str(code)), line
                return line

    def command(self, text, code):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.expect(code)


def test_server_killed_mid_data_leaves_no_half_message(tls_files, client_tls, transactional_db):
    make_credential(hasher="pbkdf2_sha256")
    server = ServerProcess(tls_files)
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
            smtp.starttls(context=client_tls)
            smtp.login("alice", ALICE_SECRET)
            smtp.sendmail("alice@example.com", ["first@dest.test"], message())
        raw = RawClient(server.port, client_tls)
        token = base64.b64encode(b"\0alice\0" + ALICE_SECRET.encode()).decode()
        raw.command(f"AUTH PLAIN {token}", 235)
        raw.command("MAIL FROM:<alice@example.com>", 250)
        raw.command("RCPT TO:<second@dest.test>", 250)
        raw.command("DATA", 354)
        raw.sock.sendall(message(to="second@dest.test")[:60])
        server.kill(signal.SIGKILL)
        raw.sock.close()
    finally:
        server.stop()
    assert list(Send.objects.values_list("email", flat=True)) == ["first@dest.test"]
    assert OutboundMessage.objects.count() == 1


def test_server_refuses_to_start_without_a_certificate(tmp_path):
    result = subprocess.run(
        [PYTHON, "manage.py", "run_submission_server", "--port", "0"],
        env=subprocess_env(HERALD_TLS_CERT="", HERALD_TLS_KEY=""), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "HERALD_TLS_CERT and HERALD_TLS_KEY must name a PEM certificate" in result.stderr
    assert "Traceback" not in result.stderr
    missing = str(tmp_path / "nope.pem")
    result = subprocess.run(
        [PYTHON, "manage.py", "run_submission_server", "--port", "0"],
        env=subprocess_env(HERALD_TLS_CERT=missing, HERALD_TLS_KEY=missing), capture_output=True, text=True, timeout=60,
    )
    assert f"HERALD_TLS_CERT='{missing}': no such file" in result.stderr


def test_several_processes_share_the_port_and_stop_cleanly(tls_files, client_tls, transactional_db):
    make_credential(hasher="pbkdf2_sha256")
    server = ServerProcess(tls_files, "--processes", "2")
    try:
        for n in range(4):  # separate connections, spread over the processes by the kernel
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
                smtp.starttls(context=client_tls)
                smtp.login("alice", ALICE_SECRET)
                smtp.sendmail("alice@example.com", [f"r{n}@dest.test"], message())
        server.kill(signal.SIGTERM)
        assert server.proc.returncode == 0, server.proc.stdout.read()
    finally:
        server.stop()
    assert Send.objects.count() == 4


def _handoff_process(server) -> int:
    """The pid of the server's hand-off helper (a spawned child, beside multiprocessing's resource tracker)."""
    def find():
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
        for pid in children:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        return None

    return wait_until(find, timeout=30, message="the hand-off helper to start")


@pytest.mark.slow
def test_a_message_stored_but_not_handed_off_goes_out_within_seconds_of_a_restart(
        tls_files, client_tls, redis_client, loopback_relay, tmp_path):
    make_credential(hasher="pbkdf2_sha256")
    with Sink() as sink:
        loopback_relay.port = sink.port
        loopback_relay.save()
        routing.forget_relay()
        server = ServerProcess(tls_files)
        helper = _handoff_process(server)
        worker = restarted = None
        try:
            # The helper is frozen, so the message is committed and answered 250
            # but never handed to the engine before the server dies.
            os.kill(helper, signal.SIGSTOP)
            with connect(server, client_tls) as smtp:
                smtp.sendmail("alice@example.com", ["bob@dest.test"], message())
            server.kill(signal.SIGKILL)
            os.kill(helper, signal.SIGKILL)
            wait_until(lambda: process_gone(helper), timeout=10, message="the hand-off helper to die")
            assert Send.objects.get().status == Send.Status.QUEUED
            worker = Worker("restart", tmp_path).wait_ready()
            assert sink.recipients() == []  # nobody handed it to the engine

            # No beat, no sweeper: only the restarted server can hand it off.
            restarted = ServerProcess(tls_files)
            sink.wait_for(1, timeout=30)
            wait_until(lambda: Send.objects.get().status == Send.Status.SENT, timeout=30, message="the send recorded")
        finally:
            if worker:
                worker.stop()
            if restarted:
                restarted.stop()
            server.stop()
    assert sink.recipients() == ["bob@dest.test"]
