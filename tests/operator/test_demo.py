"""The one-command demo, run end to end without serving: its summary adds up and it leaves no process behind.

It runs here with DATABASE_URL on a scratch PostgreSQL database; the engine on
the demo's SQLite default is tested in tests/delivery/test_sqlite_engine.py. On SQLite the demo
sends at its domains' full limits, where the sink's per-second peak can come
out a message or two above limit + burst from arrival jitter, which the exact
bound below would not tolerate.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
CONTACTS = 600

pytestmark = pytest.mark.slow


@pytest.fixture
def scratch_database():
    """A database of the demo's own, new for this run, next to the test database."""
    main = settings.DATABASES["default"]
    if "postgresql" not in main["ENGINE"]:
        pytest.skip("this test runs the demo on a scratch PostgreSQL database")
    name = f"{main['NAME']}_demo"
    url = f"postgres://{main['USER']}:{main['PASSWORD']}@{main['HOST'] or '127.0.0.1'}:{main['PORT'] or 5432}/{name}"
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_demo_sends_to_every_reachable_contact_and_reports_it(tmp_path, scratch_database, redis_client):
    env = {**os.environ, "DATABASE_URL": scratch_database, "REDIS_URL": settings.REDIS_URL, "HERALD_DEMO_SERVE": "0"}
    result = subprocess.run(
        [sys.executable, "scripts/demo_campaign.py", "--contacts", str(CONTACTS), "--var-dir", str(tmp_path),
         "--timeout", "180"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for line in ("Summary", "sent", "deferred first", "bounced later", "messages per second", "highest rate seen"):
        assert line in out, out
    summary = json.loads((tmp_path / "summary.json").read_text())

    # Numbers a reader of the summary can check against the generated contacts:
    # 3 in 20 at the deferring domain, 3 in 20 at the rejecting one (a tenth
    # unknown, a tenth moved away), one in 400 suppressed beforehand.
    assert summary["status"] == "finished"
    assert summary["contacts"] == CONTACTS
    assert summary["suppressed_before"] == CONTACTS // 400
    assert summary["sent"] + summary["bounced"] + summary["failed"] == summary["recipients"]
    # Nothing fails outright: every recipient is sent, bounced at RCPT, or
    # delivered after its deferral.
    assert summary["failed"] == 0, summary["failed_reply"]
    rejecting = CONTACTS * 3 // 20
    assert summary["bounced"] == rejecting // 10
    assert summary["deferred_then_delivered"] == CONTACTS * 3 // 20
    assert summary["late_bounces"] == rejecting // 10
    assert summary["suppressed_now"] == summary["bounced"] + summary["late_bounces"]
    assert summary["per_second"] > 0
    for domain, seen in summary["domains"].items():
        assert 0 < seen["peak"] <= seen["limit"] + seen["burst"], domain

    # Every process it started is gone.
    assert set(summary["pids"]) >= {"worker", "beat", "bounce-server"}
    assert not [name for name, pid in summary["pids"].items() if alive(pid)]
