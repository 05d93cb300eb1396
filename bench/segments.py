"""Segments benchmark: count and snapshot five representative segments against hand-written SQL, on PostgreSQL.

    .venv/bin/python bench/segments.py [--contacts 1000000] [--events 20000000] [--repeat 3]
                                       [--snapshot-repeat N] [--reuse]

Generates, in a scratch database of its own (BENCH_DB, default
herald_bench_segments, dropped and re-created unless ``--reuse`` finds it
filled), the contacts with JSON attributes, three lists, suppressions and
the events (opens, a third of them by machines, clicks, bounces), all with
generate_series inside PostgreSQL; the event table's indexes are built after
the rows are in, as a restore would.

Opens and clicks of any campaign are read, by Herald and by hand alike, from
tracking_engagement (each contact's latest open and click, kept by a trigger on
the events; written here by segments.engagement.rebuild after the load); those
of a given campaign from the events, through the segments app's index of each
campaign's opens and clicks by contact (its migrations 0002 and 0003 add the
indexes that segments read).

Then, for each segment, in the same run: the count through Herald's compiler
(segments.compiler, the query the admin and the API run) and through a
hand-written query, and the snapshot of a campaign aimed at the segment
(delivery.planner's one INSERT … SELECT over the whole audience) against a
hand-written INSERT of the same rows. Each figure is the best of ``--repeat``
runs; the ratio is Herald's time over the hand-written one. Targets: a count
under a second, a snapshot within 1.5 times the hand-written one.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from benchlib import recreate_database

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://herald:herald@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB", "herald_bench_segments")
os.environ["DATABASE_URL"] = f"{PG}/{DB_NAME}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

COUNTRIES = ["DE", "FR", "US", "GB", "ES", "IT", "NL", "PL"]
PLANS = ["free", "silver", "gold", "platinum"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.de", "example.fr", "web.de", "gmx.de", "icloud.com"]
CAMPAIGNS = 40


def database_filled(contacts):
    import psycopg

    try:
        with psycopg.connect(os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)) as conn:
            return conn.execute("SELECT count(*) FROM campaigns_contact").fetchone()[0] == contacts
    except psycopg.Error:
        return False


def generate(contacts, events):
    from django.core.management import call_command
    from django.db import connection

    from segments import engagement

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '256MB'")
        cur.execute("INSERT INTO campaigns_mailinglist (name, description, optin, created_at, updated_at) VALUES "
                    "('News', '', 'single', now(), now()), ('Offers', '', 'double', now(), now()), "
                    "('Staff', '', 'single', now(), now())")
        cur.execute("SELECT id FROM campaigns_mailinglist ORDER BY id")
        news, offers, staff = (row[0] for row in cur.fetchall())
        cur.execute("""
            INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, updated_at)
            SELECT 'user' || i || '@' || d, 'user' || i || '@' || d, 'First' || i, 'Last' || (i %% 9973),
                   jsonb_build_object('country', (%(countries)s::text[])[1 + i %% 8],
                                      'plan', (%(plans)s::text[])[1 + (i / 7) %% 4],
                                      'age', 18 + (i * 7919) %% 60,
                                      'birthday', to_char(date '1960-01-01' + ((i * 104729) %% 16000)::int, 'YYYY-MM-DD')),
                   CASE WHEN i %% 100 = 0 THEN 'unsubscribed' ELSE 'active' END,
                   now() - ((i %% 1000) || ' days')::interval, now()
            FROM generate_series(1::bigint, %(n)s::bigint) i, LATERAL (SELECT (%(domains)s::text[])[1 + (i * 31) %% 8] AS d) x
        """, {"n": contacts, "countries": COUNTRIES, "plans": PLANS, "domains": DOMAINS})
        cur.execute("SELECT min(id), max(id) FROM campaigns_contact")
        low, high = cur.fetchone()
        # Everyone on News (one in twenty unsubscribed), three in ten on Offers, one in twenty on Staff.
        cur.execute("""
            INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, resubscribe_reason, created_at, updated_at)
            SELECT id, %(news)s, CASE WHEN id %% 20 = 0 THEN 'unsubscribed' ELSE 'confirmed' END, '', now(), now()
            FROM campaigns_contact
            UNION ALL SELECT id, %(offers)s, 'confirmed', '', now(), now() FROM campaigns_contact WHERE id %% 10 < 3
            UNION ALL SELECT id, %(staff)s, 'confirmed', '', now(), now() FROM campaigns_contact WHERE id %% 20 = 7
        """, {"news": news, "offers": offers, "staff": staff})
        cur.execute("""
            INSERT INTO campaigns_suppression (email, email_key, reason, detail, created_at)
            SELECT email, email_key, 'hard_bounce', '', now() FROM campaigns_contact WHERE id %% 97 = 0
        """, [])
        cur.execute("""
            INSERT INTO campaigns_campaign (name, subject, from_name, from_email, reply_to, html_body, text_body, status,
                                            status_reason, track_opens, track_clicks, total, created_at, updated_at,
                                            started_at, finished_at, follow_up_audience, follow_up_machine_opens)
            SELECT 'Campaign ' || g, 'Subject', '', 'news@herald.example', '', '<p>x</p>', '', 'finished', '', true,
                   true, 0, now(), now(), now() - ((g * 9) || ' days')::interval, now() - ((g * 9) || ' days')::interval,
                   '', false
            FROM generate_series(1, %(n)s) g
        """, {"n": CAMPAIGNS})
        cur.execute("SELECT min(id) FROM campaigns_campaign")
        first_campaign = cur.fetchone()[0]
        print(f"contacts, lists, suppressions: {time.perf_counter() - started:.1f} s", flush=True)

        # The event table's indexes are built once its rows are in, and its foreign keys (checked by a trigger
        # per row) are left out: they cost the load, not the queries; without the one to the sends each
        # snapshot can also start from an empty send table.
        cur.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'tracking_event'::regclass AND contype = 'f'")
        for (name,) in cur.fetchall():
            cur.execute(f'ALTER TABLE tracking_event DROP CONSTRAINT "{name}"')
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tracking_event' "
                    "AND indexname NOT LIKE '%%pkey'", [])
        indexes = cur.fetchall()
        # The trigger that keeps each contact's latest open and click waits too: one GROUP BY fills them after.
        cur.execute("ALTER TABLE tracking_event DISABLE TRIGGER USER")
        for name, _ in indexes:
            cur.execute(f'ALTER TABLE tracking_event DROP CONSTRAINT IF EXISTS "{name}"')
            cur.execute(f'DROP INDEX IF EXISTS "{name}"')
        step = time.perf_counter()
        # 60 % opens (a third by machines), 25 % clicks (a tenth by scanners), 10 % delivered, 4 % soft bounces,
        # 0.8 % hard bounces, 0.2 % complaints; over the last year; each on a random contact and campaign.
        batch = 2_000_000
        for start in range(0, events, batch):
            cur.execute("""
                INSERT INTO tracking_event (type, contact_id, campaign_id, email, created_at, machine, url, link_index,
                                            status, diagnostic, reason, user_agent, source, raw)
                SELECT CASE WHEN r < 0.60 THEN 'open' WHEN r < 0.85 THEN 'click' WHEN r < 0.95 THEN 'delivered'
                            WHEN r < 0.99 THEN 'soft_bounce' WHEN r < 0.998 THEN 'bounce' ELSE 'complaint' END,
                       %(low)s + floor(random() * (%(high)s - %(low)s + 1))::bigint,
                       %(first)s + floor(random() * %(campaigns)s)::bigint,
                       '', now() - random() * interval '365 days',
                       (r < 0.20) OR (r >= 0.60 AND r < 0.625),
                       CASE WHEN r >= 0.60 AND r < 0.85 THEN 'https://example.com/' || (g %% 5) ELSE '' END,
                       CASE WHEN r >= 0.60 AND r < 0.85 THEN g %% 5 END, '', '', '', '', 'bench', ''
                FROM generate_series(%(start)s, %(stop)s) g, LATERAL (SELECT random() + g * 0 AS r) x
            """, {"low": low, "high": high, "first": first_campaign, "campaigns": CAMPAIGNS, "start": start + 1,
                  "stop": min(events, start + batch)})
            print(f"  events: {min(events, start + batch):,}", flush=True)
        print(f"events: {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()
        for name, definition in indexes:
            cur.execute(definition)
        print(f"event indexes: {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()
        engagement.rebuild()
        cur.execute("ALTER TABLE tracking_event ENABLE TRIGGER USER")
        print(f"latest opens and clicks: {time.perf_counter() - step:.1f} s", flush=True)
        cur.execute("VACUUM ANALYZE")
    print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)


def segments():
    """(name, rule tree, hand-written WHERE on contact c): five kinds of segment marketers build."""
    from campaigns.models import Campaign, MailingList

    news = MailingList.objects.get(name="News").pk
    staff = MailingList.objects.get(name="Staff").pk
    recent = Campaign.objects.filter(name__startswith="Campaign ", started_at__isnull=False).order_by("-started_at").first().pk
    live = ("EXISTS (SELECT 1 FROM campaigns_subscription s JOIN campaigns_mailinglist l ON l.id = s.mailing_list_id "
            "WHERE s.contact_id = c.id AND s.mailing_list_id = {list} AND (s.status = 'confirmed' "
            "OR (l.optin = 'single' AND s.status <> 'unsubscribed')))")
    return [
        ("Germans who clicked in the last 90 days",
         {"match": "all", "rules": [
             {"type": "attribute", "key": "country", "op": "equals", "value": "DE"},
             {"type": "clicked", "within_days": 90}]},
         "c.attributes->>'country' = 'DE' AND EXISTS (SELECT 1 FROM tracking_engagement g WHERE g.contact_id = c.id "
         "AND g.last_click_at >= %(now)s - interval '90 days')"),
        ("On News, no open in six months",
         {"match": "all", "rules": [
             {"type": "list", "list": news},
             {"match": "none", "rules": [{"type": "opened", "within_days": 180}]}]},
         live.format(list=news) + " AND NOT EXISTS (SELECT 1 FROM tracking_engagement g WHERE g.contact_id = c.id "
         "AND g.last_open_at >= %(now)s - interval '180 days')"),
        ("On News but not on Staff",
         {"match": "all", "rules": [
             {"type": "list", "list": news},
             {"match": "none", "rules": [{"type": "list", "list": staff}]}]},
         live.format(list=news) + " AND NOT " + live.format(list=staff)),
        ("Gold or platinum, aged 30 to 50, at Gmail or Yahoo",
         {"match": "all", "rules": [
             {"type": "attribute", "key": "plan", "op": "in", "value": ["gold", "platinum"]},
             {"type": "attribute", "key": "age", "kind": "number", "op": "between", "value": [30, 50]},
             {"type": "domain", "op": "in", "value": ["gmail.com", "yahoo.com"]}]},
         "c.attributes->>'plan' IN ('gold', 'platinum') AND (c.attributes->>'age')::float BETWEEN 30 AND 50 "
         "AND (c.email_key LIKE '%%@gmail.com' OR c.email_key LIKE '%%@yahoo.com')"),
        ("Opened the last campaign but did not click it (people only)",
         {"match": "all", "rules": [
             {"type": "opened", "campaign": recent},
             {"match": "none", "rules": [{"type": "clicked", "campaign": recent}]}]},
         f"EXISTS (SELECT 1 FROM tracking_event e WHERE e.contact_id = c.id AND e.campaign_id = {recent} "
         "AND e.type IN ('open', 'click') AND NOT e.machine) AND NOT EXISTS (SELECT 1 FROM tracking_event e "
         f"WHERE e.contact_id = c.id AND e.campaign_id = {recent} AND e.type = 'click' AND NOT e.machine)"),
    ]


def best(repeat, run, before=None):
    times, result = [], None
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def hand_snapshot_sql(where):
    """The audience a campaign aimed at a segment gets, written by hand: mailable, on some list, in the segment."""
    return f"""
        INSERT INTO delivery_send (campaign_id, contact_id, email, domain, status, attempts, next_attempt_at,
                                   smtp_reply, message_id, created_at, updated_at)
        SELECT %(campaign)s, c.id, c.email, substring(c.email_key from '@([^@]*)$'), 'queued', 0, now(), '', '', now(),
               now()
        FROM campaigns_contact c
        WHERE c.status = 'active'
          AND NOT EXISTS (SELECT 1 FROM campaigns_suppression x WHERE x.email_key = c.email_key)
          AND EXISTS (SELECT 1 FROM campaigns_subscription s JOIN campaigns_mailinglist l ON l.id = s.mailing_list_id
                      WHERE s.contact_id = c.id AND (s.status = 'confirmed'
                            OR (l.optin = 'single' AND s.status <> 'unsubscribed')))
          AND ({where})
        ON CONFLICT DO NOTHING
    """  # noqa: S608 (the benchmark's own constant SQL)


def measure(repeat, snapshot_repeat):
    from django.db import connection
    from django.utils import timezone

    from campaigns.models import Campaign, Contact, Segment
    from delivery import planner
    from segments.compiler import segment_q

    upto = planner.highest_contact_id()
    counts, ratios = [], []
    print(f"\n{'segment':<58} {'count':>9} {'Herald':>8} {'by hand':>8} {'ratio':>6}   "
          f"{'snapshot':>8} {'by hand':>8} {'ratio':>6}")
    for name, rules, where in segments():
        segment, _ = Segment.objects.update_or_create(name=name, defaults={"rules": rules})
        # "In the last 90 days" by hand means since the time Herald's last run took: the window moves meanwhile.
        stamp = {"now": timezone.now()}

        def herald_count(segment=segment, stamp=stamp):
            stamp["now"] = timezone.now()
            return Contact.objects.filter(segment_q(segment, stamp["now"])).count()

        def by_hand(where=where, stamp=stamp):
            with connection.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM campaigns_contact c WHERE {where}", stamp)  # noqa: S608
                return cur.fetchone()[0]

        herald_count, n = best(repeat, herald_count)
        hand_count, m = best(repeat, by_hand)
        assert n == m, f"{name}: Herald counts {n}, the hand-written query {m}"
        campaign = Campaign.objects.create(name=name, subject="x", from_email="news@herald.example", html_body="x")
        campaign.segments.add(segment)

        def empty():
            with connection.cursor() as cur:
                cur.execute("TRUNCATE delivery_send")

        def herald_snapshot(campaign=campaign, stamp=stamp):
            stamp["now"] = timezone.now()
            return planner.snapshot_range(campaign, 0, upto)

        def hand_snapshot(where=where, campaign=campaign, stamp=stamp):
            with connection.cursor() as cur:
                cur.execute(hand_snapshot_sql(where), {"campaign": campaign.pk, **stamp})
                return cur.rowcount

        herald_snap, rows = best(snapshot_repeat, herald_snapshot, empty)
        hand_snap, hand_rows = best(snapshot_repeat, hand_snapshot, empty)
        assert rows == hand_rows, f"{name}: Herald snapshots {rows}, the hand-written INSERT {hand_rows}"
        print(f"{name:<58} {n:>9,} {herald_count:>7.3f}s {hand_count:>7.3f}s {herald_count / hand_count:>5.2f}x   "
              f"{herald_snap:>7.3f}s {hand_snap:>7.3f}s {herald_snap / hand_snap:>5.2f}x   ({rows:,} recipients)",
              flush=True)
        counts.append(herald_count)
        ratios.append(herald_snap / hand_snap)
        empty()
    print(f"\ncounts under 1 s: {sum(t < 1 for t in counts)} of {len(counts)} (slowest {max(counts):.3f} s); "
          f"snapshots within 1.5 times the hand-written one: {sum(r <= 1.5 for r in ratios)} of {len(ratios)} "
          f"(highest {max(ratios):.2f}x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, help="default: 20 per contact")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--snapshot-repeat", type=int, help="default: --repeat (a snapshot of most contacts is long)")
    parser.add_argument("--reuse", action="store_true", help="keep the database when it holds as many contacts")
    args = parser.parse_args()
    events = args.events if args.events is not None else 20 * args.contacts
    if not (args.reuse and database_filled(args.contacts)):
        recreate_database(PG, DB_NAME)
        import django

        django.setup()
        print(f"generating {args.contacts:,} contacts and {events:,} events in {DB_NAME}", flush=True)
        generate(args.contacts, events)
    else:
        import django

        django.setup()
        from django.core.management import call_command

        print(f"reusing {DB_NAME}", flush=True)
        call_command("migrate", verbosity=0)  # a database kept from before gets the indexes added since
    measure(args.repeat, args.snapshot_repeat or args.repeat)


if __name__ == "__main__":
    main()
