"""Benchmark of the admin's main pages on a large database. Prints figures; asserts nothing.

    .venv/bin/python bench/admin.py [--contacts 1000000] [--events 10000000] [--campaigns 10] [--rounds 5]

Seeds (once) a PostgreSQL database of its own, herald_bench_admin, created if
missing and reused when it already holds the sizes asked for: --contacts
contacts on one list, --campaigns finished campaigns each sent to half of
them, and --events opens, clicks (with a share from machines), bounces,
complaints and unsubscribes on those sends. Every row is written by set-based
INSERT … SELECT over generate_series, into the sends and events without their
secondary indexes and triggers (the indexes are built again afterwards, the
statistics' tallies counted once by rollups.rebuild), then the tables are
analysed. About 20 minutes for a million contacts and ten million events on
two busy cores.

Then it asks for each main admin page as a signed-in superuser, in process
through Django's whole stack (middleware, templates), and prints the median
response time of --rounds requests after one warm-up, with the number of SQL
queries, beside a baseline of the same run: an admin list of an empty table,
which costs what the stack costs (session, permissions, navigation, theme).
The target is under 300 ms per page.

Needs PostgreSQL (role herald may create databases).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import benchlib  # noqa: F401  (sets a SECRET_KEY for benchmark processes)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "herald_bench_admin"
BASE_URL = os.environ.get("DATABASE_URL", "postgres://herald:herald@127.0.0.1:5432/herald")
PARTS = urlsplit(BASE_URL)
SERVER = f"{PARTS.scheme}://{PARTS.netloc}"
MARKER = "bench-admin {contacts} {events} {campaigns}"


def create_database_if_missing():
    import psycopg

    with psycopg.connect(SERVER.replace("postgres://", "postgresql://", 1) + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone():
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def setup_django():
    os.environ.update({"DATABASE_URL": f"{SERVER}/{DB_NAME}", "DEBUG": "false", "LOG_LEVEL": "ERROR",
                       "ALLOWED_HOSTS": "testserver,127.0.0.1"})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seeded(marker):
    from campaigns.models import MailingList

    return MailingList.objects.filter(name=marker).exists()


def step(label, sql, params=()):
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    print(f"  {label}: {time.perf_counter() - started:.1f} s", flush=True)


def indexes_dropped(table):
    """Drop the table's secondary indexes (not those of constraints); returns the statements that build them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT i.indexname, i.indexdef FROM pg_indexes i
            WHERE i.tablename = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)""",
                       [table])
        found = cursor.fetchall()
        for name, _ in found:
            cursor.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in found]


def seed(contacts, events, campaigns, marker):
    from django.db import connection, transaction

    from campaigns.models import Campaign, MailingList

    print(f"seeding {contacts} contacts, {campaigns} campaigns, {events} events …", flush=True)
    with connection.cursor() as cursor:
        for table in ("tracking_tally", "tracking_sendmark", "tracking_engagement", "tracking_event", "delivery_send",
                      "campaigns_campaignlink", "campaigns_campaign_lists", "campaigns_campaign",
                      "campaigns_subscription", "campaigns_mailinglist", "campaigns_contact"):
            cursor.execute(f"TRUNCATE {table} CASCADE")
    with transaction.atomic():
        step("contacts", """
            INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, updated_at)
            SELECT 'person' || g || '@d' || (g %% 500) || '.example', 'person' || g || '@d' || (g %% 500) || '.example',
                   'Person', 'N' || g, '{}'::jsonb, CASE WHEN g %% 200 = 0 THEN 'unsubscribed' ELSE 'active' END,
                   now() - (g %% 1000) * interval '1 hour', now()
            FROM generate_series(1, %s) AS g""", [contacts])
        readers = MailingList.objects.create(name="Bench readers")
        list_id = readers.pk
        # Bulk seeding only: no foreign-key checks and no triggers (the statistics' tallies, the
        # Engagement and the webhooks' outbox), each of which would add look-ups and writes per row.
        connection.cursor().execute("SET session_replication_role = replica")
        rebuild = indexes_dropped("delivery_send") + indexes_dropped("tracking_event")
        step("subscriptions", """
            INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, created_at, updated_at)
            SELECT id, %s, 'subscribed', created_at, now() FROM campaigns_contact""", [list_id])
        # Through the model, so that every column gets its default; the times are set in SQL after.
        Campaign.objects.bulk_create([Campaign(
            name=f"Newsletter {c}", subject=f"News {c}", from_name="Herald", from_email="news@herald.example",
            html_body='<p>Hi</p><a href="https://shop.example/a">a</a><a href="https://shop.example/b">b</a>',
            status="finished", track_opens=True, track_clicks=True, total=contacts // 2) for c in range(1, campaigns + 1)])
        step("campaigns", """
            UPDATE campaigns_campaign SET
                started_at = now() - (%s - substring(name from 12)::int) * interval '1 day' - interval '2 hours',
                finished_at = now() - (%s - substring(name from 12)::int) * interval '1 day',
                created_at = now() - (%s - substring(name from 12)::int) * interval '1 day' - interval '3 hours'""",
             [campaigns, campaigns, campaigns])
        step("links", """
            INSERT INTO campaigns_campaignlink (campaign_id, index, url, personal)
            SELECT c.id, i, 'https://shop.example/' || chr(97 + i), false
            FROM campaigns_campaign c, generate_series(0, 1) AS i""")
        # Each campaign goes to half the contacts (every other one, shifted per campaign).
        step("sends", """
            INSERT INTO delivery_send (campaign_id, contact_id, email, domain, status, attempts, sent_at, smtp_reply,
                                       message_id, created_at, updated_at)
            SELECT c.id, p.id, p.email, split_part(p.email, '@', 2),
                   CASE WHEN p.id %% 97 = 0 THEN 'bounced' WHEN p.id %% 331 = 0 THEN 'failed' ELSE 'sent' END,
                   CASE WHEN p.id %% 50 = 0 THEN 2 ELSE 1 END,
                   CASE WHEN p.id %% 97 = 0 OR p.id %% 331 = 0 THEN NULL
                        ELSE c.started_at + (p.id %% 7200) * interval '1 second' END,
                   '250 ok', '', c.started_at, c.finished_at
            FROM campaigns_campaign c JOIN campaigns_contact p ON (p.id + c.id) %% 2 = 0""")
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id), max(id) FROM delivery_send")
        low, high = cursor.fetchone()
        cursor.execute("SET session_replication_role = replica")
    try:
        step("events", """
            INSERT INTO tracking_event (type, send_id, contact_id, campaign_id, email, created_at, machine, url, link_index,
                                        status, diagnostic, reason, user_agent, source, raw)
            SELECT CASE WHEN g %% 100 < 62 THEN 'open' WHEN g %% 100 < 96 THEN 'click' WHEN g %% 100 < 98 THEN 'bounce'
                        WHEN g %% 100 < 99 THEN 'unsubscribe' ELSE 'complaint' END,
                   s.id, s.contact_id, s.campaign_id, s.email,
                   coalesce(s.sent_at, s.created_at) + (g %% 86400) * interval '1 second', g %% 7 = 0,
                   CASE WHEN g %% 100 BETWEEN 62 AND 95 THEN 'https://shop.example/' || chr(97 + g %% 2) ELSE '' END,
                   CASE WHEN g %% 100 BETWEEN 62 AND 95 THEN g %% 2 END,
                   '', '', '', 'Mozilla/5.0', 'pixel', ''
            FROM generate_series(1, %s) AS g
            JOIN delivery_send s ON s.id = %s + (g::bigint * 7919) %% (%s - %s + 1)""", [events, low, high, low])
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = DEFAULT")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for statement in rebuild:
            cursor.execute(statement)
    print(f"  indexes: {time.perf_counter() - started:.1f} s", flush=True)
    step("engagement", """
        INSERT INTO tracking_engagement (contact_id, last_open_at, last_click_at, last_open_any_at, last_click_any_at)
        SELECT contact_id, max(CASE WHEN NOT machine THEN created_at END),
               max(CASE WHEN NOT machine AND type = 'click' THEN created_at END),
               max(created_at), max(CASE WHEN type = 'click' THEN created_at END)
        FROM tracking_event WHERE contact_id IS NOT NULL AND type IN ('open', 'click') GROUP BY contact_id""")
    from tracking import rollups

    started = time.perf_counter()
    rollups.rebuild()
    print(f"  tallies: {time.perf_counter() - started:.1f} s", flush=True)
    step("analyse", "ANALYZE")
    readers.name = marker  # seeded whole: the next run reuses it
    readers.save(update_fields=["name"])


def login_client():
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "bench@herald.example",
                                                                                          "bench-only-password-1")
    client = Client()
    client.force_login(user)
    return client


def measure(client, url, rounds):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    started = time.perf_counter()
    response = client.get(url)
    cold = time.perf_counter() - started
    assert response.status_code == 200, (url, response.status_code)
    times, queries = [], 0
    for _ in range(rounds):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
        queries = len(captured)
    return statistics.median(times), cold, queries, len(response.content)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--campaigns", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    create_database_if_missing()
    setup_django()
    marker = MARKER.format(contacts=args.contacts, events=args.events, campaigns=args.campaigns)
    if seeded(marker):
        print(f"reusing {DB_NAME}: {marker}")
    else:
        started = time.perf_counter()
        seed(args.contacts, args.events, args.campaigns, marker)
        print(f"seeded in {time.perf_counter() - started:.0f} s")

    from campaigns.models import Campaign, Contact

    campaign = Campaign.objects.order_by("-started_at").first()
    contact = Contact.objects.order_by("id")[args.contacts // 2:args.contacts // 2 + 1].get()
    pages = [
        ("baseline: empty list", "/admin/tracking/breakertrip/"),
        ("dashboard", "/admin/"),
        ("campaign list", "/admin/campaigns/campaign/"),
        ("campaign report", f"/admin/tracking/campaignstatistics/{campaign.pk}/change/"),
        ("report by day", f"/admin/tracking/campaignstatistics/{campaign.pk}/change/?unit=day"),
        ("report CSV domains", f"/admin/herald/reports/campaigns/{campaign.pk}/domains.csv"),
        ("who clicked a link", f"/admin/herald/reports/campaigns/{campaign.pk}/links/0/"),
        ("contact list", "/admin/campaigns/contact/"),
        ("contact search", "/admin/campaigns/contact/?q=" + contact.email),
        ("contact page", f"/admin/campaigns/contact/{contact.pk}/change/"),
        ("contact timeline", f"/admin/herald/contacts/{contact.pk}/timeline/"),
        ("event list", "/admin/tracking/event/"),
    ]
    client = login_client()
    print(f"\n{args.contacts} contacts, {args.events} events, {args.campaigns} campaigns; median of {args.rounds}")
    print(f"{'page':<22}{'ms':>8}{'first ms':>10}{'x base':>8}{'queries':>9}{'KiB':>7}  target 300 ms")
    baseline = None
    for label, url in pages:
        seconds, cold, queries, size = measure(client, url, args.rounds)
        baseline = baseline or seconds
        verdict = "ok" if seconds < 0.3 else "SLOW"
        print(f"{label:<22}{seconds * 1000:>8.0f}{cold * 1000:>10.0f}{seconds / baseline:>8.1f}{queries:>9}"
              f"{size / 1024:>7.0f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
