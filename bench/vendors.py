"""The same campaign sent on SQLite and on PostgreSQL, one after the other, into Postfix's smtp-sink.

    .venv/bin/python bench/vendors.py [--recipients 5000] [--domains 20] [--concurrency 2]

PostgreSQL is the baseline: a scratch database (BENCH_VENDORS_DB, default
herald_bench_vendors, dropped and re-created) on BENCH_PG. SQLite is a file in
bench/out/. Redis is BENCH_REDIS_URL (default db 14, flushed). Each run starts
its own smtp-sink and Celery worker, imports the contacts through the ORM
(identical on both), starts the campaign and waits for it to finish. Prints,
per database: snapshot seconds, end-to-end messages/s (start to the last final
row), messages the sink counted, and SQLite's rate as a share of PostgreSQL's.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import benchlib  # noqa: F401  (sets a SECRET_KEY for benchmark processes)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PG = os.environ.get("BENCH_PG", "postgres://herald:herald@127.0.0.1:5432")
PG_DB = os.environ.get("BENCH_VENDORS_DB", "herald_bench_vendors")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SQLITE_FILE = OUT / "vendors.sqlite3"
VENV_BIN = Path(sys.executable).parent


def database_url(vendor):
    return f"{PG}/{PG_DB}" if vendor == "postgresql" else f"sqlite:///{SQLITE_FILE}"


def fresh_database(vendor):
    if vendor == "postgresql":
        import psycopg

        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{PG_DB}"')
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{SQLITE_FILE}{suffix}").unlink(missing_ok=True)


def setup_data(n, domains):
    from send import HTML, SUBJECT, TEXT  # the end-to-end benchmark's message, for comparable figures

    from campaigns.models import Campaign, Contact, MailingList, Subscription
    from delivery.models import DomainThrottle

    readers = MailingList.objects.create(name="Bench list")
    for start in range(0, n, 2000):
        batch = [f"user{g}@domain{g % domains}.example" for g in range(start, min(start + 2000, n))]
        contacts = Contact.objects.bulk_create(
            [Contact(email=a, email_key=a, first_name=a.partition("@")[0]) for a in batch]
        )
        Subscription.objects.bulk_create(
            [Subscription(contact=c, mailing_list=readers, status="confirmed") for c in contacts]
        )
    campaign = Campaign.objects.create(name="Bench", subject=SUBJECT, from_email="news@herald.example",
                                       from_name="Herald Bench", html_body=HTML, text_body=TEXT)
    campaign.lists.add(readers)
    DomainThrottle.objects.create(name="default", is_default=True, rate=20000, burst=20000, max_connections=8)
    return campaign


def run_one(vendor, args):
    """In a process of its own (settings read DATABASE_URL once): one campaign; prints a JSON line."""
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    chosen = {k: os.environ[k] for k in ("DATABASE_URL", "REDIS_URL")}
    from send import SmtpSink  # sets its own DATABASE_URL and REDIS_URL on import: put ours back

    os.environ.update(chosen)
    import django

    django.setup()
    import redis
    from django.core.management import call_command

    redis.Redis.from_url(REDIS_URL).flushdb()
    call_command("migrate", verbosity=0)
    campaign = setup_data(args.recipients, args.domains)

    from campaigns.models import Campaign
    from delivery import lifecycle
    from delivery.models import Relay, Send

    sink = SmtpSink()
    Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security="none",
                         max_connections=8, messages_per_connection=1000)
    log = (OUT / f"vendors-{vendor}-worker.log").open("wb")
    worker = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "herald", "worker", "-n", f"vendors-{vendor}@%h", "-c", str(args.concurrency),
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
        cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        time.sleep(4)  # the worker boots
        t0 = time.time()
        lifecycle.start_campaign(campaign.pk)
        snapshot = time.time() - t0
        deadline = time.monotonic() + args.timeout
        while True:
            campaign.refresh_from_db()
            if campaign.status != Campaign.Status.SENDING:
                break
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"{vendor}: campaign not finished: {lifecycle.counts(campaign.pk)} (see {log.name})")
            time.sleep(0.5)
        last = Send.objects.filter(campaign=campaign).order_by("-updated_at").values_list("updated_at", flat=True)[0]
        counts = lifecycle.counts(campaign.pk)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    delivered = sink.snapshot()[1]
    sink.stop()
    print(json.dumps({"vendor": vendor, "status": campaign.status, "counts": counts, "snapshot": snapshot,
                      "elapsed": last.timestamp() - t0, "sink_messages": delivered}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=5000)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--only", choices=["postgresql", "sqlite"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only:
        return run_one(args.only, args)

    print(f"{args.recipients} recipients across {args.domains} domains, worker concurrency {args.concurrency}, "
          f"redis {REDIS_URL}")
    results = {}
    for vendor in ("postgresql", "sqlite"):
        fresh_database(vendor)
        env = dict(os.environ, DATABASE_URL=database_url(vendor), REDIS_URL=REDIS_URL, LOG_LEVEL="WARNING",
                   HERALD_VAR_DIR=str(OUT / "vendors-var"), DJANGO_SETTINGS_MODULE="herald.settings")
        out = subprocess.run([sys.executable, __file__, "--only", vendor, "--recipients", str(args.recipients),
                              "--domains", str(args.domains), "--concurrency", str(args.concurrency),
                              "--timeout", str(args.timeout)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{vendor} run failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
        results[vendor] = json.loads(out.stdout.strip().splitlines()[-1])
    if PG_DB.startswith("herald_bench"):
        fresh_database("postgresql")  # leave an empty database, not 5000 rows
    print()
    print(f"{'database':12} {'status':9} {'sent':>6} {'sink':>6} {'snapshot s':>10} {'end to end s':>12} {'messages/s':>10}")
    for vendor, r in results.items():
        rate = r["counts"]["sent"] / r["elapsed"]
        r["rate"] = rate
        print(f"{vendor:12} {r['status']:9} {r['counts']['sent']:6} {r['sink_messages']:6} {r['snapshot']:10.2f} "
              f"{r['elapsed']:12.2f} {rate:10.0f}")
    print(f"SQLite at {results['sqlite']['rate'] / results['postgresql']['rate']:.0%} of PostgreSQL's rate "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
