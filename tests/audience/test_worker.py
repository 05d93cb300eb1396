"""An import sent through the API runs on a real Celery worker process against the test's Redis."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from campaigns.models import Contact, Import
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(tmp_path, media, redis_client):
    """``celery -A herald worker`` on the test database, this test's media directory and Redis db."""
    s = connection.settings_dict
    env = dict(os.environ, PYTHONUNBUFFERED="1", MEDIA_ROOT=str(media),
               DATABASE_URL=f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}")
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("celery")), "-A", "herald", "worker", "-c", "1", "--pool", "solo",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until(lambda: b" ready." in log.read_bytes() or proc.poll() is not None, timeout=60, message="worker start")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="the worker shares PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_api_import_runs_on_a_worker_and_reports_progress(api, readers, worker):
    rows = "".join(f"user{i}@example.com,Name{i}\n" for i in range(2000))
    data = ("email,first name\n" + rows + "broken,X\n").encode()
    response = api.post("/api/v1/imports", {"file": SimpleUploadedFile("big.csv", data), "list_id": readers.pk})
    assert response.status_code == 202
    url = f"/api/v1/imports/{response.json()['id']}"

    done = wait_until(lambda: (b := api.get(url).json())["status"] in ("done", "failed") and b, timeout=60,
                      message=f"the import to finish (worker log: {worker})")
    assert (done["status"], done["rows_processed"], done["created"], done["invalid"]) == ("done", 2001, 2000, 1)
    assert Contact.objects.count() == 2000
    assert readers.subscriptions.count() == 2000
    assert Import.objects.get().error_report.name.endswith(".csv")
