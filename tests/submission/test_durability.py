"""What survives a crash: accepted means stored, half a message means nothing."""

import base64
import signal
import smtplib
import socket
import subprocess

import pytest

from delivery.models import Send
from submission.models import OutboundMessage
from tests.submission.conftest import ALICE_SECRET, PYTHON, ServerProcess, make_credential, message, subprocess_env

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
