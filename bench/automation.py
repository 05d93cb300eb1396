"""Automations benchmark: enrolments advanced per second, and webhook deliveries per second, on PostgreSQL.

    .venv/bin/python bench/automation.py [--contacts 1000000] [--processes 1] [--webhooks 20000]

In a scratch database of its own (BENCH_DB, default herald_bench_auto, dropped
and re-created), generates the contacts and enrols every one of them in an
automation whose first step, an email, is due now (generate_series inside
PostgreSQL). Then times the due-steps sweep (automations.sweep.advance, what
the beat tick runs) in ``--processes`` processes side by side until nothing is
due: each enrolment gets its email step's Message (with its idempotency key)
and queued Send, the Sends are handed to the engine (published on the bench's
own Redis db, which is emptied afterwards: a relay on loopback stands in, so
nothing is resolved or sent), and the enrolment moves on to its wait. Target:
5,000 enrolments a second.

Then the outbox: ``--webhooks`` rows for one endpoint on a loopback HTTP
receiver (a process of its own answering 204 over kept-alive connections),
delivered by webhooks_out.deliver.deliver_due, once with one event per request
and once with batches of 100. Target: 2,000 deliveries a second.
"""

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

from benchlib import free_port, recreate_database

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://herald:herald@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB", "herald_bench_auto")
os.environ["DATABASE_URL"] = f"{PG}/{DB_NAME}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["HERALD_WEBHOOK_ALLOW_PRIVATE"] = "true"
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.de", "example.fr", "web.de", "gmx.de", "icloud.com"]


def setup(contacts: int):
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from automations.models import Automation, MessageTemplate, Step
    from delivery.models import Relay

    call_command("migrate", verbosity=0)
    Relay.objects.create(name="loopback", host="127.0.0.1", port=free_port(), security=Relay.Security.NONE)
    template = MessageTemplate.objects.create(name="Welcome", slug="welcome", subject="Welcome {{ contact.first_name }}",
                                              from_email="hello@herald.example", html_body="<p>Hi</p>")
    auto = Automation.objects.create(name="Welcome series", trigger=Automation.Trigger.MANUAL,
                                     status=Automation.Status.ACTIVE)
    Step.objects.create(automation=auto, version=1, position=10, kind=Step.Kind.EMAIL, template=template)
    Step.objects.create(automation=auto, version=1, position=20, kind=Step.Kind.WAIT, wait_seconds=86400)
    Step.objects.create(automation=auto, version=1, position=30, kind=Step.Kind.EMAIL, template=template)
    now = timezone.now()
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, updated_at)
            SELECT 'user' || i || '@' || d, 'user' || i || '@' || d, 'User' || i, '', '{}'::jsonb, 'active', %(now)s, %(now)s
            FROM generate_series(1::bigint, %(n)s::bigint) i, LATERAL (SELECT (%(domains)s::text[])[1 + i %% 8] AS d) x
            """, {"n": contacts, "now": now, "domains": DOMAINS})
        cur.execute(
            """
            INSERT INTO automations_enrolment (automation_id, contact_id, occurrence, trigger_key, version, position,
                                               due_at, status, reason, payload, entered_at, updated_at)
            SELECT %(auto)s, id, 1, '', 1, 10, %(now)s, 'active', '', '{}'::jsonb, %(now)s, %(now)s FROM campaigns_contact
            """, {"auto": auto.pk, "now": now})
        cur.execute("VACUUM ANALYZE")
    return now


def _advance(now, counter):
    import django

    django.setup()
    from automations import sweep

    counter.value += sweep.advance(now=now)


def bench_sweep(now, processes: int, contacts: int) -> float:
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("fork")
    counters = [context.Value("q", 0) for _ in range(processes)]
    workers = [context.Process(target=_advance, args=(now, c)) for c in counters]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    done = sum(c.value for c in counters)
    print(f"sweep: {done:,} enrolments advanced (email step: Message + queued Send, then on to a wait) "
          f"in {elapsed:.1f} s by {processes} process(es): {done / elapsed:,.0f}/s (target 5,000/s)")
    if done != contacts:
        print(f"  !! expected {contacts:,}")
    return done / elapsed


def _receiver(port, ready):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ready.set()
    server.serve_forever()


def bench_webhooks(count: int, batch_size: int, port: int) -> float:
    from django.db import connection
    from django.utils import timezone

    from webhooks_out import deliver
    from webhooks_out.models import Endpoint, OutboxMessage, new_secret

    Endpoint.objects.all().delete()
    endpoint = Endpoint.objects.create(url=f"http://127.0.0.1:{port}/hook", event_types=["opened"], secret=new_secret(),
                                       batch_size=batch_size)
    now = timezone.now()
    with connection.cursor() as cur:
        cur.execute(
            f"""
            INSERT INTO {OutboxMessage._meta.db_table} (endpoint_id, msg_id, event_type, payload, status, attempts,
                                                       next_attempt_at, last_error, created_at)
            SELECT %(e)s, 'msg_' || md5(i::text), 'opened',
                   jsonb_build_object('type', 'opened', 'timestamp', %(now)s::text, 'data',
                                      jsonb_build_object('email', 'user' || i || '@example.com', 'send_id', i)),
                   'pending', 0, %(now)s, '', %(now)s
            FROM generate_series(1, %(n)s) i
            """, {"e": endpoint.pk, "n": count, "now": now})  # noqa: S608
    started = time.perf_counter()
    delivered = 0
    while True:
        got = deliver.deliver_due(now=timezone.now())
        delivered += got
        if not got:
            break
    elapsed = time.perf_counter() - started
    print(f"webhooks: {delivered:,} events delivered, {batch_size} per request, in {elapsed:.1f} s: "
          f"{delivered / elapsed:,.0f}/s (target 2,000/s)")
    return delivered / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--webhooks", type=int, default=20_000)
    args = parser.parse_args()
    recreate_database(PG, DB_NAME)
    print(f"generating {args.contacts:,} contacts and their enrolments…")
    now = setup(args.contacts)
    import redis
    from django.conf import settings

    try:
        bench_sweep(now, args.processes, args.contacts)
    finally:
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    receiver = context.Process(target=_receiver, args=(port, ready), daemon=True)
    receiver.start()
    ready.wait(30)
    try:
        bench_webhooks(args.webhooks, 1, port)
        bench_webhooks(args.webhooks * 5, 100, port)
    finally:
        receiver.terminate()
        receiver.join()


if __name__ == "__main__":
    main()
