"""Automations benchmark: enrolments advanced per second, and webhook deliveries per second, on PostgreSQL.

    .venv/bin/python bench/automation.py [--contacts 1000000] [--processes 1] [--webhooks 20000] [--baseline 500]

In a scratch database of its own (BENCH_DB, default herald_bench_auto, dropped
and re-created), generates the contacts and enrols every one of them in an
automation whose first step, an email, is due now (generate_series inside
PostgreSQL). Then times the due-steps sweep (automations.sweep.advance, what
the beat tick runs) in ``--processes`` processes side by side until nothing is
due: each enrolment gets its email step's Message (with its idempotency key)
and queued Send, the Sends are handed to the engine (published on the bench's
own Redis db, which is emptied afterwards: a relay on loopback stands in, so
nothing is resolved or sent), and the enrolment moves on to its wait. Target:
5,000 enrolments a second. Beside it, in the same run, a naive baseline does
the same for ``--baseline`` enrolments of their own the plain Django way (one
at a time through the ORM), and the ratio is printed: on a busy machine the
ratio is steadier than either rate.

Then the outbox: ``--webhooks`` rows for one endpoint on a loopback HTTP
receiver (a lean asyncio one in a process of its own, answering 204 over
kept-alive connections), delivered by webhooks_out.deliver.deliver_due, once
with one event per request and once with batches of 100. Target: 2,000
deliveries a second. The baseline is one plain kept-alive client posting the
same kind of request to the same receiver with no outbox at all.
"""

import argparse
import multiprocessing
import os
import sys
import time
from datetime import timedelta
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


def setup(contacts: int, sample: int):
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
    # The naive baseline's own automation, paused so that the sweep leaves its enrolments alone.
    naive = Automation.objects.create(name="Naive baseline", trigger=Automation.Trigger.MANUAL,
                                      status=Automation.Status.PAUSED)
    for step in auto.steps.all():
        step.pk, step.automation = None, naive
        step.save()
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
        cur.execute(
            """
            INSERT INTO automations_enrolment (automation_id, contact_id, occurrence, trigger_key, version, position,
                                               due_at, status, reason, payload, entered_at, updated_at)
            SELECT %(auto)s, id, 1, '', 1, 10, %(now)s, 'active', '', '{}'::jsonb, %(now)s, %(now)s
            FROM campaigns_contact ORDER BY id LIMIT %(n)s
            """, {"auto": naive.pk, "now": now, "n": sample})
        cur.execute("VACUUM ANALYZE")
    return now


def naive_sweep(now) -> float:
    """Baseline: the same work the plain Django way, one enrolment at a time (its steps looked up, its Send
    and Message created, the enrolment saved, the Send handed to the engine); enrolments a second."""
    from django.db import transaction
    from django.db.models import F

    from automations.models import Automation, Enrolment, Message, Step
    from delivery import dispatch
    from delivery.models import Send

    naive = Automation.objects.get(name="Naive baseline")
    started = time.perf_counter()
    done = 0
    for enrolment in Enrolment.objects.filter(automation=naive, status="active", due_at__lte=now).select_related(
            "contact"):
        with transaction.atomic():
            steps = Step.objects.filter(automation=naive, version=enrolment.version).order_by("position")
            email = steps.filter(position__gte=enrolment.position).first()
            contact = enrolment.contact
            send = Send.objects.create(contact=contact, email=contact.email, domain=contact.email.split("@")[1],
                                       status=Send.Status.QUEUED, next_attempt_at=now)
            Message.objects.create(automation=naive, step=email, contact=contact, occurrence=enrolment.occurrence,
                                   send=send, template_id=email.template_id, payload=enrolment.payload, created_at=now)
            wait = steps.filter(position__gt=email.position).first()
            after = steps.filter(position__gt=wait.position).first()
            enrolment.position = after.position
            enrolment.due_at = now + timedelta(seconds=wait.wait_seconds)
            enrolment.save()
            Step.objects.filter(pk__in=[email.pk, wait.pk]).update(entered=F("entered") + 1)
            dispatch.enqueue_sends([send.pk], domains=[send.domain])
        done += 1
    return done / (time.perf_counter() - started)


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
    """A lean HTTP/1.1 endpoint: reads each request to the end of its body and answers 204, on kept-alive
    connections (the standard library's http.server tops out near Herald's rate on this machine, and would be
    what is measured)."""
    import asyncio

    class Hook(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, bytearray()

        def data_received(self, data):
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = 0
                for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                del self.buffer[:end + 4 + length]
                self.transport.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    async def serve():
        server = await asyncio.get_running_loop().create_server(Hook, "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    asyncio.run(serve())


def bare_posts(count: int, port: int) -> float:
    """Baseline: the same requests from one plain kept-alive client, with no outbox, no signing and no log."""
    import http.client

    body = b'{"type": "opened", "timestamp": "2026-01-01T00:00:00+00:00", "data": {"email": "user1@example.com", ' \
           b'"send_id": 1}, "id": "msg_c4ca4238a0b923820dcc509a6f75849b"}'
    conn = http.client.HTTPConnection("127.0.0.1", port)
    started = time.perf_counter()
    for _ in range(count):
        conn.request("POST", "/hook", body=body, headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    conn.close()
    return count / (time.perf_counter() - started)


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
    if delivered != count:
        print(f"  !! expected {count:,}")
    return delivered / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--webhooks", type=int, default=20_000)
    parser.add_argument("--baseline", type=int, default=500, help="enrolments for the naive baseline")
    args = parser.parse_args()
    recreate_database(PG, DB_NAME)
    print(f"generating {args.contacts:,} contacts and their enrolments…")
    now = setup(args.contacts, min(args.baseline, args.contacts))
    import redis
    from django.conf import settings

    try:
        naive = naive_sweep(now)
        print(f"naive baseline (ORM, one enrolment at a time, {min(args.baseline, args.contacts):,} enrolments): "
              f"{naive:,.0f}/s")
        rate = bench_sweep(now, args.processes, args.contacts)
        print(f"sweep: {rate / naive:.1f}x the naive baseline")
    finally:
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    receiver = context.Process(target=_receiver, args=(port, ready), daemon=True)
    receiver.start()
    ready.wait(30)
    try:
        bare = bare_posts(args.webhooks // 2, port)
        print(f"baseline: one plain kept-alive client posting to the same receiver (no outbox): {bare:,.0f} requests/s")
        single = bench_webhooks(args.webhooks, 1, port)
        batched = bench_webhooks(args.webhooks * 5, 100, port)
        print(f"webhooks: {single / bare:.2f}x the plain client's requests/s one event per request, "
              f"{batched / bare:.1f}x its rate in events batched by 100")
    finally:
        receiver.terminate()
        receiver.join()


if __name__ == "__main__":
    main()
