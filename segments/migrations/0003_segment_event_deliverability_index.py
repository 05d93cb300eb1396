"""An index on the deliverability events (soft and hard bounces, complaints) by type and contact.

"Bounced ever", "last bounce more than 100 days ago", "complained", "three soft
bounces or more": each asks for the contacts of one type of event, of every
contact at once. The events' own index leads with the contact (a look-up per
contact, a million of them) and the dashboard's with the time: this one gives a
type's contacts in order, and their times, from the index alone. It is small:
bounces and complaints are a few in a hundred events.

Only segments read it, so this app creates it, as 0002 does; PostgreSQL only.
"""

from django.db import migrations

NAME = "segment_event_deliverability_idx"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME} ON tracking_event (type, contact_id, created_at) "
            "INCLUDE (machine) WHERE type IN ('soft_bounce', 'bounce', 'complaint')")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("segments", "0002_segment_event_campaign_index")]

    operations = [migrations.RunPython(create, drop)]
