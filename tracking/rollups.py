"""A campaign's figures kept as they change, so that pages read a few hundred rows rather than millions.

On PostgreSQL, triggers on Send and Event (tracking/migrations/0012) add a
row to tracking_tallydelta for each change: +n when a send or event comes in
or starts to count, -n when it stops; ``fold`` moves them into Tally, one row
per key. tracking/stats.py reads the sums of both. The metrics, each
a sum by campaign and by ``domain``, ``key`` and ``at`` where given:

    send, tried, retried    sends by domain and status (key); those answered at least once, at least twice
    latency                 microseconds from queueing to acceptance, by domain (sent_at - created_at)
    sent_at                 sends accepted, by minute (at); campaign None for mail without a campaign
    relay                   sends answered (domain: sent or bounced) by relay id (key, '' for direct delivery)
    nd_sent                 sends standing as sent with a report that they never arrived, by domain
    opens                   open events, people's and machines'
    clicks, machine_clicks  click events of people, of machines, by link index (key, '' for none)
    series                  the timeline's events by series (key) and minute (at), machines' opens and clicks apart
    human_opens, machine_opens, clickers, complaints, unsubscribes
                            sends (people) with at least one such event
    link_clickers           sends with a person's click on link ``key``

Counting people needs to know whether a send had shown a figure before: that
is SendMark's, one bit per figure (MARKS). ``ledger_sql`` counts every metric
afresh from the sends and events; ``rebuild`` replaces the tallies with it
(the rebuild_tallies command), and SQLite, which has no statement triggers
with transition tables, reads it in place of the tables. Beat folds every
minute, and a page folds a campaign that gathered many changes before it
reads it, so that what a page reads stays small.
"""

from datetime import UTC, datetime

from django.db import connection as default_connection
from django.db import transaction
from django.utils import timezone

# SendMark bits (the trigger's tracking_tally_bit): a person's open, a machine's open, a person's click, a complaint,
# an unsubscribe, a report that the message never arrived (bounce, soft bounce, rejected).
MARKS = {"human_opens": 1, "machine_opens": 2, "clickers": 4, "complaints": 8, "unsubscribes": 16, "nd_sent": 32}
NON_DELIVERY = ("bounce", "soft_bounce", "rejected")
SERIES_CASE = ("CASE type WHEN 'open' THEN 'opens' WHEN 'click' THEN 'clicks' WHEN 'bounce' THEN 'bounces' "
               "WHEN 'soft_bounce' THEN 'bounces' WHEN 'complaint' THEN 'complaints' "
               "WHEN 'unsubscribe' THEN 'unsubscribes' END")
FOLD_AT = 2000  # changes of a campaign worth folding before a page reads them
DELTAS = "tracking_tallydelta"
BOTH = ("(SELECT campaign_id, metric, domain, key, at, n FROM tracking_tally{where} "
        "UNION ALL SELECT campaign_id, metric, domain, key, at, n FROM tracking_tallydelta{where}) AS t")


def _dialect(vendor):
    if vendor == "postgresql":
        return {"minute": "date_trunc('minute', {}, 'UTC')",
                "micros": "(extract(epoch FROM {0} - {1}) * 1000000)::bigint", "null_at": "NULL::timestamptz"}
    # Percent signs doubled: the SQL is run with parameters (an empty list at least), as a format string.
    return {"minute": "strftime('%%Y-%%m-%%d %%H:%%M:00', {})",
            "micros": "CAST(round((julianday({0}) - julianday({1})) * 86400000000.0) AS INTEGER)", "null_at": "NULL"}


def ledger_sql(vendor, campaigns=""):
    """Every metric counted from the sends and events: rows of (campaign_id, metric, domain, key, at, n).

    ``campaigns`` is SQL of campaign ids to restrict it to (``IN (…)``'s inside), or empty for all.
    Execute it with parameters, an empty list if none: its percent signs are doubled.
    """
    d = _dialect(vendor)
    minute, null = d["minute"].format, d["null_at"]
    only = f" AND campaign_id IN ({campaigns})" if campaigns else ""
    sends = f"FROM delivery_send WHERE campaign_id IS NOT NULL{only}"
    events = f"FROM tracking_event WHERE campaign_id IS NOT NULL{only}"
    people = "count(DISTINCT send_id)"
    parts = [
        f"SELECT campaign_id, 'send', domain, status, {null}, count(*) {sends} GROUP BY campaign_id, domain, status",
        f"SELECT campaign_id, 'tried', domain, status, {null}, count(*) {sends} AND attempts >= 1 "
        "GROUP BY campaign_id, domain, status",
        f"SELECT campaign_id, 'retried', domain, status, {null}, count(*) {sends} AND attempts >= 2 "
        "GROUP BY campaign_id, domain, status",
        f"SELECT campaign_id, 'latency', domain, '', {null}, sum({d['micros'].format('sent_at', 'created_at')}) "
        f"{sends} AND sent_at IS NOT NULL GROUP BY campaign_id, domain",
        f"SELECT campaign_id, 'sent_at', '', '', {minute('sent_at')}, count(*) FROM delivery_send "  # noqa: S608
        f"WHERE campaign_id IS NOT NULL AND sent_at IS NOT NULL{only} GROUP BY campaign_id, {minute('sent_at')}",  # noqa: S608
        f"SELECT campaign_id, 'relay', status, coalesce(CAST(relay_id AS TEXT), ''), {null}, count(*) {sends} "
        "AND status IN ('sent', 'bounced') GROUP BY campaign_id, status, relay_id",
        f"SELECT e.campaign_id, 'nd_sent', s.domain, '', {null}, count(DISTINCT e.send_id) FROM tracking_event e "  # noqa: S608
        f"JOIN delivery_send s ON s.id = e.send_id WHERE e.campaign_id IS NOT NULL{only.replace('campaign_id', 'e.campaign_id')} "
        f"AND e.type IN {NON_DELIVERY} AND s.status = 'sent' GROUP BY e.campaign_id, s.domain",  # noqa: S608
        f"SELECT campaign_id, 'opens', '', '', {null}, count(*) {events} AND type = 'open' GROUP BY campaign_id",
        f"SELECT campaign_id, 'clicks', '', coalesce(CAST(link_index AS TEXT), ''), {null}, count(*) {events} "
        "AND type = 'click' AND NOT machine GROUP BY campaign_id, link_index",
        f"SELECT campaign_id, 'machine_clicks', '', coalesce(CAST(link_index AS TEXT), ''), {null}, count(*) {events} "
        "AND type = 'click' AND machine GROUP BY campaign_id, link_index",
        f"SELECT campaign_id, 'series', '', {SERIES_CASE}, {minute('created_at')}, count(*) {events} "
        "AND type IN ('open', 'click', 'bounce', 'soft_bounce', 'complaint', 'unsubscribe') "
        f"AND NOT (type IN ('open', 'click') AND machine) GROUP BY campaign_id, {SERIES_CASE}, {minute('created_at')}",
        f"SELECT campaign_id, 'human_opens', '', '', {null}, {people} {events} AND type = 'open' AND NOT machine "
        "GROUP BY campaign_id",
        f"SELECT campaign_id, 'machine_opens', '', '', {null}, {people} {events} AND type = 'open' AND machine "
        "GROUP BY campaign_id",
        f"SELECT campaign_id, 'clickers', '', '', {null}, {people} {events} AND type = 'click' AND NOT machine "
        "GROUP BY campaign_id",
        f"SELECT campaign_id, 'complaints', '', '', {null}, {people} {events} AND type = 'complaint' GROUP BY campaign_id",
        f"SELECT campaign_id, 'unsubscribes', '', '', {null}, {people} {events} AND type = 'unsubscribe' "
        "GROUP BY campaign_id",
        f"SELECT campaign_id, 'link_clickers', '', CAST(link_index AS TEXT), {null}, {people} {events} "
        "AND type = 'click' AND NOT machine AND link_index IS NOT NULL GROUP BY campaign_id, link_index",
    ]
    if not campaigns:  # mail without a campaign, for the sends per hour
        parts.append(f"SELECT CAST(NULL AS BIGINT), 'sent_at', '', '', {minute('sent_at')}, count(*) FROM delivery_send "  # noqa: S608
                     f"WHERE campaign_id IS NULL AND sent_at IS NOT NULL GROUP BY {minute('sent_at')}")  # noqa: S608
    # The first member names the columns (SQLite takes no column list after a subquery's alias).
    names = "SELECT NULL AS campaign_id, NULL AS metric, NULL AS domain, NULL AS key, NULL AS at, NULL AS n WHERE 1 = 0"
    return " UNION ALL ".join([names, *(f"SELECT * FROM ({part}) AS p{i}" for i, part in enumerate(parts))])  # noqa: S608


def tallies(campaign_ids, metrics, *, by=("domain", "key", "at"), since=None, until=None, unit=None):
    """Sums of the metrics for these campaigns (None: every campaign, and mail without one):
    {(campaign_id, metric, *by): n}, without the zeros.

    ``by`` names the columns to keep apart (the others are summed over);
    ``since`` and ``until`` keep the minutes from one and before the other.
    ``unit`` (hour or day) sums the minutes by the start of their hour or
    day in the current time zone, where the database can (PostgreSQL); the
    minutes come back as they are otherwise.
    """
    ids = None if campaign_ids is None else [int(pk) for pk in campaign_ids]
    if ids == []:
        return {}
    vendor = default_connection.vendor
    postgres = vendor == "postgresql"
    where = f"metric IN ({', '.join(['%s'] * len(metrics))})"
    params = list(metrics)
    if ids:
        where += f" AND campaign_id IN ({', '.join(map(str, ids))})"
    for bound, operator in ((since, ">="), (until, "<")):
        if bound is not None:
            where += f" AND at {operator} %s"
            params.append(bound if postgres else bound.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))
    if postgres:  # the conditions inside, on each table, so that each is read through its index
        source = BOTH.format(where=f" WHERE {where}")
        params = params * 2
        where = "true"
    else:
        source = f"({ledger_sql(vendor, ', '.join(map(str, ids)) if ids else '')})"
        source += " AS t"
    columns = ["campaign_id", "metric", *by]
    if postgres and unit in ("hour", "day") and "at" in by:
        columns[columns.index("at")] = f"date_trunc('{unit}', at, %s)"
        params.insert(0, timezone.get_current_timezone_name())
    groups = ", ".join(str(i) for i in range(1, len(columns) + 1))
    sql = f"SELECT {', '.join(columns)}, sum(n) FROM {source} WHERE {where} GROUP BY {groups}"  # noqa: S608
    with default_connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    at = by.index("at") + 2 if "at" in by else None
    result = {}
    for row in rows:
        if not row[-1]:
            continue
        row = list(row)
        if at is not None and isinstance(row[at], str):
            row[at] = datetime.fromisoformat(row[at]).replace(tzinfo=UTC)
        result[tuple(row[:-1])] = int(row[-1])
    return result


def fold(campaign_ids=None, connection=None):
    """Move the changes the triggers added (of these campaigns, or all) into Tally; returns the changes folded.

    Two folds at once never count a change twice: each deletes the changes it
    sums, and a change another fold deleted first is not returned to it.
    Changes of a campaign deleted since are dropped.
    """
    connection = connection or default_connection
    if connection.vendor != "postgresql":
        return 0
    only, params = "", []
    if campaign_ids is not None:
        only, params = " WHERE campaign_id = ANY(%s)", [list(campaign_ids)]
    with connection.cursor() as cursor:
        cursor.execute(f"""
            WITH gone AS (DELETE FROM tracking_tallydelta{only} RETURNING campaign_id, metric, domain, key, at, n),
            summed AS (SELECT campaign_id, metric, domain, key, at, sum(n) AS n, count(*) AS changes FROM gone
                       GROUP BY 1, 2, 3, 4, 5),
            kept AS (INSERT INTO tracking_tally AS t (campaign_id, metric, domain, key, at, n)
                     SELECT campaign_id, metric, domain, key, at, n FROM summed
                     WHERE n <> 0 AND (campaign_id IS NULL OR EXISTS (
                         SELECT 1 FROM campaigns_campaign c WHERE c.id = summed.campaign_id))
                     ON CONFLICT (campaign_id, metric, domain, key, at) DO UPDATE SET n = t.n + excluded.n)
            SELECT coalesce(sum(changes), 0) FROM summed""", params)  # noqa: S608
        return int(cursor.fetchone()[0])


def fold_busy(campaign_ids):
    """Fold the campaigns that gathered many changes since the last fold, before a page reads them."""
    if default_connection.vendor != "postgresql" or not campaign_ids:
        return
    with default_connection.cursor() as cursor:
        cursor.execute("""
            SELECT c FROM unnest(%s::bigint[]) AS c
            WHERE (SELECT count(*) FROM (SELECT 1 FROM tracking_tallydelta WHERE campaign_id = c LIMIT %s) AS r) >= %s""",
                       [list(campaign_ids), FOLD_AT, FOLD_AT])
        busy = [row[0] for row in cursor.fetchall()]
    if busy:
        fold(busy)


def rebuild(campaign_ids=None, connection=None):
    """Count the tallies and marks afresh from the sends and events (of these campaigns, or all).

    Sends and events are locked against writes meanwhile (a minute or so for
    ten million events), so that nothing arrives between the count and the
    triggers. Returns the rows written.
    """
    connection = connection or default_connection
    if connection.vendor != "postgresql":
        return 0
    ids = None if campaign_ids is None else [int(pk) for pk in campaign_ids]
    only = "" if ids is None else ", ".join(map(str, ids)) or "NULL"
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute("LOCK TABLE delivery_send, tracking_event IN SHARE MODE")
        if ids is None:
            cursor.execute("TRUNCATE tracking_tally, tracking_tallydelta, tracking_sendmark")
            sends = "e.send_id IS NOT NULL"
        else:
            cursor.execute(f"DELETE FROM tracking_tally WHERE campaign_id IN ({only})")  # noqa: S608
            cursor.execute(f"DELETE FROM tracking_tallydelta WHERE campaign_id IN ({only})")  # noqa: S608
            cursor.execute(f"DELETE FROM tracking_sendmark WHERE send_id IN "  # noqa: S608
                           f"(SELECT id FROM delivery_send WHERE campaign_id IN ({only}))")  # noqa: S608
            sends = f"e.send_id IN (SELECT id FROM delivery_send WHERE campaign_id IN ({only}))"  # noqa: S608
        cursor.execute(f"""
            INSERT INTO tracking_sendmark (send_id, link, bits)
            SELECT e.send_id, -1, bit_or(tracking_tally_bit(e.type, e.machine)) FROM tracking_event e
            WHERE {sends} AND e.campaign_id IS NOT NULL GROUP BY e.send_id
            HAVING bit_or(tracking_tally_bit(e.type, e.machine)) <> 0""")  # noqa: S608
        cursor.execute(f"""
            INSERT INTO tracking_sendmark (send_id, link, bits)
            SELECT DISTINCT e.send_id, e.link_index, 4 FROM tracking_event e
            WHERE {sends} AND e.campaign_id IS NOT NULL AND e.type = 'click' AND NOT e.machine
              AND e.link_index IS NOT NULL""")  # noqa: S608
        cursor.execute(f"""
            INSERT INTO tracking_tally (campaign_id, metric, domain, key, at, n)
            SELECT campaign_id, metric, domain, key, at, n
            FROM ({ledger_sql(connection.vendor, only if ids is not None else '')}) AS t
            WHERE n <> 0""", [])  # noqa: S608
        return cursor.rowcount
