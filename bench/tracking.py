"""Benchmark of Herald's tracking hot paths. Prints figures; asserts nothing.

    .venv/bin/python bench/tracking.py [--workers 3] [--duration 10] [--connections 32]
                                       [--sends 20000] [--dsns 5000] [--stats-sends 1000000]

1. Open pixel and click redirect under concurrent load: gunicorn on loopback
   against a scratch PostgreSQL database (herald_bench_tracking, recreated),
   with `wrk` (Debian package) as the load generator, each request recording
   its Event. Served by tracking.wsgi (the fast path) and, for comparison, by
   herald.wsgi (the same views through Django's whole stack). A request with a
   forged token (404 from Django, no database write) is the baseline of the run.
2. DSNs parsed per second in one process (tracking.bounces.parse over DSNs in
   the formats of Postfix, Exim, Exchange and Gmail, and ARF reports), and
   reports applied per second with their Events and suppressions.
3. The campaign statistics query on a campaign of --stats-sends sends.

Needs PostgreSQL (role herald may create databases) and `wrk` on PATH.
"""

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchlib import free_port
from benchlib import recreate_database as _recreate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "herald_bench_tracking"
BASE_URL = os.environ.get("DATABASE_URL", "postgres://herald:herald@127.0.0.1:5432/herald")
PARTS = urlsplit(BASE_URL)
BENCH_DB_URL = f"{PARTS.scheme}://{PARTS.netloc}/{DB_NAME}"


def recreate_database():
    _recreate(f"{PARTS.scheme}://{PARTS.netloc}", DB_NAME)


def env():
    return {**os.environ, "DATABASE_URL": BENCH_DB_URL, "DEBUG": "false", "LOG_LEVEL": "ERROR",
            "ALLOWED_HOSTS": "127.0.0.1,localhost", "HERALD_BASE_URL": "http://127.0.0.1"}


def setup_django():
    os.environ.update(env())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    import django

    django.setup()


def prepare(sends):
    """A campaign with two links and ``sends`` sent messages, sent an hour ago."""
    from django.db import connection
    from django.utils import timezone

    from campaigns.models import Campaign, CampaignLink

    campaign = Campaign.objects.create(name="Bench", subject="Bench", from_email="news@shop.example", status="finished")
    CampaignLink.objects.create(campaign=campaign, index=0, url="https://shop.example/a")
    CampaignLink.objects.create(campaign=campaign, index=1, url="https://shop.example/b")
    _insert_sends(connection, campaign.pk, sends, timezone.now())
    from delivery.models import Send

    ids = list(Send.objects.filter(campaign=campaign).values_list("id", flat=True))
    return campaign, ids


def _insert_sends(connection, campaign_id, count, now, domains=50):
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO delivery_send (campaign_id, email, domain, status, attempts, sent_at, smtp_reply, message_id,
                                       created_at, updated_at)
            SELECT %s, 'user' || g || '@d' || (g %% %s) || '.example', 'd' || (g %% %s) || '.example',
                   CASE WHEN g %% 50 = 0 THEN 'deferred' WHEN g %% 97 = 0 THEN 'bounced' ELSE 'sent' END,
                   1, %s::timestamptz - interval '1 hour' + (g %% 3600) * interval '1 second', '', '',
                   %s::timestamptz - interval '2 hours', %s::timestamptz
            FROM generate_series(1, %s) AS g
            """,
            [campaign_id, domains, domains, now, now, now, count],
        )


GUNICORN_CONF = """
def when_ready(server):
    # With --preload the master has set Django up; loading the URLconf here too
    # means no worker spends its first seconds importing every app's views.
    from django.urls import get_resolver
    get_resolver().url_patterns
"""


def start_gunicorn(app, port, workers, threads, log_path):
    conf = log_path.parent / "tracking-gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF)
    cmd = [str(ROOT / ".venv/bin/gunicorn"), app, "-c", str(conf), "--preload", "-b", f"127.0.0.1:{port}",
           "-w", str(workers), "-k", "gthread", "--threads", str(threads), "--keep-alive", "30",
           "--log-level", "warning", "--backlog", "2048"]
    # The log goes to a file: a pipe nobody reads would fill and stall the workers.
    log = open(log_path, "ab")
    process = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited: {Path(log_path).read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not start within 30 s")


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1], {["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"})
end
"""


def run_wrk(port, paths, duration, connections, workdir, name):
    path_file = Path(workdir) / f"{name}.txt"
    path_file.write_text("\n".join(paths) + "\n")
    script = Path(workdir) / f"{name}.lua"
    script.write_text(LUA % path_file)
    done = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=duration + 60,
    )
    out = done.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise SystemExit(f"wrk gave no figures:\n{out}\n{done.stderr}")
    rps = float(found.group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0, socket_errors.group(1) if socket_errors else ""


def http_figures(args, ids, workdir):
    from delivery import tokens

    rng = random.Random(5)
    sample = rng.sample(ids, min(len(ids), 20000))
    def forged(i):
        token = tokens.sign("open", i)
        return f"/t/o/{token[:-1]}{'y' if token[-1] == 'x' else 'x'}.gif"

    baseline = ("baseline: forged token, 404 by Django", [forged(i) for i in sample], False)
    pixel = ("open pixel (200 + Event)", [f"/t/o/{tokens.sign('open', i)}.gif" for i in sample], True)
    click = ("click redirect (302 + Event)", [f"/t/c/{tokens.sign('click', i, i % 2)}" for i in sample], True)
    print(f"\n[HTTP] gunicorn {args.workers} workers x {args.threads} threads (gthread), wrk 2 threads, "
          f"{args.connections} connections, {args.duration}s per scenario, loopback")
    runs = [("tracking.wsgi:application", "fast path", [baseline, pixel, click])]
    if not args.fast_only:
        runs.append(("herald.wsgi:application", "the same views through Django's whole stack", [pixel, click]))
    for app, label, scenarios in runs:
        print(f"  {app} ({label})")
        _serve_and_load(args, app, scenarios, workdir)


def _serve_and_load(args, app, scenarios, workdir):
    from tracking.models import Event

    port = free_port()
    log_path = ROOT / "bench" / "out" / "tracking-gunicorn.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = start_gunicorn(app, port, args.workers, args.threads, log_path)
    try:
        # Each worker thread loads URLconfs and opens its database connection on
        # its first requests: warm every kind of request up before measuring.
        warm = [path for _, paths, _ in scenarios for path in paths[:100]]
        run_wrk(port, warm, max(3, args.duration // 2), args.connections, workdir, "warmup")
        time.sleep(1)  # let the warm-up's last requests finish before counting
        for name, paths, expect_ok in scenarios:
            before = Event.objects.count()
            rps, p50, p99, bad, sock = run_wrk(port, paths, args.duration, args.connections, workdir, "run")
            time.sleep(0.5)
            written = Event.objects.count() - before
            note = f"non-2xx/3xx {bad}" if expect_ok else f"{bad} x 404 as expected (no writes)"
            print(f"    {name:38s} {rps:8.0f} responses/s  p50 {p50:>8s}  p99 {p99:>8s}  events written {written:6d}"
                  f"  {note}{'  socket errors ' + sock if sock else ''}")
    finally:
        stop(server)


def dsn_figures(args, ids):
    from delivery import tokens
    from tests.tracking import samples
    from tracking.bounces import parse
    from tracking.feedback import process_message

    rng = random.Random(7)
    builders = [
        lambda v, r, m: samples.postfix(v, r, m),
        lambda v, r, m: samples.exim(v, r, m),
        lambda v, r, m: samples.exchange(v, r, m),
        lambda v, r, m: samples.gmail(v, r, m),
        lambda v, r, m: samples.gmail(v, r, m, action="delayed", status="4.4.1", diagnostic="421 4.4.1 timed out"),
        lambda v, r, m: samples.exim_plain(v, r, m),
        lambda v, r, m: samples.arf(v, r, m),
    ]
    messages = []
    for n in range(args.dsns):
        send_id = rng.choice(ids)
        verp = tokens.verp_address(send_id)
        messages.append((builders[n % len(builders)](verp, f"user{send_id}@d1.example", f"m{send_id}@shop.example"), verp))
    size = sum(len(m) for m, _ in messages) / len(messages)
    start, cpu_start = time.perf_counter(), time.process_time()
    reports = 0
    for raw, verp in messages:
        reports += len(parse(raw, verp))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"\n[DSN] {len(messages)} messages (Postfix, Exim, Exchange, Gmail, delayed, plain-text, ARF; "
          f"{size / 1024:.1f} KiB average), one process")
    print(f"  parsed and classified            {len(messages) / elapsed:9.0f} messages/s   ({reports} reports; "
          f"{len(messages) / cpu:.0f} per CPU-second of this process)")
    subset = messages[: min(len(messages), 2000)]
    start = time.perf_counter()
    for raw, verp in subset:
        process_message(raw, verp)
    elapsed = time.perf_counter() - start
    print(f"  applied (Events + suppressions)  {len(subset) / elapsed:9.0f} messages/s   ({len(subset)} messages)")


def stats_figures(args):
    from django.db import connection
    from django.utils import timezone

    from campaigns.models import Campaign
    from tracking.stats import campaign_stats

    campaign = Campaign.objects.create(name="Big", subject="Big", from_email="news@shop.example", status="finished")
    start = time.perf_counter()
    _insert_sends(connection, campaign.pk, args.stats_sends, timezone.now(), domains=500)
    with connection.cursor() as cursor:
        # A tenth of the recipients open (a third of them twice), a twentieth click.
        cursor.execute(
            """
            INSERT INTO tracking_event (type, send_id, contact_id, campaign_id, email, created_at, machine, url, link_index,
                                        status, diagnostic, user_agent, source, raw, key)
            SELECT t.type, s.id, NULL, s.campaign_id, s.email, s.sent_at + interval '10 minutes', s.id %% 7 = 0,
                   '', CASE WHEN t.type = 'click' THEN 0 END, '', '', '', 'bench', '', NULL
            FROM delivery_send s
            JOIN (VALUES ('open', 10), ('open', 30), ('click', 20)) AS t(type, every) ON s.id %% t.every = 0
            WHERE s.campaign_id = %s
            """,
            [campaign.pk],
        )
        cursor.execute("ANALYZE delivery_send")
        cursor.execute("ANALYZE tracking_event")
    events = campaign.events.count()
    print(f"\n[STATS] campaign of {args.stats_sends} sends and {events} events "
          f"(prepared in {time.perf_counter() - start:.1f}s)")
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        stats = campaign_stats(campaign)
        timings.append(time.perf_counter() - start)
    print(f"  campaign_stats: {min(timings) * 1000:.0f} ms best of 3 ({', '.join(f'{t * 1000:.0f}' for t in timings)} ms); "
          f"{len(stats['domains'])} domains, {len(stats['timeline']['buckets'])} {stats['timeline']['unit']}s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--duration", type=int, default=10, help="seconds per HTTP scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sends", type=int, default=20000)
    parser.add_argument("--dsns", type=int, default=5000)
    parser.add_argument("--stats-sends", type=int, default=1_000_000, help="0 skips the statistics figure")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--fast-only", action="store_true", help="skip the comparison run through herald.wsgi")
    args = parser.parse_args()
    if not args.skip_http and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk), or pass --skip-http")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Herald tracking benchmark: database {DB_NAME} (recreated), {os.cpu_count()} CPUs, load average {load}")
    recreate_database()
    subprocess.run([str(ROOT / ".venv/bin/python"), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env(), check=True)
    setup_django()
    campaign, ids = prepare(args.sends)
    print(f"prepared campaign {campaign.pk} with {len(ids)} sends")
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as workdir:
        if not args.skip_http:
            http_figures(args, ids, workdir)
    dsn_figures(args, ids)
    if args.stats_sends:
        stats_figures(args)


if __name__ == "__main__":
    main()
