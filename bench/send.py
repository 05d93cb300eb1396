"""End-to-end send benchmark: a whole campaign through Celery workers into Postfix's smtp-sink.

    .venv/bin/python bench/send.py [--recipients 100000] [--domains 20] [--workers 1] [--concurrency 2]
    .venv/bin/python bench/send.py --relays 2 [--weights 3,1]   # a relay group of two smtp-sinks

With ``--relays 2`` the campaign goes through a relay group of two relays (each
its own smtp-sink), spread by ``--weights``; it prints the rate and each
relay's share, as its sink counted it and as the ledger recorded it, and skips
the raw ceiling and the naive baseline.

Uses a scratch PostgreSQL database (BENCH_DB, default herald_bench_send, dropped
and re-created) and a Redis db (BENCH_REDIS_URL, default db 14, flushed); starts
and stops its own smtp-sink and workers. Prints, from one run: end-to-end
messages/s (start to the last final row), SMTP connections opened (counted by
smtp-sink), worker peak memory, the raw ceiling of smtp-source into the same
sink (10 KB messages, 16 sessions) and a naive baseline (Django's SMTP backend,
one EmailMessage per recipient, on a sample, extrapolated), with ratios.

CPU per message is summed over Herald's processes while the campaign runs:
the workers (every process of their groups), the PostgreSQL backends serving
the bench database (read from /proc/<pid>/stat as pg_stat_activity names
them), the Redis server (server-wide: on a shared machine it includes other
clients' commands) and the thread that starts the campaign; it is set against
smtp-source's own CPU per message in the same run (getrusage of the child).

The stage breakdown comes from a cProfile of the engine running in this
process over a sample campaign (``--profile-sample`` recipients, sent
batch by batch into the same sink): the share of claim, render, DKIM,
SMTP, write-back and publish in the profiled time, and what that share is of
the workers' measured CPU per message. ``--dkim rsa|ed25519`` signs every
message (the default, none, keeps the figures comparable with earlier runs).
"""

import argparse
import cProfile
import os
import pstats
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import free_port
from benchlib import recreate_database as _recreate

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PG = os.environ.get("BENCH_PG", "postgres://herald:herald@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB", "herald_bench_send")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
VENV_BIN = Path(sys.executable).parent

os.environ["DATABASE_URL"] = f"{PG}/{DB_NAME}"
os.environ["REDIS_URL"] = REDIS_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
sys.path.insert(0, str(ROOT))


def recreate_database():
    _recreate(PG, DB_NAME)


class SmtpSink:
    """Postfix smtp-sink with running counters (-c): sessions and messages, as the sink counts them."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["/usr/sbin/smtp-sink", "-c", "-u", "root", f"127.0.0.1:{self.port}", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.sessions = self.messages = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.2)
        self.base_sessions = self.sessions  # the readiness probe

    def _read(self):
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for line in lines[-1:]:
                m = re.search(rb"sess=(\d+) quit=\d+ mesg=(\d+)", line)
                if m:
                    self.sessions, self.messages = int(m.group(1)), int(m.group(2))

    def snapshot(self):
        time.sleep(0.3)
        return self.sessions, self.messages

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


def raw_ceiling(sink, messages):
    """smtp-source: 16 sessions of 10 KB messages, connections kept open (-d); (messages/s, its CPU s per message)."""
    before = sink.snapshot()[1]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(["/usr/sbin/smtp-source", "-s", "16", "-m", str(messages), "-l", "10240", "-d",
                    "-f", "bench@herald.example", "-t", "sink@example.com", f"127.0.0.1:{sink.port}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    got = sink.snapshot()[1] - before
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return got / elapsed, cpu / max(got, 1)


def naive_baseline(sink, sample):
    """What a naive sender does: render, build an EmailMessage, send it through Django's SMTP backend."""
    from django.core.mail import EmailMultiAlternatives, get_connection
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment()
    subject, html = env.from_string(SUBJECT), env.from_string(HTML)
    t0 = time.monotonic()
    for i in range(sample):
        ctx = {"contact": {"first_name": f"user{i}"}}
        conn = get_connection("django.core.mail.backends.smtp.EmailBackend", host="127.0.0.1", port=sink.port)
        msg = EmailMultiAlternatives(subject.render(ctx), TEXT, "news@herald.example", [f"user{i}@example.com"],
                                     connection=conn)
        msg.attach_alternative(html.render(ctx), "text/html")
        msg.send()
    return sample / (time.monotonic() - t0)


SUBJECT = "Spring news for {{ contact.first_name }}"
TEXT = "Hello {{ contact.first_name }},\n\n" + ("Herald keeps your readers informed. " * 40 + "\n") * 6
HTML = (
    "<html><body><h1>Hello {{ contact.first_name }}</h1>"
    + "".join(f"<p>Paragraph {i}: " + "Herald keeps your readers informed with care and at speed. " * 6
              + f"<a href=\"https://herald.example/articles/{i}\">Read article {i}</a></p>" for i in range(10))
    + "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>"
)


def setup_data(n, domains):
    from django.db import connection

    from campaigns.models import Campaign, MailingList
    from delivery.models import DomainThrottle, Relay

    lst = MailingList.objects.create(name="Bench list")
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, updated_at)
               SELECT 'user' || g || '@domain' || (g %% %s) || '.example', 'user' || g || '@domain' || (g %% %s) || '.example',
                      'User' || g, '', '{}'::jsonb, 'active', now(), now()
               FROM generate_series(1, %s) g""",
            [domains, domains, n],
        )
        cur.execute(
            """INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, created_at, updated_at)
               SELECT id, %s, 'confirmed', now(), now() FROM campaigns_contact""",
            [lst.pk],
        )
    campaign = Campaign.objects.create(name="Bench", subject=SUBJECT, from_email="news@herald.example",
                                       from_name="Herald Bench", html_body=HTML, text_body=TEXT)
    campaign.lists.add(lst)
    DomainThrottle.objects.create(name="default", is_default=True, rate=20000, burst=20000, max_connections=8)
    return campaign, Relay


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class ServerCpu:
    """CPU seconds of the PostgreSQL backends serving the bench database and of the Redis server, from /proc.

    Backends come and go with their connections: each is read while it lives
    (every 0.2 s), so one that closes loses at most its last fraction of a second.
    """

    def __init__(self, redis_client):
        import psycopg

        self.conn = psycopg.connect(f"{PG.replace('postgres://', 'postgresql://', 1)}/{DB_NAME}", autocommit=True)
        self.own = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.redis_pid = int(redis_client.info("server")["process_id"])
        self.backends = {}  # pid -> (CPU at the start, last seen CPU)
        self.redis = [None, None]
        self.started = False
        self.lock = threading.RLock()  # the sampler thread and the main thread share the connection

    def sample(self):
        with self.lock:
            self._sample()

    def _sample(self):
        pids = [r[0] for r in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                                                [DB_NAME, self.own])]
        for pid in pids:
            try:
                now = _cpu_seconds(pid)
            except OSError:
                continue
            # A backend first seen after the start was born during the run, at 0 CPU.
            first = self.backends.get(pid, (0.0 if self.started else now, None))[0]
            self.backends[pid] = (first, now)
        try:
            now = _cpu_seconds(self.redis_pid)
            self.redis = [self.redis[0] if self.redis[0] is not None else now, now]
        except OSError:
            pass

    def reset(self):
        """From now on: what the backends and Redis used before is not counted."""
        with self.lock:
            self._reset()

    def _reset(self):
        self._sample()
        self.backends = {pid: (last, last) for pid, (_first, last) in self.backends.items()}
        self.redis = [self.redis[1], self.redis[1]]
        self.started = True

    def postgres(self):
        return sum(last - first for first, last in self.backends.values())

    def redis_seconds(self):
        return (self.redis[1] - self.redis[0]) if self.redis[0] is not None else 0.0


def server_sampler(server, stop):
    while not stop.is_set():
        try:
            server.sample()
        except Exception:  # noqa: BLE001 - a figure lost, never the run
            pass
        stop.wait(0.2)


def rss_sampler(pgid, stop, peak, cpu):
    """Peak resident memory of any one process of the worker group, and its CPU seconds, from /proc."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.getpgid(int(pid)) != pgid:
                    continue
                with open(f"/proc/{pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            peak[int(pid)] = max(peak.get(int(pid), 0), int(line.split()[1]))
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rpartition(")")[2].split()
                cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / TICKS
            except (OSError, ProcessLookupError, ValueError):
                continue
        stop.wait(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--raw-messages", type=int, default=30_000)
    parser.add_argument("--naive-sample", type=int, default=500)
    parser.add_argument("--relays", type=int, choices=(1, 2), default=1, help="2: a relay group of two smtp-sinks")
    parser.add_argument("--weights", default="1,1", help="the two relays' weights, with --relays 2")
    parser.add_argument("--profile-sample", type=int, default=5000, help="recipients of the profiled sample (0: none)")
    parser.add_argument("--dkim", choices=("none", "rsa", "ed25519"), default="none", help="sign every message")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    print(f"database {DB_NAME}, redis {REDIS_URL}: preparing {args.recipients} recipients across {args.domains} domains")
    recreate_database()
    import django

    django.setup()
    import redis
    from django.core.management import call_command

    redis.Redis.from_url(REDIS_URL).flushdb()
    call_command("migrate", verbosity=0)
    campaign, Relay = setup_data(args.recipients, args.domains)
    if args.dkim != "none":
        from delivery import dkim
        from delivery.models import SendingDomain

        algorithm = dkim.RSA if args.dkim == "rsa" else dkim.ED25519
        private, public = dkim.generate_key(algorithm)
        SendingDomain.objects.create(domain="herald.example", algorithm=algorithm, private_key=private, public_key=public)

    sink = SmtpSink()
    sinks = [sink] + [SmtpSink() for _ in range(args.relays - 1)]
    weights = [int(w) for w in args.weights.split(",")][:args.relays] if args.relays > 1 else [1]
    workers, peak, cpu, stop = [], {}, {}, threading.Event()
    try:
        relays = [Relay.objects.create(name=f"sink{n}" if n else "sink", host="127.0.0.1", port=s.port, security="none",
                                       max_connections=8, messages_per_connection=1000, weight=w)
                  for n, (s, w) in enumerate(zip(sinks, weights, strict=True))]
        if args.relays > 1:
            from delivery.models import RelayGroup, RoutingRule

            group = RelayGroup.objects.create(name="bench pair")
            group.relays.set(relays)
            RoutingRule.objects.create(group=group)
        env = dict(os.environ)
        for i in range(args.workers):
            log = (OUT / f"worker{i}.log").open("wb")
            proc = subprocess.Popen(
                [str(VENV_BIN / "celery"), "-A", "herald", "worker", "-n", f"bench{i}@%h", "-c", str(args.concurrency),
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            workers.append(proc)
        samplers = [threading.Thread(target=rss_sampler, args=(p.pid, stop, peak, cpu), daemon=True) for p in workers]
        for t in samplers:
            t.start()
        time.sleep(4)  # workers boot
        server = ServerCpu(redis.Redis.from_url(REDIS_URL))
        threading.Thread(target=server_sampler, args=(server, stop), daemon=True).start()
        base_sessions = sink.snapshot()[0]
        base_messages = [s.snapshot()[1] for s in sinks]

        from django.db.models import Count

        from campaigns.models import Campaign
        from delivery import lifecycle
        from delivery.models import Send

        server.reset()
        worker_base = dict(cpu)
        t0 = time.time()
        thread0 = time.thread_time()
        lifecycle.start_campaign(campaign.pk)
        start_cpu = time.thread_time() - thread0
        snapshot_done = time.time()
        while True:
            campaign.refresh_from_db()
            if campaign.status != Campaign.Status.SENDING:
                break
            time.sleep(0.5)
        last_final = Send.objects.filter(campaign=campaign).order_by("-updated_at").values_list("updated_at", flat=True)[0]
        elapsed = last_final.timestamp() - t0
        counts = lifecycle.counts(campaign.pk)
        carried = dict(Send.objects.filter(campaign=campaign, status="sent").values("relay__name")
                       .annotate(n=Count("id"))
                       .values_list("relay__name", "n"))
        time.sleep(1)  # one more CPU sample
        server.sample()
        pg_cpu, redis_cpu = server.postgres(), server.redis_seconds()
    finally:
        stop.set()
        for proc in workers:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
    sessions, messages = sink.snapshot()
    connections = sessions - base_sessions
    if args.relays > 1:
        got = [s.snapshot()[1] - base for s, base in zip(sinks, base_messages, strict=True)]
        for s in sinks:
            s.stop()
        rate = counts["sent"] / elapsed
        print()
        print(f"campaign status {campaign.status}: {counts}")
        print(f"end to end                         {elapsed:8.2f} s for {counts['sent']} messages")
        print(f"end-to-end rate                    {rate:8.0f} messages/s over {args.relays} relays")
        total = sum(got) or 1
        for relay, n in zip(relays, got, strict=True):
            print(f"relay {relay.name} (weight {relay.weight})".ljust(35)
                  + f"{n:8d} messages = {n / total:6.1%} (weight share {relay.weight / sum(weights):.1%}; "
                  f"ledger {carried.get(relay.name, 0)})")
        print(f"sinks' total                       {sum(got):8d}   (duplicates: {sum(got) - counts['sent']})")
        return

    raw, raw_cpu = raw_ceiling(sink, args.raw_messages)
    naive = naive_baseline(sink, args.naive_sample)
    stages = profile_stages(args.profile_sample) if args.profile_sample else None
    sink.stop()

    rate = counts["sent"] / elapsed
    peak_mb = max(peak.values()) / 1024 if peak else 0
    print()
    print(f"campaign status {campaign.status}: {counts}")
    print(f"snapshot (INSERT ... SELECT)       {snapshot_done - t0:8.2f} s")
    print(f"end to end                         {elapsed:8.2f} s for {counts['sent']} messages")
    print(f"end-to-end rate                    {rate:8.0f} messages/s   (target >= 2000)")
    print(f"SMTP connections opened (sink)     {connections:8d}   = 1 per {counts['sent'] / max(connections, 1):.0f} messages"
          "   (target <= 1 per 100)")
    print(f"worker peak memory (largest proc)  {peak_mb:8.1f} MB   (target < 250 MB)")
    sent = max(counts["sent"], 1)
    worker_cpu = sum(v - worker_base.get(pid, 0.0) for pid, v in cpu.items())
    per = {"workers": worker_cpu, "PostgreSQL backends": pg_cpu, "Redis server (shared)": redis_cpu,
           "start (snapshot, enqueue)": start_cpu}
    herald_cpu = sum(per.values())
    print(f"start: snapshot + enqueue          {args.recipients / (snapshot_done - t0):8.0f} recipients/s"
          "   (target >= 250000)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, seconds in per.items():
        print(f"  CPU {name:<30}{seconds:8.1f} s = {seconds / sent * 1e6:6.0f} µs per message")
    print(f"Herald CPU, all processes          {herald_cpu / sent * 1e6:8.0f} µs per message")
    print(f"smtp-source CPU, same run          {raw_cpu * 1e6:8.0f} µs per message")
    print(f"  ratio Herald / smtp-source       {herald_cpu / sent / max(raw_cpu, 1e-9):8.1f} x   (target <= 3x)")
    print(f"raw ceiling, smtp-source 16x10KB   {raw:8.0f} messages/s   -> Herald at {rate / raw:.0%} of it"
          f"   (target >= 40%{', and >= 5000/s' if raw > 12500 else ''})")
    print(f"naive baseline (Django backend)    {naive:8.0f} messages/s   -> Herald {rate / naive:.1f}x faster; "
          f"{args.recipients} recipients would take {args.recipients / naive:.0f} s naively")
    if stages:
        profiled, n, parts = stages
        print(f"stages, from a profile of the engine in one process ({n} messages, {profiled / n * 1e6:.0f} µs each"
              " of CPU under the profiler); share, and that share of the workers' measured CPU per message:")
        for name, seconds in parts.items():
            share = seconds / profiled
            print(f"  {name:<32} {share:6.1%}   ~{share * worker_cpu / sent * 1e6:6.0f} µs per message")


# Where each stage's time is read in the profile: (module file, function) whose cumulative time it is,
# less the stages called inside it.
_STAGE_FUNCTIONS = {
    "claim": [("delivery/ledger.py", "claim")],
    "DKIM": [("delivery/dkim.py", "sign")],
    "send_many": [("delivery/smtp.py", "send_many")],
    "pulled": [("delivery/engine.py", "__next__")],
    "write-back": [("delivery/ledger.py", "write_back"), ("delivery/ledger.py", "settle_campaigns")],
    "publish": [("delivery/dispatch.py", "_publish")],
    "snapshot": [("delivery/planner.py", "snapshot_range")],
    "send_batch": [("delivery/engine.py", "send_batch")],
    "start": [("delivery/lifecycle.py", "start_campaign")],
}


def profile_stages(n):
    """Send a sample campaign of ``n`` recipients with the engine in this process under cProfile.

    Returns (profiled seconds, messages, {stage: seconds}).
    """
    from django.db import connection

    from campaigns.models import Campaign, MailingList
    from delivery import engine, lifecycle, planner, routing
    from delivery.models import Send

    lst = MailingList.objects.create(name="Profile sample")
    with connection.cursor() as cur:
        cur.execute("""INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, created_at, updated_at)
                       SELECT id, %s, 'confirmed', now(), now() FROM campaigns_contact ORDER BY id LIMIT %s""",
                    [lst.pk, n])
    sample = Campaign.objects.create(name="Profile", subject=SUBJECT, from_email="news@herald.example",
                                     from_name="Herald Bench", html_body=HTML, text_body=TEXT)
    sample.lists.add(lst)
    profiler = cProfile.Profile(time.thread_time)  # CPU of this thread, not time spent waiting
    profiler.enable()
    lifecycle.start_campaign(sample.pk)  # its batches go on the broker too; no worker is left to take them
    for _round in range(20):
        rows = list(Send.objects.filter(campaign=sample, status="queued").order_by("domain", "id")
                    .values_list("id", "domain"))
        if not rows:
            break
        for _group, ids in planner.batches(rows, routing.group_of):
            engine.send_batch(ids)
    profiler.disable()
    profiler.dump_stats(OUT / "send.pstats")  # python -m pstats bench/out/send.pstats
    sent = Send.objects.filter(campaign=sample, status="sent").count()
    stats = pstats.Stats(profiler).stats
    cum = {}
    for stage, functions in _STAGE_FUNCTIONS.items():
        cum[stage] = sum(ct for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items()
                         if any(path.endswith(p) and name == f for p, f in functions))
    parts = {
        "claim": cum["claim"],
        "render (building less DKIM)": cum["pulled"] - cum["DKIM"],
        "DKIM": cum["DKIM"],
        "SMTP (less building)": cum["send_many"] - cum["pulled"],
        "write-back and settle": cum["write-back"],
        "publish (enqueue batches)": cum["publish"],
        "snapshot": cum["snapshot"],
    }
    total = cum["start"] + cum["send_batch"]
    parts["other"] = total - sum(parts.values())
    return total, sent, parts


if __name__ == "__main__":
    main()
