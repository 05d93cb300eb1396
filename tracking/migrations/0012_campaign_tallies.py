"""Campaign figures counted as sends and events are written (Tally), and what each send's events have shown (SendMark).

Triggers on PostgreSQL; tracking/rollups.py names the metrics, counts the same
figures from the sends and events (for rebuild_tallies and for SQLite, which
reads them straight from the ledger), and folds the rows.
"""

import django.db.models.deletion
from django.db import migrations, models

TALLY = "tracking_tallydelta (campaign_id, metric, domain, key, at, n)"

# The changes the triggers add, folded into tracking_tally by tracking.rollups.fold: no key, one index, so that
# an event costs few writes and no writer waits for another.
DELTAS = """
CREATE TABLE tracking_tallydelta (
    campaign_id bigint, metric varchar(32) NOT NULL, domain varchar(255) NOT NULL DEFAULT '',
    key varchar(64) NOT NULL DEFAULT '', at timestamptz, n bigint NOT NULL);
CREATE INDEX tracking_tallydelta_campaign ON tracking_tallydelta (campaign_id);
"""

# The bit of tracking/rollups.py's MARKS an event sets on its send: a person's open, a machine's open, a person's
# click, a complaint, an unsubscribe, a report that the message never reached the mailbox.
BIT = """
CREATE FUNCTION tracking_tally_bit(p_type text, p_machine boolean) RETURNS integer IMMUTABLE LANGUAGE sql AS $$
    SELECT CASE WHEN p_type = 'open' THEN CASE WHEN p_machine THEN 2 ELSE 1 END
                WHEN p_type = 'click' THEN CASE WHEN p_machine THEN 0 ELSE 4 END
                WHEN p_type = 'complaint' THEN 8
                WHEN p_type = 'unsubscribe' THEN 16
                WHEN p_type IN ('bounce', 'soft_bounce', 'rejected') THEN 32
                ELSE 0 END
$$;
"""

# Counts of events (not people): opens, clicks by link, machines' clicks by link, and the timeline's series by minute
# (machines' opens and clicks left out). PL/pgSQL, whose statements are planned once per session.
EVENT_ROWS = f"""
CREATE FUNCTION tracking_tally_event_rows(e tracking_event, p_sign integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.campaign_id IS NULL THEN
        RETURN;
    ELSIF e.type = 'open' AND e.machine THEN
        INSERT INTO {TALLY} VALUES (e.campaign_id, 'opens', '', '', NULL, p_sign);
    ELSIF e.type = 'open' THEN
        INSERT INTO {TALLY} VALUES (e.campaign_id, 'opens', '', '', NULL, p_sign),
            (e.campaign_id, 'series', '', 'opens', date_trunc('minute', e.created_at, 'UTC'), p_sign);
    ELSIF e.type = 'click' AND e.machine THEN
        INSERT INTO {TALLY} VALUES (e.campaign_id, 'machine_clicks', '', coalesce(e.link_index::text, ''), NULL, p_sign);
    ELSIF e.type = 'click' THEN
        INSERT INTO {TALLY} VALUES (e.campaign_id, 'clicks', '', coalesce(e.link_index::text, ''), NULL, p_sign),
            (e.campaign_id, 'series', '', 'clicks', date_trunc('minute', e.created_at, 'UTC'), p_sign);
    ELSIF e.type IN ('bounce', 'soft_bounce', 'complaint', 'unsubscribe') THEN
        INSERT INTO {TALLY} VALUES (e.campaign_id, 'series', '',
            CASE e.type WHEN 'complaint' THEN 'complaints' WHEN 'unsubscribe' THEN 'unsubscribes' ELSE 'bounces' END,
            date_trunc('minute', e.created_at, 'UTC'), p_sign);
    END IF;
END $$;
"""

# (0014 replaces tracking_tally_mark: the lock is taken before the status is read.)
# A send's bit newly set (+1) or cleared (-1): one more or one fewer person in the figure. A report that the message
# never arrived counts only while the send stands as sent (bounced after delivery, by domain): the share lock waits
# for a write-back of the send in flight, so that either its trigger or this one counts it, never neither.
MARK = f"""
CREATE FUNCTION tracking_tally_mark(p_campaign bigint, p_send bigint, p_bit integer, p_sign integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN
    IF p_bit = 32 THEN
        SELECT s.domain INTO d FROM delivery_send s WHERE s.id = p_send AND s.status = 'sent' FOR SHARE;
        IF FOUND THEN
            INSERT INTO {TALLY} VALUES (p_campaign, 'nd_sent', d, '', NULL, p_sign);
        END IF;
    ELSE
        INSERT INTO {TALLY} VALUES (p_campaign, CASE p_bit WHEN 1 THEN 'human_opens' WHEN 2 THEN 'machine_opens'
            WHEN 4 THEN 'clickers' WHEN 8 THEN 'complaints' ELSE 'unsubscribes' END, '', '', NULL, p_sign);
    END IF;
END $$;
"""

# An event changed or went: the send's marks worked out again from its events, under the lock of its mark row,
# which every new event of the send takes first (so its other events are all committed, or this transaction's).
REMARK = f"""
CREATE FUNCTION tracking_tally_remark(p_send bigint, p_campaign bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE was integer; found_bits integer; b integer;
BEGIN
    IF p_send IS NULL OR p_campaign IS NULL THEN RETURN; END IF;
    INSERT INTO tracking_sendmark AS m (send_id, link, bits) VALUES (p_send, -1, 0)
    ON CONFLICT (send_id, link) DO UPDATE SET bits = m.bits WHERE false;
    SELECT m.bits INTO was FROM tracking_sendmark m WHERE m.send_id = p_send AND m.link = -1;
    SELECT coalesce(bit_or(tracking_tally_bit(e.type, e.machine)), 0) INTO found_bits
    FROM tracking_event e WHERE e.send_id = p_send AND e.campaign_id IS NOT NULL;
    FOREACH b IN ARRAY ARRAY[1, 2, 4, 8, 16, 32] LOOP
        IF was & b <> found_bits & b THEN
            PERFORM tracking_tally_mark(p_campaign, p_send, b, CASE WHEN found_bits & b <> 0 THEN 1 ELSE -1 END);
        END IF;
    END LOOP;
    UPDATE tracking_sendmark m SET bits = found_bits WHERE m.send_id = p_send AND m.link = -1 AND m.bits <> found_bits;
    WITH wanted AS (
        SELECT DISTINCT e.link_index AS link FROM tracking_event e
        WHERE e.send_id = p_send AND e.campaign_id IS NOT NULL AND e.type = 'click' AND NOT e.machine
          AND e.link_index IS NOT NULL
    ), gone AS (
        DELETE FROM tracking_sendmark m WHERE m.send_id = p_send AND m.link >= 0
          AND m.link NOT IN (SELECT link FROM wanted) RETURNING m.link
    ), added AS (
        INSERT INTO tracking_sendmark (send_id, link, bits)
        SELECT p_send, w.link, 4 FROM wanted w
        WHERE NOT EXISTS (SELECT 1 FROM tracking_sendmark m WHERE m.send_id = p_send AND m.link = w.link)
        RETURNING link
    )
    INSERT INTO {TALLY}
    SELECT p_campaign, 'link_clickers', '', link::text, NULL::timestamptz, -1 FROM gone
    UNION ALL SELECT p_campaign, 'link_clickers', '', link::text, NULL::timestamptz, 1 FROM added;
END $$;
"""

# An event whose campaign goes (deleted: its figures go with it, and its sends, whose events lose them next) is
# left alone, so that deleting a campaign of a million events costs no recount per event.
# A new event sets its bit on its send's mark row (locking the row, set or not) and counts the person once, when the
# bit was not set yet; a person's click also marks its link. A changed or deleted event works the marks out again.
ON_EVENT = f"""
CREATE FUNCTION tracking_tally_on_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE b integer; fresh integer;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM tracking_tally_event_rows(OLD, -1);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM tracking_tally_event_rows(NEW, 1);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM tracking_tally_remark(OLD.send_id, OLD.campaign_id);
        IF TG_OP = 'UPDATE' AND NEW.send_id IS DISTINCT FROM OLD.send_id THEN
            PERFORM tracking_tally_remark(NEW.send_id, NEW.campaign_id);
        END IF;
        RETURN NULL;
    END IF;
    b := CASE WHEN NEW.type = 'open' THEN CASE WHEN NEW.machine THEN 2 ELSE 1 END
              WHEN NEW.type = 'click' THEN CASE WHEN NEW.machine THEN 0 ELSE 4 END
              WHEN NEW.type = 'complaint' THEN 8 WHEN NEW.type = 'unsubscribe' THEN 16
              WHEN NEW.type IN ('bounce', 'soft_bounce', 'rejected') THEN 32 ELSE 0 END;
    IF b = 0 OR NEW.send_id IS NULL OR NEW.campaign_id IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO tracking_sendmark AS m (send_id, link, bits) VALUES (NEW.send_id, -1, b)
    ON CONFLICT (send_id, link) DO UPDATE SET bits = m.bits | b WHERE m.bits & b = 0
    RETURNING 1 INTO fresh;
    IF fresh IS NOT NULL THEN
        PERFORM tracking_tally_mark(NEW.campaign_id, NEW.send_id, b, 1);
    END IF;
    IF b = 4 AND NEW.link_index IS NOT NULL THEN
        fresh := NULL;
        INSERT INTO tracking_sendmark (send_id, link, bits) VALUES (NEW.send_id, NEW.link_index, 4)
        ON CONFLICT (send_id, link) DO NOTHING RETURNING 1 INTO fresh;
        IF fresh IS NOT NULL THEN
            INSERT INTO {TALLY} VALUES (NEW.campaign_id, 'link_clickers', '', NEW.link_index::text, NULL, 1);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tracking_event_tally_insert AFTER INSERT ON tracking_event
    FOR EACH ROW EXECUTE FUNCTION tracking_tally_on_event();
CREATE TRIGGER tracking_event_tally_change AFTER UPDATE OF type, machine, campaign_id, send_id, link_index, created_at
    ON tracking_event FOR EACH ROW
    WHEN ((OLD.type, OLD.machine, OLD.campaign_id, OLD.send_id, OLD.link_index, OLD.created_at)
          IS DISTINCT FROM (NEW.type, NEW.machine, NEW.campaign_id, NEW.send_id, NEW.link_index, NEW.created_at)
          AND NEW.campaign_id IS NOT NULL)
    EXECUTE FUNCTION tracking_tally_on_event();
CREATE TRIGGER tracking_event_tally_delete AFTER DELETE ON tracking_event
    FOR EACH ROW EXECUTE FUNCTION tracking_tally_on_event();
"""


def send_groups(table, sign):
    """The sends of a statement grouped by what the figures keep apart, each group's counts times ``sign``.

    Grouped first and spread into metrics after: a batch of a thousand sends to a few domains is a few groups.
    The latency is summed as intervals and turned into microseconds once (exact: no months in a difference).
    """
    return f"""
        SELECT campaign_id, domain, status, relay_id, date_trunc('minute', sent_at, 'UTC') AS minute,
               {sign} * count(*) AS n,
               {sign} * count(*) FILTER (WHERE attempts >= 1) AS tried,
               {sign} * count(*) FILTER (WHERE attempts >= 2) AS retried,
               {sign} * coalesce((extract(epoch FROM sum(sent_at - created_at)) * 1000000)::bigint, 0) AS latency,
               {sign} * count(*) FILTER (WHERE status = 'sent' AND EXISTS (
                   SELECT 1 FROM tracking_sendmark m WHERE m.send_id = r.id AND m.link = -1 AND m.bits & 32 <> 0)) AS nd
        FROM {table} r GROUP BY 1, 2, 3, 4, 5"""


def tally_of(groups):
    """Each group's share of the figures: by domain and status, tries, latency, the minute it was sent, the relay
    that carried it, and bounced after delivery (sent, and a report since that it never arrived)."""
    return f"""
        INSERT INTO {TALLY}
        SELECT campaign_id, metric, domain, key, at, sum(n) FROM (
            SELECT g.campaign_id, v.metric, v.domain, v.key, v.at, v.n
            FROM ({groups}) AS g CROSS JOIN LATERAL (VALUES
                ('send', g.domain, g.status, NULL::timestamptz, g.n),
                ('tried', g.domain, g.status, NULL, g.tried),
                ('retried', g.domain, g.status, NULL, g.retried),
                ('latency', g.domain, '', NULL, g.latency),
                ('sent_at', '', '', g.minute, CASE WHEN g.minute IS NOT NULL THEN g.n ELSE 0 END),
                ('relay', g.status, coalesce(g.relay_id::text, ''), NULL,
                 CASE WHEN g.status IN ('sent', 'bounced') THEN g.n ELSE 0 END),
                ('nd_sent', g.domain, '', NULL, g.nd)
            ) AS v(metric, domain, key, at, n)
            WHERE v.n <> 0 AND (g.campaign_id IS NOT NULL OR v.metric = 'sent_at')
        ) AS x
        GROUP BY 1, 2, 3, 4, 5 HAVING sum(n) <> 0"""


# Statement-level: the ledger writes sends a batch at a time, and a batch adds a few rows here, not one per send.
# An update counts its rows out as they were and in as they are; those it left alone (a lease extended) cancel out.
ON_SEND = f"""
CREATE FUNCTION tracking_tally_on_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {tally_of(send_groups("new_rows", 1))};
    ELSIF TG_OP = 'DELETE' THEN
        {tally_of(send_groups("old_rows", -1))};
    ELSE
        {tally_of(send_groups("new_rows", 1) + " UNION ALL " + send_groups("old_rows", -1))};
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tracking_send_tally_insert AFTER INSERT ON delivery_send
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tracking_tally_on_send();
CREATE TRIGGER tracking_send_tally_update AFTER UPDATE ON delivery_send
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tracking_tally_on_send();
CREATE TRIGGER tracking_send_tally_delete AFTER DELETE ON delivery_send
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tracking_tally_on_send();
"""

TRIGGERS = [("tracking_event_tally_insert", "tracking_event"), ("tracking_event_tally_change", "tracking_event"),
            ("tracking_event_tally_delete", "tracking_event"), ("tracking_send_tally_insert", "delivery_send"),
            ("tracking_send_tally_update", "delivery_send"), ("tracking_send_tally_delete", "delivery_send")]
FUNCTIONS = ["tracking_tally_on_send()", "tracking_tally_on_event()", "tracking_tally_remark(bigint, bigint)",
             "tracking_tally_mark(bigint, bigint, integer, integer)", "tracking_tally_event_rows(tracking_event, integer)",
             "tracking_tally_bit(text, boolean)"]


def install(apps, schema_editor):
    """Triggers on PostgreSQL, then the figures of the sends and events already there (SQLite reads them from the
    ledger each time)."""
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in (DELTAS, BIT, EVENT_ROWS, MARK, REMARK, ON_EVENT, ON_SEND):
        schema_editor.execute(statement, params=None)
    from tracking import rollups

    rollups.rebuild(connection=schema_editor.connection)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table in TRIGGERS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    for function in FUNCTIONS:
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {function}")
    schema_editor.execute("DROP TABLE IF EXISTS tracking_tallydelta")



class Migration(migrations.Migration):

    dependencies = [
        ('campaigns', '0018_follow_up_variant'),
        ('tracking', '0011_merge_admin'),
        ('delivery', '0010_ab_send_variant_and_hold'),
    ]

    operations = [
        migrations.CreateModel(
            name='SendMark',
            fields=[
                ('pk', models.CompositePrimaryKey('send_id', 'link', blank=True, editable=False, primary_key=True, serialize=False)),
                ('send_id', models.BigIntegerField()),
                ('link', models.IntegerField()),
                ('bits', models.IntegerField(default=0)),
            ],
        ),
        migrations.CreateModel(
            name='Tally',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('metric', models.CharField(max_length=32)),
                ('domain', models.CharField(db_default='', default='', max_length=255)),
                ('key', models.CharField(db_default='', default='', max_length=64)),
                ('at', models.DateTimeField(null=True)),
                ('n', models.BigIntegerField()),
                ('campaign', models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='campaigns.campaign')),
            ],
            options={
                'indexes': [models.Index(fields=['metric', 'at'], name='tally_metric_at_idx')],
                'constraints': [models.UniqueConstraint(fields=('campaign', 'metric', 'domain', 'key', 'at'), name='tally_key', nulls_distinct=False)],
            },
        ),
        migrations.RunPython(install, remove),
    ]
