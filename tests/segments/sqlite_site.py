"""Every segment condition on a Herald whose DATABASE_URL is a SQLite file (``python -m tests.segments.sqlite_site``).

Run as a separate process with the SQLite environment, because the test process
itself is on PostgreSQL; prints {case: matched names} as JSON.
"""

import json
import os

import django

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    django.setup()
    from tests.segments import world

    cast = world.build()
    found = world.evaluate(cast)
    found["snapshot"] = world.snapshot(cast)
    from segments import engagement
    from tracking.models import Engagement

    # The latest opens and clicks match the events; lost, they are found missing and rebuilt.
    matched = engagement.differences()
    Engagement.objects.all().delete()
    found["engagement"] = [matched, engagement.differences(), engagement.rebuild(), engagement.differences()]
    print(json.dumps(found))
