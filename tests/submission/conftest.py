import os
import smtplib
import ssl
import sys

import pytest
from django.conf import settings
from django.contrib.auth.hashers import make_password

from submission.models import SmtpCredential
from submission.server import SubmissionServer, tls_context
from tests.support.tls import make_certificate

ALICE_SECRET = "alice-secret-that-is-long-enough"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost, as PEM files."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def client_tls(tls_files):
    """A client context that trusts exactly the test certificate."""
    context = ssl.create_default_context(cafile=tls_files[0])
    return context


def make_credential(username="alice", secret=ALICE_SECRET, domains="example.com", hasher="default", **fields):
    row = SmtpCredential(username=username, allowed_domains=domains, **fields)
    row.secret_hash = make_password(secret, hasher=hasher)
    row.save()
    return row


@pytest.fixture
def alice(db):
    return make_credential()


@pytest.fixture
def server(tls_files, redis_client, transactional_db):
    """The submission server in STARTTLS mode on a free loopback port."""
    srv = SubmissionServer("127.0.0.1", 0, context=tls_context(*tls_files)).start_in_thread()
    yield srv
    srv.stop_thread()


@pytest.fixture
def implicit_server(tls_files, redis_client, transactional_db):
    srv = SubmissionServer("127.0.0.1", 0, context=tls_context(*tls_files), implicit_tls=True).start_in_thread()
    yield srv
    srv.stop_thread()


def connect(server, client_tls, login=True, secret=ALICE_SECRET, username="alice"):
    """An smtplib client after STARTTLS (and AUTH unless login=False)."""
    smtp = smtplib.SMTP("127.0.0.1", server.port, timeout=30)
    smtp.starttls(context=client_tls)
    smtp.ehlo("client.test")
    if login:
        smtp.login(username, secret)
    return smtp


def message(sender="Alice <alice@example.com>", to="bob@dest.test", subject="Hello", body="Hi Bob.\r\n", extra=""):
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def database_url():
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def subprocess_env(**extra):
    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL, "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


PYTHON = sys.executable


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Production hashing is slow on purpose; these tests check logins, not the hasher's cost."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]


class ServerProcess:
    """``manage.py run_submission_server`` as its own process, as operators run it."""

    def __init__(self, tls_files, *args, env=None):
        import subprocess

        from tests.support.smtp import free_port

        self.port = free_port()
        cert, key = tls_files
        self.proc = subprocess.Popen(
            [PYTHON, "manage.py", "run_submission_server", "--host", "127.0.0.1", "--port", str(self.port), *args],
            env=subprocess_env(HERALD_TLS_CERT=cert, HERALD_TLS_KEY=key, **(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise AssertionError(f"submission server did not start: {line}{self.proc.stdout.read()}")

    def kill(self, sig):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
        self.proc.stdout.close()


@pytest.fixture(autouse=True)
def loopback_relay(request):
    """An enabled relay on loopback, so the engine hand-off never looks up MX records in real DNS."""
    if "db" not in request.fixturenames and "transactional_db" not in request.fixturenames:
        request.getfixturevalue("db")
    from delivery import routing
    from delivery.models import Relay
    from tests.support.smtp import free_port

    relay = Relay.objects.create(name="loopback", host="127.0.0.1", port=free_port(), security=Relay.Security.NONE)
    routing.forget_relay()
    yield relay
    routing.forget_relay()
