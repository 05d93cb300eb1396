"""`manage.py run_bounce_server` as its own process, driven by swaks, a real SMTP client."""

import os
import socket
import subprocess
import sys

import pytest
from django.conf import settings

from delivery import tokens
from tests.support.programs import program
from tests.support.smtp import free_port
from tests.support.wait import wait_until
from tests.tracking import samples
from tracking.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def bounce_server(django_db_setup, django_db_blocker, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bounce-server")
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_bounce_server", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "DATABASE_URL": url, "HERALD_BOUNCE_DOMAIN": settings.HERALD_BOUNCE_DOMAIN},
        stdout=log, stderr=subprocess.STDOUT,
    )

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            return False

    wait_until(listening, timeout=60, message="the bounce server to listen")
    yield port
    process.terminate()
    process.wait(15)


def swaks(port, to, data=None):
    args = [program("swaks"), "--server", "127.0.0.1", "--port", str(port), "--to", to, "--from", "<>",
            "--helo", "mx.example.net", "--timeout", "20"]
    if data is not None:
        args += ["--data", "-"]
    return subprocess.run(args, input=data, capture_output=True, timeout=60)


def test_swaks_relay_attempt_is_refused(bounce_server):
    result = swaks(bounce_server, "someone@outside.example")
    assert result.returncode != 0
    assert b"550 5.7.1 Relaying denied" in result.stdout


def test_swaks_delivers_a_dsn_that_is_recorded(bounce_server, bob_send):
    verp = tokens.verp_address(bob_send.pk)
    result = swaks(bounce_server, verp, data=samples.exchange(verp, bob_send.email, bob_send.message_id))
    assert result.returncode == 0, result.stdout.decode()
    assert b"250 2.0.0 Report received" in result.stdout
    event = wait_until(lambda: Event.objects.filter(send=bob_send).first(), timeout=30, message="the bounce Event")
    assert (event.type, event.status) == ("bounce", "5.1.10")


def test_bad_port_is_refused_with_a_clear_message():
    result = subprocess.run([sys.executable, "manage.py", "run_bounce_server", "--port", "70000"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--port 70000 is not a TCP port" in result.stderr
    assert "Traceback" not in result.stderr
