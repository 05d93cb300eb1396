"""Each contact's latest open and click follows events deleted too (by an administrator, or a purge).

The trigger on the events (tracking's migration 0009) follows inserts and
changes; a deleted open left its contact "opened lately" for segments. On
PostgreSQL one statement-level trigger works out, once per DELETE, the contacts
whose opens or clicks went (a purge of a million events costs one regrouping,
not one per row); SQLite has only row triggers, for its small databases.
"""

from django.db import migrations

# The contacts' rows afresh from the events they have left (none left: no row).
RECOMPUTE = """
    DELETE FROM tracking_engagement WHERE contact_id IN ({ids});
    INSERT INTO tracking_engagement (contact_id, last_open_at, last_click_at, last_open_any_at, last_click_any_at)
    SELECT contact_id, max(CASE WHEN NOT machine THEN created_at END),
           max(CASE WHEN NOT machine AND type = 'click' THEN created_at END),
           max(created_at), max(CASE WHEN type = 'click' THEN created_at END)
    FROM tracking_event WHERE contact_id IN ({ids}) AND type IN ('open', 'click')
    GROUP BY contact_id;
"""

GONE = "SELECT DISTINCT contact_id FROM gone WHERE contact_id IS NOT NULL AND type IN ('open', 'click')"

POSTGRESQL = [
    f"""
    CREATE FUNCTION segments_engagement_on_event_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS ({GONE}) THEN
            {RECOMPUTE.format(ids=GONE)}
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER segments_engagement_delete AFTER DELETE ON tracking_event REFERENCING OLD TABLE AS gone "
    "FOR EACH STATEMENT EXECUTE FUNCTION segments_engagement_on_event_delete()",
]

SQLITE = [
    "CREATE TRIGGER segments_engagement_delete AFTER DELETE ON tracking_event "
    "WHEN OLD.contact_id IS NOT NULL AND OLD.type IN ('open', 'click') BEGIN "
    + RECOMPUTE.format(ids="OLD.contact_id") + " END",
]


def install(apps, schema_editor):
    for statement in POSTGRESQL if schema_editor.connection.vendor == "postgresql" else SQLITE:
        schema_editor.execute(statement, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER IF EXISTS segments_engagement_delete ON tracking_event")
        schema_editor.execute("DROP FUNCTION IF EXISTS segments_engagement_on_event_delete()")
    else:
        schema_editor.execute("DROP TRIGGER IF EXISTS segments_engagement_delete")


class Migration(migrations.Migration):
    dependencies = [
        ("segments", "0003_segment_event_deliverability_index"),
        ("tracking", "0009_engagement"),
    ]

    operations = [migrations.RunPython(install, remove)]
