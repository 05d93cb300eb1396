"""The outbox is written by the database, in the transaction that records the event.

Opens and clicks arrive by the tracking fast path's own SQL, subscriptions by
the import's, sends are settled by the ledger's statements: triggers on those
tables catch every writer. Each one costs a look-up in the (tiny) endpoint
table and writes nothing unless an enabled endpoint wants the event's type.
"""

from django.db import migrations

# tracking Event type -> webhook event type
EVENT_TYPES = {"open": "opened", "click": "clicked", "unsubscribe": "unsubscribed", "bounce": "bounced",
               "soft_bounce": "deferred", "delayed": "deferred", "complaint": "complained", "delivered": "delivered"}
CASE = "CASE NEW.type " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in EVENT_TYPES.items()) + " END"

OUTBOX = "webhooks_out_outboxmessage (endpoint_id, msg_id, event_type, payload, status, attempts, next_attempt_at, last_error, created_at)"

POSTGRESQL = f"""
CREATE FUNCTION webhooks_out_on_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE kind text := {CASE};
BEGIN
    IF kind IS NULL THEN RETURN NULL; END IF;
    INSERT INTO {OUTBOX}
    SELECT e.id, 'msg_' || replace(gen_random_uuid()::text, '-', ''), kind,
           jsonb_build_object('type', kind, 'timestamp', NEW.created_at, 'data', jsonb_build_object(
               'email', NEW.email, 'send_id', NEW.send_id, 'campaign_id', NEW.campaign_id,
               'contact_id', NEW.contact_id, 'event_id', NEW.id, 'url', NULLIF(NEW.url, ''), 'machine', NEW.machine,
               'status', NULLIF(NEW.status, ''), 'reason', NULLIF(NEW.reason, ''))),
           'pending', 0, now(), '', now()
    FROM webhooks_out_endpoint e WHERE e.enabled AND e.event_types ? kind;
    RETURN NULL;
END $$;
CREATE TRIGGER webhooks_out_event AFTER INSERT ON tracking_event
    FOR EACH ROW EXECUTE FUNCTION webhooks_out_on_event();

CREATE FUNCTION webhooks_out_on_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {OUTBOX}
    SELECT e.id, 'msg_' || replace(gen_random_uuid()::text, '-', ''), NEW.status,
           jsonb_build_object('type', NEW.status, 'timestamp', now(), 'data', jsonb_build_object(
               'email', NEW.email, 'send_id', NEW.id, 'campaign_id', NEW.campaign_id, 'contact_id', NEW.contact_id,
               'message_id', NULLIF(NEW.message_id, ''), 'smtp_code', NEW.smtp_code,
               'smtp_reply', left(NEW.smtp_reply, 500), 'attempts', NEW.attempts)),
           'pending', 0, now(), '', now()
    FROM webhooks_out_endpoint e WHERE e.enabled AND e.event_types ? NEW.status;
    RETURN NULL;
END $$;
CREATE TRIGGER webhooks_out_send AFTER UPDATE OF status ON delivery_send
    FOR EACH ROW WHEN (NEW.status IN ('sent', 'deferred') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION webhooks_out_on_send();

-- Statement-level: an import inserts a million subscriptions in a few statements.
CREATE FUNCTION webhooks_out_on_subscription() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks_out_endpoint e WHERE e.enabled
                   AND (e.event_types ? 'subscribed' OR e.event_types ? 'confirmed')) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {OUTBOX}
        SELECT e.id, 'msg_' || replace(gen_random_uuid()::text, '-', ''), 'subscribed',
               jsonb_build_object('type', 'subscribed', 'timestamp', now(), 'data', jsonb_build_object(
                   'contact_id', n.contact_id, 'email', c.email, 'list_id', n.mailing_list_id, 'status', n.status,
                   'source', n.source)),
               'pending', 0, now(), '', now()
        FROM new_rows n JOIN campaigns_contact c ON c.id = n.contact_id
        JOIN webhooks_out_endpoint e ON e.enabled AND e.event_types ? 'subscribed'
        WHERE n.status <> 'unsubscribed';
    ELSE
        INSERT INTO {OUTBOX}
        SELECT e.id, 'msg_' || replace(gen_random_uuid()::text, '-', ''), 'confirmed',
               jsonb_build_object('type', 'confirmed', 'timestamp', now(), 'data', jsonb_build_object(
                   'contact_id', n.contact_id, 'email', c.email, 'list_id', n.mailing_list_id)),
               'pending', 0, now(), '', now()
        FROM new_rows n JOIN old_rows o ON o.id = n.id JOIN campaigns_contact c ON c.id = n.contact_id
        JOIN webhooks_out_endpoint e ON e.enabled AND e.event_types ? 'confirmed'
        WHERE n.status = 'confirmed' AND o.status = 'unconfirmed';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER webhooks_out_subscription_insert AFTER INSERT ON campaigns_subscription
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhooks_out_on_subscription();
CREATE TRIGGER webhooks_out_subscription_update AFTER UPDATE ON campaigns_subscription
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION webhooks_out_on_subscription();
"""

_SQLITE_ID = "'msg_' || lower(hex(randomblob(16)))"
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_wants(kind):
    return f"EXISTS (SELECT 1 FROM json_each(e.event_types) WHERE value = {kind})"


SQLITE = [
    f"""CREATE TRIGGER webhooks_out_event AFTER INSERT ON tracking_event WHEN ({CASE}) IS NOT NULL BEGIN
        INSERT INTO {OUTBOX}
        SELECT e.id, {_SQLITE_ID}, {CASE}, json_object('type', {CASE}, 'timestamp', NEW.created_at, 'data', json_object(
            'email', NEW.email, 'send_id', NEW.send_id, 'campaign_id', NEW.campaign_id, 'contact_id', NEW.contact_id,
            'event_id', NEW.id, 'url', NULLIF(NEW.url, ''), 'machine', json(CASE WHEN NEW.machine THEN 'true' ELSE 'false' END),
            'status', NULLIF(NEW.status, ''), 'reason', NULLIF(NEW.reason, ''))),
            'pending', 0, {_SQLITE_NOW}, '', {_SQLITE_NOW}
        FROM webhooks_out_endpoint e WHERE e.enabled AND {_sqlite_wants(CASE)};
    END""",
    f"""CREATE TRIGGER webhooks_out_send AFTER UPDATE OF status ON delivery_send
        WHEN NEW.status IN ('sent', 'deferred') AND OLD.status IS NOT NEW.status BEGIN
        INSERT INTO {OUTBOX}
        SELECT e.id, {_SQLITE_ID}, NEW.status, json_object('type', NEW.status, 'timestamp', {_SQLITE_NOW},
            'data', json_object('email', NEW.email, 'send_id', NEW.id, 'campaign_id', NEW.campaign_id,
            'contact_id', NEW.contact_id, 'message_id', NULLIF(NEW.message_id, ''), 'smtp_code', NEW.smtp_code,
            'smtp_reply', substr(NEW.smtp_reply, 1, 500), 'attempts', NEW.attempts)),
            'pending', 0, {_SQLITE_NOW}, '', {_SQLITE_NOW}
        FROM webhooks_out_endpoint e WHERE e.enabled AND {_sqlite_wants('NEW.status')};
    END""",
    f"""CREATE TRIGGER webhooks_out_subscription_insert AFTER INSERT ON campaigns_subscription
        WHEN NEW.status <> 'unsubscribed' BEGIN
        INSERT INTO {OUTBOX}
        SELECT e.id, {_SQLITE_ID}, 'subscribed', json_object('type', 'subscribed', 'timestamp', {_SQLITE_NOW},
            'data', json_object('contact_id', NEW.contact_id, 'email', c.email, 'list_id', NEW.mailing_list_id,
            'status', NEW.status, 'source', NEW.source)),
            'pending', 0, {_SQLITE_NOW}, '', {_SQLITE_NOW}
        FROM webhooks_out_endpoint e JOIN campaigns_contact c ON c.id = NEW.contact_id
        WHERE e.enabled AND {_sqlite_wants("'subscribed'")};
    END""",
    f"""CREATE TRIGGER webhooks_out_subscription_update AFTER UPDATE OF status ON campaigns_subscription
        WHEN NEW.status = 'confirmed' AND OLD.status = 'unconfirmed' BEGIN
        INSERT INTO {OUTBOX}
        SELECT e.id, {_SQLITE_ID}, 'confirmed', json_object('type', 'confirmed', 'timestamp', {_SQLITE_NOW},
            'data', json_object('contact_id', NEW.contact_id, 'email', c.email, 'list_id', NEW.mailing_list_id)),
            'pending', 0, {_SQLITE_NOW}, '', {_SQLITE_NOW}
        FROM webhooks_out_endpoint e JOIN campaigns_contact c ON c.id = NEW.contact_id
        WHERE e.enabled AND {_sqlite_wants("'confirmed'")};
    END""",
]

TRIGGERS = [("webhooks_out_event", "tracking_event"), ("webhooks_out_send", "delivery_send"),
            ("webhooks_out_subscription_insert", "campaigns_subscription"),
            ("webhooks_out_subscription_update", "campaigns_subscription")]


def install(apps, schema_editor):
    for statement in [POSTGRESQL] if schema_editor.connection.vendor == "postgresql" else SQLITE:
        schema_editor.execute(statement, params=None)


def remove(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    for name, table in TRIGGERS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
    if postgres:
        for function in ("webhooks_out_on_event", "webhooks_out_on_send", "webhooks_out_on_subscription"):
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {function}()")


class Migration(migrations.Migration):

    dependencies = [
        ("webhooks_out", "0001_initial"),
        ("tracking", "0009_engagement"),
        ("delivery", "0009_merge_relay_pool_warmup"),
        ("campaigns", "0012_merge_segments_consent"),
    ]

    operations = [migrations.RunPython(install, remove)]
