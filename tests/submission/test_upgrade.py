"""An install from before the submission app left delivery/ upgrades with its credentials and messages."""

import pytest
from django.contrib.auth.hashers import make_password
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from delivery.models import Send
from submission.models import OutboundMessage, SmtpCredential
from tests.submission.conftest import ALICE_SECRET

pytestmark = pytest.mark.django_db(transaction=True)

# The app's last migration while it lived in delivery/submission/ (label "submission" then as now).
BEFORE_THE_MOVE = ("submission", "0002_outbound_from_domain")
RAW = b"From: Alice <alice@example.com>\r\nTo: bob@dest.test\r\nSubject: Kept\r\n\r\nStill here.\r\n"


def _old_install():
    """The database as the old app left it: its migrations applied, a credential, a message and its send."""
    MigrationExecutor(connection).migrate([BEFORE_THE_MOVE])
    now = timezone.now()
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO submission_smtpcredential (username, secret_hash, allowed_domains, rate_limit, rate_period,
                   tracking, default_tag, enabled, created_at, updated_at)
               VALUES ('alice', %s, 'example.com', 0, 'minute', false, '', true, %s, %s) RETURNING id""",
            [make_password(ALICE_SECRET), now, now],
        )
        credential_id = cur.fetchone()[0]
        cur.execute(
            """INSERT INTO submission_outboundmessage (credential_id, mail_from, from_header, from_domain, subject,
                   message_id, raw, size, recipients, tag, peer, created_at)
               VALUES (%s, 'alice@example.com', 'Alice <alice@example.com>', 'example.com', 'Kept', '<kept@example.com>',
                   %s, %s, 1, 'receipts', '127.0.0.1', %s) RETURNING id""",
            [credential_id, RAW, len(RAW), now],
        )
        outbound_id = cur.fetchone()[0]
    Send.objects.create(email="bob@dest.test", domain="dest.test", outbound_id=outbound_id)
    return outbound_id


def test_upgrading_keeps_the_old_apps_credentials_messages_and_sends():
    outbound_id = _old_install()
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    # The old migrations count as applied; what is left changes no table.
    assert [(m.app_label, m.name) for m, _ in plan] == [("submission", "0003_pin_table_names")]
    assert [line for line in executor.loader.collect_sql(plan) if not line.startswith("--")] == []
    executor.migrate(executor.loader.graph.leaf_nodes())

    credential = SmtpCredential.objects.get()
    assert credential.username == "alice" and credential.check_secret(ALICE_SECRET)
    message = OutboundMessage.objects.get()
    assert (message.pk, message.credential, bytes(message.raw), message.tag) == (outbound_id, credential, RAW,
                                                                                 "receipts")
    assert Send.objects.get(outbound_id=message.pk).email == "bob@dest.test"
