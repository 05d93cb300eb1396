"""A report that a message never arrived waits for a write-back of its send in flight, whatever the send's status.

``SELECT ... WHERE status = 'sent' FOR SHARE`` tests the status on the row as last committed: a send still
'sending' while the worker writes it back as 'sent' did not match, so no lock was taken and nothing waited. The
report counted nothing (not sent yet), the write-back's trigger did not see the report (not committed yet), and
the message was bounced after delivery in the ledger but not in the figures. Locking the row first waits for the
write-back and then reads its status as committed.
"""

from django.db import migrations

TALLY = "tracking_tallydelta (campaign_id, metric, domain, key, at, n)"

MARK = f"""
CREATE OR REPLACE FUNCTION tracking_tally_mark(p_campaign bigint, p_send bigint, p_bit integer, p_sign integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE d text; st text;
BEGIN
    IF p_bit = 32 THEN
        SELECT s.domain, s.status INTO d, st FROM delivery_send s WHERE s.id = p_send FOR SHARE;
        IF FOUND AND st = 'sent' THEN
            INSERT INTO {TALLY} VALUES (p_campaign, 'nd_sent', d, '', NULL, p_sign);
        END IF;
    ELSE
        INSERT INTO {TALLY} VALUES (p_campaign, CASE p_bit WHEN 1 THEN 'human_opens' WHEN 2 THEN 'machine_opens'
            WHEN 4 THEN 'clickers' WHEN 8 THEN 'complaints' ELSE 'unsubscribes' END, '', '', NULL, p_sign);
    END IF;
END $$;
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(MARK, params=None)


class Migration(migrations.Migration):

    dependencies = [("tracking", "0013_link_clicks_index")]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
