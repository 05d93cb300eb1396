"""Scale benchmark: one campaign of up to a million recipients, two Celery workers, a counting SMTP sink.

    .venv/bin/python bench/scale.py [--recipients 100000] [--domains 20] [--workers 2] [--concurrency 1]
                                    [--throttled-percent 10] [--throttled-rate 100] [--baseline]

``--recipients 1000000`` is the full-size run (10 to 30 minutes on two cores);
the default of 100,000 takes a few minutes.

Uses a scratch PostgreSQL database (BENCH_DB, default herald_bench_scale, dropped
and re-created) and a Redis db (BENCH_REDIS_URL, default db 13, flushed); starts
and stops its own sink and workers, and runs beat's due-retries tick every 15 s
as beat would (it hands throttled sends whose slots come near to the broker).
Prints: total time, messages/s over time (as the sink saw them), peak memory of
every process it started, the database size, the sink's count of unique
recipients and duplicates, and the highest per-domain rate against its limit.

How uniqueness is established: the sink (a small asyncio SMTP server in its own
process, speaking PIPELINING like a real MTA) parses every RCPT address
``user<N>@...`` and counts deliveries per N in a byte array, so every one of the
recipients is checked, not a sample: unique = slots with a count of at least 1,
duplicates = deliveries beyond the first. A message is counted when its final
dot is answered 250, as a real MTA would have accepted it.

A throttled domain must cost the others nothing: ``--throttled-percent`` of the
recipients (10 % by default) sit on ``throttled.example``, limited to
``--throttled-rate`` per second. The benchmark prints when the unthrottled rest
finished, how many Celery tasks were published per message (a backlog that
spins costs one per few messages; reserved slots cost one per slot batch), the
most tasks the broker held at once, and the throttled domain's achieved rate
against its limit. With ``--baseline`` it first sends the unthrottled
recipients alone, in the same run, and compares.

Scale-out across hosts: ``--hosts 2`` starts the workers as two hosts sharing
Redis and PostgreSQL, each worker in a UTS namespace of its own with its own
host name (``unshare --uts``, as root), so that each names its claims, leases
and heartbeats after its host, with its own processes and connection pools.
The report then gives each host's share of the messages (read from the
ledger's claim owners) and every domain's highest count in one second against
its limit plus bucket.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from benchlib import free_port
from benchlib import recreate_database as _recreate

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PG = os.environ.get("BENCH_PG", "postgres://herald:herald@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB", "herald_bench_scale")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
VENV_BIN = Path(sys.executable).parent
THROTTLED = "throttled.example"

os.environ["DATABASE_URL"] = f"{PG}/{DB_NAME}"
os.environ["REDIS_URL"] = REDIS_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
sys.path.insert(0, str(ROOT))


# --- the counting sink (runs as `scale.py --sink PORT N STATUSFILE`) -------------------

class Tally:
    def __init__(self, n):
        self.counts = bytearray(n + 1)
        self.total = 0
        self.unparsed = 0
        self.per_second = defaultdict(int)  # second -> messages
        self.per_domain_second = defaultdict(lambda: defaultdict(int))  # domain -> second -> messages

    def record(self, rcpt: bytes):
        self.total += 1
        second = int(time.time())
        self.per_second[second] += 1
        local, _, domain = rcpt.partition(b"@")
        self.per_domain_second[domain.decode("ascii", "replace").lower()][second] += 1
        try:
            n = int(local[4:]) if local[:4].lower() == b"user" else -1
        except ValueError:
            n = -1
        if 0 <= n < len(self.counts):
            if self.counts[n] < 255:
                self.counts[n] += 1
        else:
            self.unparsed += 1

    def summary(self, final=False):
        out = {"total": self.total, "per_second": dict(self.per_second)}
        if final:
            unique = len(self.counts) - self.counts.count(0) - (1 if self.counts[0] else 0)
            delivered = sum(self.counts)
            out.update(unique=unique, duplicates=delivered - unique - self.counts[0], unparsed=self.unparsed,
                       per_domain_second={d: dict(s) for d, s in self.per_domain_second.items()})
        return out


class SinkProtocol(asyncio.Protocol):
    def __init__(self, tally):
        self.tally = tally
        self.buf = b""
        self.scan = 0
        self.in_data = False
        self.rcpt = b""

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"220 scale-sink ESMTP\r\n")

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n", self.scan)
                if end < 0:
                    self.scan = max(0, len(self.buf) - 4)
                    break
                self.buf = self.buf[end + 5:]
                self.scan = 0
                self.in_data = False
                self.tally.record(self.rcpt)
                out.append(b"250 2.0.0 queued\r\n")
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                break
            line, self.buf = self.buf[:end], self.buf[end + 2:]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                out.append(b"250-scale-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
            elif verb == b"MAIL" or verb == b"RSET" or verb == b"NOOP":
                out.append(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                self.rcpt = line.partition(b":")[2].strip().lstrip(b"<").partition(b">")[0]
                out.append(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                # The CRLF that ended DATA lets an empty body's "." match the end marker.
                self.buf = b"\r\n" + self.buf
                self.scan = 0
                self.in_data = True
                out.append(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            else:
                out.append(b"502 5.5.2 not implemented\r\n")
        if out:
            self.transport.write(b"".join(out))


def run_sink(port, n, status_path):
    tally = Tally(n)
    status = Path(status_path)

    def dump(final=False):
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(tally.summary(final)))
        tmp.replace(status)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(tally), "127.0.0.1", port, backlog=256)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
                dump()
        dump(final=True)

    asyncio.run(main())


# --- the orchestration -----------------------------------------------------------------

def recreate_database():
    _recreate(PG, DB_NAME)


SUBJECT = "Spring news for {{ contact.first_name }}"
TEXT = "Hello {{ contact.first_name }},\n\n" + ("Herald keeps your readers informed. " * 12 + "\n") * 4
HTML = (
    "<html><body><h1>Hello {{ contact.first_name }}</h1>"
    + "".join(f"<p>Paragraph {i}: " + "Herald keeps your readers informed with care and at speed. " * 3
              + f"<a href=\"https://herald.example/articles/{i}\">Read article {i}</a></p>" for i in range(4))
    + "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>"
)


def setup_data(n, domains, throttled_every, throttled_rate, domain_rate):
    """Contacts on ``domains`` ordinary domains, every ``throttled_every``-th on THROTTLED, in two lists;
    returns the campaigns to all of them and to the ordinary ones alone."""
    from django.db import connection

    from campaigns.models import Campaign, MailingList
    from delivery.models import DomainThrottle

    ordinary = MailingList.objects.create(name="Ordinary domains")
    throttled = MailingList.objects.create(name="Throttled domain")
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, updated_at)
               SELECT a, a, 'User' || g, '', '{}'::jsonb, 'active', now(), now()
               FROM (SELECT g, 'user' || g || '@' || CASE WHEN g %% %s = 0 THEN %s
                                                     ELSE 'domain' || (g %% %s) || '.example' END AS a
                     FROM generate_series(1, %s) g) s""",
            [throttled_every, THROTTLED, domains, n],
        )
        cur.execute(
            """INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, created_at, updated_at)
               SELECT id, CASE WHEN email_key LIKE %s THEN %s ELSE %s END, 'confirmed', now(), now()
               FROM campaigns_contact""",
            ["%@" + THROTTLED, throttled.pk, ordinary.pk],
        )
        # VACUUM as well: the first campaign to read the new rows would otherwise set their hint bits and pay
        # for it, which made the baseline (sent first) look slower than the same recipients sent after it.
        cur.execute("VACUUM (ANALYZE) campaigns_contact, campaigns_subscription")
        cur.execute("ANALYZE")
    values = {"subject": SUBJECT, "from_email": "news@herald.example", "from_name": "Herald Scale",
              "html_body": HTML, "text_body": TEXT}
    campaign = Campaign.objects.create(name="Scale", **values)
    campaign.lists.add(ordinary, throttled)
    baseline = Campaign.objects.create(name="Scale, ordinary domains alone", **values)
    baseline.lists.add(ordinary)
    DomainThrottle.objects.create(name="default", is_default=True, rate=domain_rate, burst=domain_rate, max_connections=8)
    DomainThrottle.objects.create(name="throttled", domains=THROTTLED, rate=throttled_rate, burst=throttled_rate,
                                  max_connections=2)
    return campaign, baseline


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def postgres_backends(pids, names):
    """Add the PostgreSQL server processes serving the scratch database (same machine) to the sampled pids."""
    import psycopg

    try:
        with psycopg.connect(f"{PG}/{DB_NAME}", autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                [DB_NAME]).fetchall()
    except psycopg.Error:
        return
    for (pid,) in rows:
        pids.add(pid)
        names.setdefault(pid, ("postgres", "backend"))


def peak_memory(pgids, stop, peak, names, cpu):
    """Peak resident memory (VmHWM) and CPU seconds of every process in the given process groups, from /proc,
    and CPU seconds of the PostgreSQL backends serving the scratch database."""
    backends = set()
    while not stop.is_set():
        postgres_backends(backends, names)
        for pid in list(backends):
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    stat = fh.read().rpartition(")")[2].split()
                cpu[pid] = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
            except OSError:
                backends.discard(pid)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                pgid = os.getpgid(int(pid))
                if pgid not in pgids:
                    continue
                with open(f"/proc/{pid}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
                kb = int(fields["VmHWM"].split()[0])
                peak[int(pid)] = max(peak.get(int(pid), 0), kb)
                with open(f"/proc/{pid}/stat") as fh:
                    stat = fh.read().rpartition(")")[2].split()
                cpu[int(pid)] = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
                names[int(pid)] = (pgids[pgid], fields["Name"].strip())
            except (OSError, ProcessLookupError, ValueError, KeyError):
                continue
        stop.wait(1.0)


def max_window(per_second: dict) -> int:
    return max(per_second.values(), default=0)


def host_name(i, hosts):
    return f"herald-host{i % hosts + 1}"


def start_workers(count, concurrency, env, hosts=1):
    workers = []
    for i in range(count):
        log = (OUT / f"scale-worker{i}.log").open("wb")
        command = [str(VENV_BIN / "celery"), "-A", "herald", "worker", "-n", f"scale{i}@%h", "-c", str(concurrency),
                   "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
        if hosts > 1:
            # A host of its own: a UTS namespace with its own host name, the rest of the machine shared.
            command = ["unshare", "--uts", "--fork", "--", "sh", "-c", f'hostname {host_name(i, hosts)} && exec "$@"',
                       "sh", *command]
        workers.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True))
    return workers


def stop_group(proc, sig=signal.SIGTERM, wait=30):
    try:
        os.killpg(proc.pid, sig)
        proc.wait(wait)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)



def start_sink(n, status_path):
    port = free_port()
    status_path.unlink(missing_ok=True)
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(port), str(n), str(status_path)],
                            cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return sink, port


def broker_tasks(redis_client):
    """Tasks on the broker: in the queue's lists (one per priority) or held by a worker, not yet acknowledged."""
    lists = ["celery"] + [f"celery\x06\x16{p}" for p in (3, 6, 9)]
    return sum(redis_client.llen(name) for name in lists) + redis_client.hlen("unacked")


def beat_tick():
    """What beat's delivery.due_retries task does, run here."""
    from django.db import close_old_connections

    from delivery import tasks

    close_old_connections()
    tasks.due_retries()


def run(campaign, n, args, redis_client, label):
    """Send ``campaign`` with fresh workers and a fresh sink; returns what was measured."""
    from campaigns.models import Campaign
    from delivery import dispatch, lifecycle
    from delivery.models import Relay

    status_path = OUT / f"scale-sink-{label}.json"
    sink, port = start_sink(n, status_path)
    Relay.objects.all().delete()
    Relay.objects.create(name="sink", host="127.0.0.1", port=port, security="none",
                         max_connections=8, messages_per_connection=1000)
    workers = start_workers(args.workers, args.concurrency, dict(os.environ), args.hosts)
    groups = {w.pid: f"worker{i}" for i, w in enumerate(workers)} | {sink.pid: "sink", os.getpgid(0): "orchestrator"}
    peak, names, cpu, stop = {}, {}, {}, threading.Event()
    threading.Thread(target=peak_memory, args=(groups, stop, peak, names, cpu), daemon=True).start()
    time.sleep(5)  # workers boot

    published = int(redis_client.get(dispatch.PUBLISHED_KEY) or 0)
    queue_peak = 0
    t0 = time.time()
    try:
        lifecycle.start_campaign(campaign.pk)
        snapshot_s = time.time() - t0
        print(f"[{label}] snapshot and enqueue: {snapshot_s:.1f} s; sending …")
        last_print = last_tick = time.time()
        while True:
            campaign.refresh_from_db()
            queue_peak = max(queue_peak, broker_tasks(redis_client))
            if campaign.status != Campaign.Status.SENDING:
                break
            if time.time() - t0 > args.timeout:
                print(f"gave up after {args.timeout} s")
                break
            if time.time() - last_tick >= 15:
                beat_tick()
                last_tick = time.time()
            if time.time() - last_print >= 30:
                sent = json.loads(status_path.read_text())["total"] if status_path.exists() else 0
                print(f"  {time.time() - t0:6.0f} s: sink has {sent}")
                last_print = time.time()
            time.sleep(1)
        total_s = time.time() - t0
        counts = lifecycle.counts(campaign.pk)
    finally:
        for w in workers:
            stop_group(w)
        time.sleep(1.5)
        stop_group(sink)
        stop.set()
    summary = json.loads(status_path.read_text())
    if "unique" not in summary:
        raise SystemExit("the sink did not write its final counts")
    published = int(redis_client.get(dispatch.PUBLISHED_KEY) or 0) - published
    return {"t0": t0, "total_s": total_s, "snapshot_s": snapshot_s, "counts": counts, "summary": summary,
            "published": published, "queue_peak": queue_peak, "peak": peak, "names": names, "cpu": cpu, "n": n}


def sent_by_host():
    """{host: messages} from the owners of the claims that sent them (worker ids begin with the host name)."""
    from django.db import connection

    from delivery.models import Send

    with connection.cursor() as cur:
        cur.execute(f"SELECT split_part(lease_owner, ':', 1), count(*) FROM {Send._meta.db_table} "  # noqa: S608
                    "WHERE status = 'sent' GROUP BY 1 ORDER BY 1")
        return dict(cur.fetchall())


def ordinary_done(result):
    """Seconds from the start until the last message to an ordinary domain (per-second resolution)."""
    seconds = [int(sec) for d, per in result["summary"]["per_domain_second"].items() if d != THROTTLED for sec in per]
    return (max(seconds) + 1 - result["t0"]) if seconds else 0.0


def report(result, args):
    from django.db import connection

    from delivery.models import Send

    counts, summary, n, t0 = result["counts"], result["summary"], result["n"], result["t0"]
    total_s = result["total_s"]
    with connection.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database()), pg_total_relation_size(%s)", [Send._meta.db_table])
        db_size, send_size = cur.fetchone()
    per_second = {int(k): v for k, v in summary["per_second"].items()}
    start = min(per_second, default=int(t0))
    timeline = [(k - start, v) for k, v in per_second.items()]
    print()
    print(f"campaign: {counts}")
    print(f"total time (start to finished)    {total_s:8.1f} s   (snapshot and enqueue {result['snapshot_s']:.1f} s)")
    print(f"average rate                       {counts['sent'] / total_s:8.0f} messages/s")
    print("messages/s over time (sink, 30-s windows):")
    buckets = defaultdict(int)
    for sec, v in timeline:
        buckets[sec // 30] += v
    print("   " + "  ".join(f"{b * 30}s:{c / 30:.0f}" for b, c in sorted(buckets.items())))
    print(f"sink: {summary['total']} messages, {summary['unique']} unique recipients of {n}, "
          f"{summary['duplicates']} duplicates, {summary['unparsed']} unparsed "
          f"(every recipient counted in a byte array, no sampling)")
    pds = summary["per_domain_second"]
    throttled = pds.get(THROTTLED, {})
    others = {d: max_window(s) for d, s in pds.items() if d != THROTTLED}
    busiest = max(others, key=others.get) if others else "-"
    thr_secs = sorted(int(s) for s in throttled)
    span = thr_secs[-1] - thr_secs[0] + 1 if thr_secs else 0
    sent_thr = sum(throttled.values())
    # The first second carries the bucket's burst on top of the rate.
    sustained = (sent_thr - args.throttled_rate) / (span - 1) if span > 1 else 0
    print(f"unthrottled {100 - args.throttled_percent:g} % finished after {ordinary_done(result):.0f} s")
    print(f"Celery publishes: {result['published']} tasks for {counts['sent']} messages = "
          f"{result['published'] / max(counts['sent'], 1):.4f} per message; the broker held at most "
          f"{result['queue_peak']} tasks at once (queued and held by workers)")
    print(f"{THROTTLED}: {sent_thr} messages over {span} s; achieved {sustained:.1f}/s after its first second "
          f"against a limit of {args.throttled_rate}/s ({100 * sustained / args.throttled_rate:.0f} %); "
          f"highest 1-s count {max_window(throttled)} (limit plus bucket: {2 * args.throttled_rate})")
    print(f"busiest ordinary domain {busiest}: highest 1-s count {others.get(busiest, 0)} against {args.domain_rate}/s")
    if args.hosts > 1:
        print(f"{args.hosts} hosts: messages sent by each (the ledger's claim owners):")
        for host, sent in sent_by_host().items():
            print(f"   {host:16s} {sent:9d}  ({100 * sent / max(counts['sent'], 1):.0f} %)")
        print("every domain's highest 1-s count, across the hosts, against its limit plus bucket:")
        over = 0
        for domain, per in sorted(pds.items()):
            limit = args.throttled_rate if domain == THROTTLED else args.domain_rate
            over += max_window(per) > 2 * limit
            print(f"   {domain:24s} {max_window(per):6d}  (limit {limit}/s, at most {2 * limit} in a second)")
        print(f"domains over their limit plus bucket in any second: {over}")
    print(f"database size {db_size / 1e6:.0f} MB (send table with indexes {send_size / 1e6:.0f} MB)")
    print("peak memory (VmHWM) and CPU time of every process started:")
    peak, names, cpu = result["peak"], result["names"], result["cpu"]
    pg_cpu = sum(v for pid, v in cpu.items() if names.get(pid, ("",))[0] == "postgres")
    pg_count = sum(1 for pid in cpu if names.get(pid, ("",))[0] == "postgres")
    for pid in sorted(peak):
        group, name = names.get(pid, ("?", "?"))
        print(f"   {group:12s} pid {pid:7d} {name:16s} {peak[pid] / 1024:7.1f} MB  {cpu.get(pid, 0):7.1f} CPU s")
    worker_cpu = sum(v for pid, v in cpu.items() if names.get(pid, ("",))[0].startswith("worker"))
    print(f"workers' CPU time: {worker_cpu:.1f} s = {1000 * worker_cpu / max(counts['sent'], 1):.2f} CPU s per 1000 messages "
          f"(one core sends about {counts['sent'] / max(worker_cpu, 0.001):.0f} messages/s)")
    print(f"PostgreSQL backends of {DB_NAME} ({pg_count} seen): {pg_cpu:.1f} CPU s = "
          f"{1000 * pg_cpu / max(counts['sent'], 1):.2f} CPU s per 1000 messages (snapshot included)")
    ok = summary["unique"] == n and summary["duplicates"] == 0 and counts["sent"] == n
    print("RESULT: " + ("every recipient exactly once" if ok else "MISMATCH"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hosts", type=int, default=1, help="spread the workers over this many simulated hosts")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--domain-rate", type=int, default=2000, help="per-second limit of each ordinary domain")
    parser.add_argument("--throttled-rate", type=int, default=100, help=f"per-second limit of {THROTTLED}")
    parser.add_argument("--throttled-percent", type=float, default=10, help=f"share of recipients on {THROTTLED}")
    parser.add_argument("--baseline", action="store_true",
                        help="first send the recipients of the ordinary domains alone, and compare")
    parser.add_argument("--timeout", type=int, default=3600, help="give up waiting after this many seconds")
    parser.add_argument("--sink", nargs=3, metavar=("PORT", "N", "STATUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink(int(args.sink[0]), int(args.sink[1]), args.sink[2])
        return
    OUT.mkdir(parents=True, exist_ok=True)
    n = args.recipients
    every = max(1, round(100 / args.throttled_percent)) if args.throttled_percent else n + 1

    print(f"database {DB_NAME}, redis {REDIS_URL}: {n} recipients on {args.domains} domains, every {every}th on "
          f"{THROTTLED} at {args.throttled_rate}/s")
    t_setup = time.time()
    recreate_database()
    import django

    django.setup()
    import redis
    from django.core.management import call_command

    redis_client = redis.Redis.from_url(REDIS_URL)
    redis_client.flushdb()
    call_command("migrate", verbosity=0)
    campaign, baseline = setup_data(n, args.domains, every, args.throttled_rate, args.domain_rate)
    print(f"set-up (migrate, {n} contacts and subscriptions): {time.time() - t_setup:.1f} s")

    alone = None
    if args.baseline:
        alone = run(baseline, n, args, redis_client, "baseline")
        print(f"[baseline] the ordinary domains alone: {alone['counts']['sent']} messages, finished after "
              f"{ordinary_done(alone):.0f} s; {alone['published']} tasks published")
        # The campaign starts on a table as clean as the baseline's: without this, autovacuum clears the
        # baseline's old row versions while the campaign sends, and the comparison charges it for that.
        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("VACUUM (ANALYZE) delivery_send")
    result = run(campaign, n, args, redis_client, "campaign")
    report(result, args)
    if alone is not None:
        took, base = ordinary_done(result), ordinary_done(alone)
        print(f"the ordinary domains beside {THROTTLED}: finished after {took:.0f} s against {base:.0f} s alone "
              f"({100 * (took / max(base, 1) - 1):+.0f} %)")


if __name__ == "__main__":
    main()
