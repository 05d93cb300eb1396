"""Each contact's latest open and click (tracking's Engagement), as the events say they are: checked and rebuilt.

Segments read "opened in the last 90 days", "last activity" and "campaigns
received since the last open" from that one row per contact, which a trigger on
the events keeps. What the ledger says is the truth: ``differences`` counts the
rows that disagree with it, and ``rebuild`` writes them all afresh (after a
restore, a bulk load with triggers off, or rows deleted by hand).
"""

from django.db import connection, transaction

from tracking.models import Engagement, Event

COLUMNS = ("contact_id", "last_open_at", "last_click_at", "last_open_any_at", "last_click_any_at")

# An open is an open or a click (a person who clicked saw the message); people's unless "any".
LEDGER = f"""
    SELECT contact_id, max(CASE WHEN NOT machine THEN created_at END),
           max(CASE WHEN NOT machine AND type = 'click' THEN created_at END),
           max(created_at), max(CASE WHEN type = 'click' THEN created_at END)
    FROM {Event._meta.db_table}
    WHERE contact_id IS NOT NULL AND type IN ('open', 'click')
    GROUP BY contact_id
"""  # noqa: S608 (constant SQL)

TABLE = Engagement._meta.db_table
STORED = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"  # noqa: S608


def differences() -> int:
    """How many contacts' rows differ from their events (missing, left over, or with other times)."""
    with connection.cursor() as cur:
        cur.execute(f"""
            SELECT count(DISTINCT contact_id) FROM (
                SELECT contact_id FROM ({STORED} EXCEPT {LEDGER}) extra
                UNION ALL SELECT contact_id FROM ({LEDGER} EXCEPT {STORED}) missing) wrong
        """)  # noqa: S608
        return cur.fetchone()[0]


def rebuild() -> int:
    """Write every contact's row afresh from the events; returns how many rows there are.

    The events wait meanwhile (a share lock): an open recorded during the rebuild
    would otherwise be counted by its trigger and then wiped by the rebuild.
    """
    with transaction.atomic():
        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute(f"LOCK TABLE {Event._meta.db_table} IN SHARE MODE")
            cur.execute(f"DELETE FROM {TABLE}")  # noqa: S608
            cur.execute(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) {LEDGER}")  # noqa: S608
            return max(cur.rowcount, 0)
