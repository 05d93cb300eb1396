"""The audience snapshot (one Send row per recipient) and the grouping of sends into batches."""

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from campaigns.audience import mailable
from campaigns.models import Campaign, Contact, MailingList, Subscription, Suppression
from delivery import audiences
from delivery.models import Send


def audience_sql(count_only=False, ranged=False):
    """Active contacts with a live subscription in any target list, not suppressed or paused, each once.

    A live subscription is a confirmed one, or on a single opt-in list any
    not unsubscribed: a double opt-in list's unconfirmed signups get nothing.

    ``ranged``: only contacts with ``after < id <= upto`` (one chunk of a snapshot).
    """
    c, s, ml, x = (m._meta.db_table for m in (Contact, Subscription, MailingList, Suppression))
    where = f"""
        FROM {c} c
        WHERE c.status = 'active'
          AND (c.paused_until IS NULL OR c.paused_until <= {{now}})
          AND EXISTS (
            SELECT 1 FROM {s} s JOIN {ml} l ON l.id = s.mailing_list_id
            WHERE s.contact_id = c.id AND s.mailing_list_id = ANY(%(lists)s)
              AND (s.status = 'confirmed' OR (l.optin = 'single' AND s.status <> 'unsubscribed')))
          AND NOT EXISTS (SELECT 1 FROM {x} x WHERE x.email_key = c.email_key)
    """.replace("{now}", "now()")  # noqa: S608
    if ranged:
        where += " AND c.id > %(after)s AND c.id <= %(upto)s"
    if count_only:
        return "SELECT count(*) " + where
    return f"""
        INSERT INTO {Send._meta.db_table}
            (campaign_id, contact_id, email, domain, status, attempts, next_attempt_at,
             smtp_reply, message_id, created_at, updated_at)
        SELECT %(campaign)s, c.id, c.email, substring(c.email_key from '@([^@]*)$'), 'queued', 0, now(),
               '', '', now(), now()
        {where}
        ON CONFLICT DO NOTHING
    """  # noqa: S608


def sqlite_audience_sql(n_lists, count_only=False, ranged=False):
    """The same audience for SQLite: lists as an IN list, the domain cut without regular expressions.

    ``rtrim(key, <every character but '@'>)`` leaves the key up to its last '@',
    so what follows is the domain, as PostgreSQL's ``'@([^@]*)$'`` finds it.
    """
    c, s, ml, x = (m._meta.db_table for m in (Contact, Subscription, MailingList, Suppression))
    lists = ", ".join(["%s"] * n_lists)
    where = f"""
        FROM {c} c
        WHERE c.status = 'active'
          AND (c.paused_until IS NULL OR c.paused_until <= {{now}})
          AND EXISTS (
            SELECT 1 FROM {s} s JOIN {ml} l ON l.id = s.mailing_list_id
            WHERE s.contact_id = c.id AND s.mailing_list_id IN ({lists})
              AND (s.status = 'confirmed' OR (l.optin = 'single' AND s.status <> 'unsubscribed')))
          AND NOT EXISTS (SELECT 1 FROM {x} x WHERE x.email_key = c.email_key)
    """.replace("{now}", "datetime('now')")  # noqa: S608
    if ranged:
        where += " AND c.id > %s AND c.id <= %s"
    if count_only:
        return "SELECT count(*) " + where
    return f"""
        INSERT INTO {Send._meta.db_table}
            (campaign_id, contact_id, email, domain, status, attempts, next_attempt_at,
             smtp_reply, message_id, created_at, updated_at)
        SELECT %s, c.id, c.email, substr(c.email_key, length(rtrim(c.email_key, replace(c.email_key, '@', ''))) + 1),
               'queued', 0, %s, '', '', %s, %s
        {where}
        ON CONFLICT DO NOTHING
    """  # noqa: S608


def _list_ids(campaign):
    return list(campaign.lists.values_list("id", flat=True))


def targeted_contacts(campaign: Campaign):
    """The contacts a campaign with segments, exclusions or a follow-up would mail now, each once.

    One query, compiled by the ORM from the audience's conditions (see delivery.audiences):
    used for the count and, wrapped in an INSERT, for the snapshot.
    """
    return Contact.objects.filter(mailable(), audiences.targeted(campaign))


def _insert_targeted(campaign, after, upto) -> int:
    """The snapshot of a chunk of a campaign aimed at segments: one INSERT … SELECT, like the lists' own."""
    rows = targeted_contacts(campaign).filter(id__gt=after, id__lte=upto).order_by().values_list("id", "email", "email_key")
    try:
        select, params = rows.query.sql_with_params()
    except EmptyResultSet:
        return 0  # aimed at nobody (no list or segment left)
    if connection.vendor == "sqlite":
        domain = "substr(a.email_key, length(rtrim(a.email_key, replace(a.email_key, '@', ''))) + 1)"
    else:
        domain = "substring(a.email_key from '@([^@]*)$')"
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    # WHERE true: SQLite reads "ON CONFLICT" after a bare FROM as a join constraint.
    sql = f"""
        INSERT INTO {Send._meta.db_table}
            (campaign_id, contact_id, email, domain, status, attempts, next_attempt_at,
             smtp_reply, message_id, created_at, updated_at)
        SELECT %s, a.id, a.email, {domain}, 'queued', 0, %s, '', '', %s, %s
        FROM ({select}) a
        WHERE true
        ON CONFLICT DO NOTHING
    """  # noqa: S608
    with connection.cursor() as cur:
        cur.execute(sql, [campaign.pk, now, now, now, *params])
        return max(cur.rowcount, 0)


def count_audience(campaign: Campaign) -> int:
    """How many recipients a send would have now (what the confirmation page shows), after exclusions and suppressions."""
    if not campaign.targets_lists_only():
        return targeted_contacts(campaign).count()
    lists = _list_ids(campaign)
    if not lists:
        return 0
    with connection.cursor() as cur:
        if connection.vendor == "sqlite":
            cur.execute(sqlite_audience_sql(len(lists), count_only=True), lists)
        else:
            cur.execute(audience_sql(count_only=True), {"lists": lists})
        return cur.fetchone()[0]


def highest_contact_id() -> int:
    """Where a snapshot starting now ends: contacts added later are not in its audience."""
    return Contact.objects.aggregate(top=Max("id"))["top"] or 0


def next_chunk(after: int, upto: int, size: int) -> int:
    """The end of the chunk of ``size`` contact ids that follows ``after``, skipping a gap in the ids (deleted contacts)."""
    first = Contact.objects.filter(id__gt=after, id__lte=upto).order_by("id").values_list("id", flat=True).first()
    return upto if first is None else min(upto, first - 1 + size)


def snapshot_range(campaign: Campaign, after: int, upto: int) -> int:
    """Insert the Send rows of the audience's contacts with ``after < id <= upto``; returns how many are new.

    Idempotent: a contact already in the campaign is skipped (ON CONFLICT), so
    a chunk done twice (a worker lost after its commit) adds nobody twice.
    """
    if upto <= after:
        return 0
    if not campaign.targets_lists_only():
        return _insert_targeted(campaign, after, upto)
    lists = _list_ids(campaign)
    if not lists:
        return 0
    with connection.cursor() as cur:
        if connection.vendor == "sqlite":
            now = connection.ops.adapt_datetimefield_value(timezone.now())
            cur.execute(sqlite_audience_sql(len(lists), ranged=True), [campaign.pk, now, now, now, *lists, after, upto])
        else:
            cur.execute(audience_sql(ranged=True), {"campaign": campaign.pk, "lists": lists, "after": after, "upto": upto})
        return max(cur.rowcount, 0)


def batch_size():
    return getattr(settings, "HERALD_BATCH_SIZE", 200)


# Domains whose group batches() remembers while it streams a campaign's rows.
DOMAIN_CACHE = 20000


def batches(rows, group_of, size=None):
    """Yield (group, [send ids]) of at most ``size`` sends from (id, domain) rows sorted by domain."""
    size = size or batch_size()
    open_batches = {}
    group_by_domain = {}  # one look-up per domain, not per row; bounded, so memory stays flat
    for send_id, domain in rows:
        group = group_by_domain.get(domain)
        if group is None:
            if len(group_by_domain) >= DOMAIN_CACHE:
                group_by_domain.clear()
            group = group_by_domain[domain] = group_of(domain)
        ids = open_batches.setdefault(group, [])
        ids.append(send_id)
        if len(ids) >= size:
            yield group, ids
            open_batches[group] = []
    for group, ids in open_batches.items():
        if ids:
            yield group, ids
