"""A contact's latest open and click, kept by a trigger on the events, filled from the events there are."""

import django.db.models.deletion
from django.db import migrations, models

# Rebuilds the rows of the contacts named (the event's contact before and after a change) from their events.
RECOMPUTE = """
    DELETE FROM tracking_engagement WHERE contact_id IN ({ids});
    INSERT INTO tracking_engagement (contact_id, last_open_at, last_click_at, last_open_any_at, last_click_any_at)
    SELECT contact_id, max(CASE WHEN NOT machine THEN created_at END),
           max(CASE WHEN NOT machine AND type = 'click' THEN created_at END),
           max(created_at), max(CASE WHEN type = 'click' THEN created_at END)
    FROM tracking_event WHERE contact_id IN ({ids}) AND type IN ('open', 'click')
    GROUP BY contact_id;
"""

COLUMNS = ("last_open_at", "last_click_at", "last_open_any_at", "last_click_any_at")


def upsert(later):
    """An arriving open or click moves the contact's times forward: the fast path of the two."""
    moved = ", ".join(f"{c} = {later(f'tracking_engagement.{c}', f'excluded.{c}')}" for c in COLUMNS)
    return f"""
        INSERT INTO tracking_engagement ({", ".join(("contact_id", *COLUMNS))})
        VALUES (NEW.contact_id, CASE WHEN NOT NEW.machine THEN NEW.created_at END,
                CASE WHEN NOT NEW.machine AND NEW.type = 'click' THEN NEW.created_at END,
                NEW.created_at, CASE WHEN NEW.type = 'click' THEN NEW.created_at END)
        ON CONFLICT (contact_id) DO UPDATE SET {moved};
    """


POSTGRESQL = f"""
CREATE FUNCTION tracking_engagement_on_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.contact_id IS NOT NULL AND NEW.type IN ('open', 'click') THEN
            {upsert(lambda a, b: f"GREATEST({a}, {b})")}
        END IF;
    ELSE
        {RECOMPUTE.format(ids="NEW.contact_id, OLD.contact_id")}
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tracking_event_engagement_insert AFTER INSERT ON tracking_event
    FOR EACH ROW EXECUTE FUNCTION tracking_engagement_on_event();
CREATE TRIGGER tracking_event_engagement_update AFTER UPDATE OF machine, created_at, type, contact_id ON tracking_event
    FOR EACH ROW EXECUTE FUNCTION tracking_engagement_on_event();
"""

SQLITE = [
    # SQLite's max() of a NULL is NULL: the later of two times, either of which may be missing.
    "CREATE TRIGGER tracking_event_engagement_insert AFTER INSERT ON tracking_event "
    "WHEN NEW.contact_id IS NOT NULL AND NEW.type IN ('open', 'click') BEGIN "
    + upsert(lambda a, b: f"max(coalesce({a}, {b}), coalesce({b}, {a}))") + " END",
    "CREATE TRIGGER tracking_event_engagement_update AFTER UPDATE OF machine, created_at, type, contact_id "
    "ON tracking_event BEGIN " + RECOMPUTE.format(ids="NEW.contact_id, OLD.contact_id") + " END",
]

BACKFILL = RECOMPUTE.split(";")[1].replace("WHERE contact_id IN ({ids}) AND", "WHERE contact_id IS NOT NULL AND")


def install(apps, schema_editor):
    statements = [POSTGRESQL] if schema_editor.connection.vendor == "postgresql" else SQLITE
    for statement in [*statements, BACKFILL]:
        schema_editor.execute(statement, params=None)


def remove(apps, schema_editor):
    schema_editor.execute("DROP TRIGGER IF EXISTS tracking_event_engagement_insert" +
                          (" ON tracking_event" if schema_editor.connection.vendor == "postgresql" else ""))
    schema_editor.execute("DROP TRIGGER IF EXISTS tracking_event_engagement_update" +
                          (" ON tracking_event" if schema_editor.connection.vendor == "postgresql" else ""))
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS tracking_engagement_on_event()")


class Migration(migrations.Migration):

    dependencies = [
        ('tracking', '0008_event_contact_activity_index'),
    ]

    operations = [
        migrations.CreateModel(
            name='Engagement',
            fields=[
                ('contact', models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='engagement', serialize=False, to='campaigns.contact')),
                ('last_open_at', models.DateTimeField(blank=True, help_text="A person's latest open or click.", null=True)),
                ('last_click_at', models.DateTimeField(blank=True, help_text="A person's latest click.", null=True)),
                ('last_open_any_at', models.DateTimeField(blank=True, help_text="Machines' opens and clicks too.", null=True)),
                ('last_click_any_at', models.DateTimeField(blank=True, help_text="Machines' clicks too.", null=True)),
            ],
        ),
        migrations.RunPython(install, remove),
    ]
