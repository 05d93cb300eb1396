"""Gives each pytest-xdist worker its own Redis database.

Loaded by scripts/test.sh (``python -m pytest -p tests.support.parallel``) before Django reads its settings, so
every process a test starts (Celery workers, the submission server, the demo)
inherits the worker's REDIS_URL. PostgreSQL needs nothing here: pytest-django
already names each worker's test database apart (test_herald_gw0, ...).
"""

import os
import re

worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if worker.startswith("gw"):
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    base = re.search(r"/(\d+)$", url)
    db = (int(base.group(1)) if base else 15) - int(worker[2:])
    if db < 0:
        raise SystemExit(f"REDIS_URL {url}: too few Redis databases below it for worker {worker}")
    os.environ["REDIS_URL"] = re.sub(r"/\d+$", "", url) + f"/{db}"
