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
    # Deleted events are taken back: Ann's click, then all of hers.
    from tracking.models import Event

    Event.objects.filter(contact__first_name="Ann", type="click").delete()
    found["engagement"].append(engagement.differences())
    Event.objects.filter(contact__first_name="Ann").delete()
    found["engagement"] += [engagement.differences(), Engagement.objects.filter(contact__first_name="Ann").count()]
    print(json.dumps(found))
