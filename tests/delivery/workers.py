"""Real ``celery -A herald worker`` processes for tests, on the test database and Redis db."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from django.db import connection

from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


def test_database_url():
    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class Worker:
    """One worker (its own process group, so a SIGKILL takes its children too)."""

    def __init__(self, name, tmp_path, concurrency=1, **env):
        self.name = name
        self.log = tmp_path / f"{name}.log"
        full_env = dict(os.environ, DATABASE_URL=test_database_url(), PYTHONUNBUFFERED="1")
        full_env.update({k: str(v) for k, v in env.items()})
        self.proc = subprocess.Popen(
            [CELERY, "-A", "herald", "worker", "-n", f"{name}@%h", "-c", str(concurrency), "--pool", "prefork",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"],
            cwd=ROOT, env=full_env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout=60):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited: {self.log.read_text()[-3000:]}")
            return b" ready." in self.log.read_bytes()

        wait_until(ready, timeout=timeout, interval=0.1, message=f"worker {self.name} to be ready")
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(30)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
