"""The send engine on the embedded default database: a campaign sent by a real
Celery worker and beat whose DATABASE_URL is a SQLite file, as the demo runs it.

The test process itself stays on PostgreSQL; everything Herald does here runs in
processes of their own on the SQLite file.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings

from tests.delivery.workers import CELERY, Worker
from tests.support.smtp import Rules, Sink

ROOT = Path(__file__).resolve().parents[2]

FORMER = "former@example.org"  # suppressed before the campaign
GONE = "gone@example.org"  # 550 at RCPT
LATER = "later@example.net"  # 451 on the first attempt, delivered on the retry
READERS = [f"reader{i:02d}@{domain}" for i, domain in
           enumerate(["example.com", "example.net", "mail.example.org"] * 8)]
ADDRESSES = [FORMER, GONE, LATER, *READERS]


@pytest.fixture
def sqlite_env(tmp_path, redis_client):
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'herald.sqlite3'}",
        REDIS_URL=settings.REDIS_URL,
        HERALD_VAR_DIR=str(tmp_path / "var"),
        HERALD_RETRY_FIRST_DELAY="1",
        HERALD_RETRY_MAX_DELAY="2",
        HERALD_BATCH_SIZE="10",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    run(env, "manage.py", "migrate", "--noinput", timeout=120)
    return env


def run(env, *argv, timeout=60):
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture
def beat(tmp_path, sqlite_env):
    """Celery beat on the SQLite database: it brings deferred sends back when their time comes."""
    log = tmp_path / "beat.log"
    proc = subprocess.Popen(
        [CELERY, "-A", "herald", "beat", "-l", "info", "--pidfile", str(tmp_path / "beat.pid")],
        cwd=ROOT, env=sqlite_env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(20)


@pytest.fixture
def worker(tmp_path, sqlite_env):
    w = Worker("sqlite", tmp_path, concurrency=2, **sqlite_env)
    yield w.wait_ready()
    w.stop()


@pytest.mark.django_db(transaction=True)
def test_a_campaign_on_sqlite_reaches_everyone_once_with_retries_and_bounces(sqlite_env, worker, beat):
    rules = Rules(rcpt={GONE: "550 5.1.1 <gone@example.org>: no such user"}, defer_first={LATER})
    with Sink(rules=rules) as sink:
        campaign_id = run(sqlite_env, "-m", "tests.delivery.sqlite_site", "setup", str(sink.port), *ADDRESSES).strip()
        out = run(sqlite_env, "manage.py", "send_campaign", campaign_id, "--wait", "--interval", "0.2", timeout=120)
        assert f"sending to {len(ADDRESSES) - 1} recipients" in out
        received = Counter(r.lower() for r in sink.recipients())
    # Read back with DEBUG on, as a developer on the SQLite default runs it: every query is logged then.
    report = json.loads(run({**sqlite_env, "DEBUG": "true"}, "-m", "tests.delivery.sqlite_site", "report", campaign_id))

    # Everyone reachable got the campaign exactly once; the suppressed and the unknown got nothing.
    assert received == Counter([LATER, *READERS])
    sends = {s["email"]: s for s in report["sends"]}
    assert report["status"] == "finished"
    assert report["total"] == len(sends) == len(ADDRESSES) - 1
    assert FORMER not in sends
    statuses = Counter(s["status"] for s in sends.values())
    assert statuses == {"sent": len(READERS) + 1, "bounced": 1}
    # The statistics page and the dashboard's sends per hour count the same deliveries.
    assert report["sent_figure"] == report["sent_last_hours"] == statuses["sent"]
    assert sends[GONE]["smtp_code"] == 550
    assert sends[LATER]["attempts"] == 2 and sends[LATER]["status"] == "sent"
    assert all(s["attempts"] == 1 and s["message_id"] for e, s in sends.items() if e in READERS)
    # The hard bounce suppresses the address for later campaigns and is an event.
    assert report["suppressed"] == {FORMER: "unsubscribe", GONE: "hard_bounce"}
    assert report["events"].count("bounce") == 1
