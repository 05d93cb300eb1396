"""Herald's demo, end to end on one machine: python scripts/demo_campaign.py [--contacts N] [--no-serve] [--keep]

Starts what a real installation runs (a Celery worker and beat, the bounce
server, the web server, a Redis of its own on a private port), plus an SMTP
sink that imitates several recipient domains (scripts/demo_sink.py); imports a
generated CSV of contacts, makes a test send, sends a campaign to them with a
progress bar, plays the recipients opening, clicking and unsubscribing over
HTTP (scripts/demo_engagement.py), prints a summary, then serves the admin at
http://127.0.0.1:8000/admin/ until Ctrl-C, which stops every process it
started and exits 0. ``--no-serve`` (or HERALD_DEMO_SERVE=0) stops after the
summary.

Every run starts from a fresh state, so two runs print the same summary:
the scratch directory's database, logs and inbox are removed first, and a
PostgreSQL database the demo created earlier is created anew. ``--keep``
reuses them instead.

It runs on Herald's embedded defaults: without DATABASE_URL the database is a
SQLite file in the scratch directory (var/demo/herald.sqlite3). With
DATABASE_URL=postgres://… it uses that PostgreSQL database: one the demo
creates, or an empty one. With REDIS_URL it uses that Redis database (empty,
or the demo's own from an earlier run) instead of starting one.
"""

import argparse
import contextlib
import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import demo_engagement
from demo_sink import DomainSink, Inbox

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CELERY = str(Path(PYTHON).with_name("celery"))
GUNICORN = str(Path(PYTHON).with_name("gunicorn"))

# The imitated recipient domains: share of the contacts (in twentieths), the
# throttle Herald is given for each, and how the sink behaves for them.
DOMAINS = {
    "example.com": {"share": 8, "rate": 150, "behaviour": "fast"},
    "mail.example.co": {"share": 4, "rate": 100, "behaviour": "fast"},
    "slow.example.net": {"share": 2, "rate": 40, "behaviour": "slow: 50 ms before each DATA reply"},
    "defer.example.org": {"share": 3, "rate": 60, "behaviour": "defers each recipient's first attempt (451)"},
    "reject.example.io": {"share": 3, "rate": 60, "behaviour": "rejects unknown users (550), bounces a few later (DSN)"},
}
# Where the demo's test send goes: an address no contact has, kept in the inbox.
TEST_ADDRESS = "you@example.com"
# What a fresh run removes from the scratch directory (never anything else in it).
SCRATCH = ["herald.sqlite3", "herald.sqlite3-wal", "herald.sqlite3-shm", "logs", "inbox", "contacts.csv",
           "summary.json"]
# Marks a PostgreSQL database, or a Redis database, as the demo's own: a fresh run may empty it.
DEMO_MARK = "scratch database of Herald's demo"
REDIS_MARK_KEY = "herald-demo:scratch"
PROGRESS_WINDOW = 5.0


def log(message):
    print(message, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not happen within {timeout:.0f}s")


def port_answers(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def shown(path):
    """A path as the reader types it: relative to the repository when inside it."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


# --- processes -------------------------------------------------------------------

class _Interrupts:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, except while held: then once the hold ends."""

    held = False
    pending = False

    @classmethod
    def handler(cls, signum, frame):
        if cls.held:
            cls.pending = True
        else:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_held():
    _Interrupts.held = True
    try:
        yield
    finally:
        _Interrupts.held = False
        if _Interrupts.pending:
            _Interrupts.pending = False
            raise KeyboardInterrupt


class Processes:
    """Every process the demo starts, each in its own process group, stopped on exit."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started = []

    def start(self, name, argv, env):
        out = (self.log_dir / f"{name}.log").open("wb")
        # Ctrl-C between the fork and the bookkeeping would leave a process nobody
        # stops: the interrupt waits until the process is on the list.
        with interrupts_held():
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.started.append((name, proc))
        return proc

    def check_alive(self):
        for name, proc in self.started:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"demo: {name} exited with {proc.returncode}:\n{tail}")

    def stop_all(self):
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for _name, proc in reversed(self.started):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Whatever is left of the group (a pool child that outlived its parent, say) goes too.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(5)

    def pids(self):
        return {name: proc.pid for name, proc in self.started}


# --- a fresh state -------------------------------------------------------------------

def clear_scratch(var_dir):
    """Remove what an earlier run left in the scratch directory (only the demo's own files)."""
    for name in SCRATCH:
        path = var_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def redis_answers(url):
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def ensure_redis(processes, env, keep):
    """The REDIS_URL given (emptied unless --keep, when it is empty or the demo's), else a private Redis."""
    url = env.get("REDIS_URL")
    if url:
        if not redis_answers(url):
            raise SystemExit(f"demo: REDIS_URL={url} does not answer")
        if not keep:
            empty_redis(url)
        log(f"Redis: using {url}")
        return url
    port = free_port()
    try:
        processes.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(processes.log_dir)], env)
    except FileNotFoundError:
        raise SystemExit("demo: redis-server is not installed (apt-get install redis-server), and REDIS_URL is not set")
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_answers(url), 15, f"Redis on port {port}")
    log(f"Redis: started a private one on 127.0.0.1:{port}")
    return url


def empty_redis(url):
    import redis

    client = redis.Redis.from_url(url)
    try:
        if client.dbsize() and not client.exists(REDIS_MARK_KEY):
            raise SystemExit(f"demo: REDIS_URL={url} holds data the demo did not write, and a run starts from an "
                             "empty Redis: unset REDIS_URL (the demo then starts its own), name an empty database, "
                             "or pass --keep")
        client.flushdb()
        client.set(REDIS_MARK_KEY, DEMO_MARK)
    finally:
        client.close()


def ensure_database(url, keep):
    """Nothing to do for SQLite (settings create the file); a PostgreSQL database is created, or created anew."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return
    if not parts.scheme.startswith("postgres"):
        raise SystemExit(f"demo: DATABASE_URL={url} — the demo runs on SQLite (unset it) or PostgreSQL")
    import psycopg
    from psycopg import sql

    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                               [name]).fetchone()
            if row is not None and keep:
                return
            database = sql.Identifier(name)
            if row is not None and row[0] != DEMO_MARK:
                if _has_tables(url):
                    raise SystemExit(f"demo: DATABASE_URL names database {name}, which the demo did not create and "
                                     "which holds tables; a run starts from an empty database: name a new one, "
                                     "or pass --keep")
            elif row is not None:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(database))
                row = None
            if row is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
                log(f"PostgreSQL: created database {name}")
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(database, sql.Literal(DEMO_MARK)))
    except psycopg.OperationalError as exc:
        raise SystemExit(f"demo: PostgreSQL at {parts.hostname}:{parts.port or 5432} cannot be used: {exc}")


def _has_tables(url):
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]


# --- the demo's data ---------------------------------------------------------------

def domain_slots():
    return [domain for domain, spec in DOMAINS.items() for _ in range(spec["share"])]


def write_contacts(path, count):
    """A CSV of ``count`` contacts spread over the imitated domains."""
    slots = domain_slots()
    first_names = ["Ada", "Bo", "Chloé", "Dmitri", "Eun-ji", "Femi", "Greta", "Hiro", "Inés", "Jamal"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "first_name", "last_name", "city"])
        seen = dict.fromkeys(DOMAINS, 0)
        for i in range(count):
            domain = slots[i % len(slots)]
            seen[domain] += 1
            local = f"reader{i:05d}"
            # One in ten of the rejecting domain's users is unknown, one in ten has moved away.
            if domain == "reject.example.io" and seen[domain] % 10 == 3:
                local = f"gone{i:05d}"
            elif domain == "reject.example.io" and seen[domain] % 10 == 7:
                local = f"moved{i:05d}"
            writer.writerow([f"{local}@{domain}", first_names[i % len(first_names)], f"Demo{i}", "Lisbon"])


def inbox_addresses():
    """The first contact of each imitated domain: their messages are kept in the inbox."""
    slots = domain_slots()
    return [f"reader{slots.index(domain):05d}@{domain}" for domain in DOMAINS]


def set_up_engine(sink_port):
    from delivery.models import DomainThrottle, Period, Relay

    Relay.objects.update_or_create(name="demo sink", defaults={
        "host": "127.0.0.1", "port": sink_port, "security": Relay.Security.NONE, "max_connections": 16,
        "rate": 0, "enabled": True, "idle_timeout": 10,
    })
    for domain, spec in DOMAINS.items():
        DomainThrottle.objects.update_or_create(name=f"demo {domain}", defaults={
            "domains": domain, "rate": spec["rate"], "period": Period.SECOND, "burst": max(1, spec["rate"] // 5),
            "max_connections": 4,
        })


def create_campaign(list_name):
    from campaigns.models import Campaign, MailingList, Template

    layout, _ = Template.objects.get_or_create(name="Demo layout", defaults={
        "html": "<html><body style='font-family:sans-serif'>{{ content }}"
                "<p style='color:#888'>You get this because you joined the demo list. "
                "<a href='{{ unsubscribe_url }}'>Unsubscribe</a> · "
                "<a href='{{ view_in_browser_url }}'>View in your browser</a></p></body></html>",
    })
    campaign = Campaign.objects.create(
        name=f"Demo campaign {time.strftime('%Y-%m-%d %H:%M:%S')}",
        subject="Hello {{ contact.first_name }}, the spring news is here",
        from_name="Herald Demo", from_email="news@demo.herald.localhost", template=layout,
        html_body="<h1>Spring news</h1><p>Hi {{ contact.first_name }}, here is what is new in "
                  "{{ contact.attributes.city | default('your city') }}.</p>"
                  "<p><a href='https://herald.example/spring'>Read the whole story</a></p>"
                  "<p><a href='https://herald.example/spring/events'>See the spring events</a></p>",
    )
    campaign.lists.add(MailingList.objects.get(name=list_name))
    return campaign


def seed_suppressions(count):
    """A few addresses that unsubscribed or complained earlier: the snapshot must skip them."""
    from campaigns.models import Suppression
    from campaigns.suppression import suppress

    for i in range(count):
        reason = Suppression.Reason.UNSUBSCRIBE if i % 2 else Suppression.Reason.COMPLAINT
        suppress(f"reader{i * 20 + 2:05d}@example.com", reason, "seeded by the demo")


def test_send(campaign):
    """What an author does before sending: the real message to their own address (it lands in the inbox)."""
    from delivery.testsend import send_test

    for result in send_test(campaign, [TEST_ADDRESS]):
        log(f"Test send to {result.address}: {result.detail}")


# --- progress ------------------------------------------------------------------------

class Progress:
    """The progress line: final outcomes of the recipients, what is still deferred, the rate of the last seconds."""

    def __init__(self, window=PROGRESS_WINDOW):
        self.window = window
        self.samples = deque()  # (monotonic time, sent)

    def line(self, counts, now):
        final = counts["sent"] + counts["bounced"] + counts["failed"] + counts["cancelled"]
        total = counts["total"]
        pending = total - final
        # Rounded down, so it reads 100 % only when every recipient has its outcome.
        share = (int(final * 1000 / total) / 1000 if pending else 1.0) if total else 0.0
        width = 32
        bar = "█" * int(share * width) + "░" * (width - int(share * width))
        return (f"[{bar}] {share:6.1%} done ({counts['deferred']} deferred)  sent {counts['sent']}  "
                f"bounced {counts['bounced']}  queued {counts['queued'] + counts['sending']}  {self.rate(counts, now)}")

    def rate(self, counts, now):
        """Messages sent per second over the last ``window`` seconds; blank until a second has passed."""
        self.samples.append((now, counts["sent"]))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        then, sent_then = self.samples[0]
        if now - then < 1.0:
            return ""
        return f"{(counts['sent'] - sent_then) / (now - then):.0f}/s (last {min(now - then, self.window):.0f} s)"


def watch(campaign_id, processes, timeout):
    from django.db import close_old_connections

    from campaigns.models import Campaign
    from delivery import lifecycle

    tty = sys.stdout.isatty()
    progress = Progress()
    started = time.monotonic()
    last_print = 0.0
    while True:
        close_old_connections()
        data = lifecycle.progress(campaign_id)
        counts = data["counts"]
        line = progress.line(counts, time.monotonic())
        if tty:
            print("\r" + line + "\x1b[K", end="", flush=True)
        elif time.monotonic() - last_print >= 5:
            log(line)
            last_print = time.monotonic()
        if data["status"] in (Campaign.Status.FINISHED, Campaign.Status.CANCELLED):
            print("\r" + line + "\x1b[K" if tty else line, flush=True)
            return data
        if data["status"] == Campaign.Status.PAUSED:
            raise SystemExit(f"\ndemo: the campaign paused: {data['status_reason']}")
        if time.monotonic() - started > timeout:
            raise SystemExit(f"\ndemo: the campaign did not finish within {timeout:.0f}s: {counts}")
        processes.check_alive()
        time.sleep(0.5)


# --- engagement ----------------------------------------------------------------------

class Recipients:
    """The recipients the demo plays, once the campaign has finished.

    A fetch within seconds of the send is a prefetch, not a person
    (tracking.machine): a recipient is played only once the ledger shows their
    message sent longer ago than that, so every run classifies the same way.
    (Playing them while the campaign sends would also make the web server and
    the worker queue for SQLite's single writer.)
    """

    def __init__(self, campaign_id, sink):
        self.campaign_id = campaign_id
        self.sink = sink
        self.audience = demo_engagement.Audience()

    def feed(self):
        """Start every recipient whose message is old enough; how many still wait."""
        from datetime import timedelta

        from django.utils import timezone

        from delivery.models import Send
        from tracking.machine import SECONDS_AFTER_SENT

        received = self.sink.messages_for_played()
        waiting = sorted(set(received) - self.audience.submitted)
        cutoff = timezone.now() - timedelta(seconds=SECONDS_AFTER_SENT + 1)
        for chunk in range(0, len(waiting), 500):
            ready = Send.objects.filter(campaign_id=self.campaign_id, email__in=waiting[chunk:chunk + 500],
                                        status=Send.Status.SENT, sent_at__lte=cutoff).values_list("email", flat=True)
            self.audience.play({email: received[email] for email in ready})
        return len(received) - len(self.audience.submitted)

    def play(self):
        """Play them all, with a progress line; what they did, as a dict."""
        log(f"Playing the recipients among the first {demo_engagement.PLAYED_CONTACTS} contacts: opening, "
            "clicking and unsubscribing over HTTP…")
        tty = sys.stdout.isatty()
        t0 = time.monotonic()
        last_print = 0.0
        while True:
            waiting = self.feed()
            done, total = self.audience.done(), len(self.audience.submitted)
            line = f"  played {done} of {total + waiting} recipients"
            if tty:
                print("\r" + line + "\x1b[K", end="", flush=True)
            elif time.monotonic() - last_print >= 5:
                log(line)
                last_print = time.monotonic()
            if not waiting and done == total:
                break
            if waiting and done == total and time.monotonic() - t0 > demo_engagement.TIME_LIMIT:
                break  # messages whose send never shows as sent (a duplicate on the wire, say)
            time.sleep(0.5)
        if tty:
            print(flush=True)
        played = self.audience.result()
        played.not_played += waiting
        result = played.as_dict()
        result["recipients"] = len(self.audience.submitted)
        result["seconds"] = round(time.monotonic() - t0, 1)
        for error in played.errors[:5]:
            log(f"  did not play: {error}")
        return result

    def close(self):
        self.audience.close()


# --- summary -------------------------------------------------------------------------

def campaign_figures(campaign):
    """The campaign's figures, from the one function behind the statistics page, the API and the dashboard."""
    from django.db.models import Count

    from delivery.models import Send
    from tracking.models import Event
    from tracking.stats import campaign_stats

    stats = campaign_stats(campaign)
    outcome = {key: line["count"] for key, line in stats["outcomes"].items()}
    engagement = stats["engagement"]
    sends = Send.objects.filter(campaign=campaign)
    unsubscribes = dict(Event.objects.filter(campaign=campaign, type=Event.Type.UNSUBSCRIBE)
                        .values_list("source").annotate(n=Count("send", distinct=True)))
    return {
        "recipients": stats["recipients"],
        # The partition, as the page shows it: every recipient once, by where it stands now.
        "outcomes": {key: line for key, line in stats["outcomes"].items()
                     if line["count"] or key in ("delivered", "bounced_after_delivery", "bounced")},
        "sent": outcome["delivered"] + outcome["bounced_after_delivery"],  # accepted with a 250
        "delivered": outcome["delivered"],
        "deferred": outcome["deferred"],
        "failed": outcome["failed"],
        "failed_reply": (sends.filter(status=Send.Status.FAILED).values("smtp_reply").annotate(n=Count("id"))
                         .order_by("-n").values_list("smtp_reply", flat=True).first() or ""),
        "bounced": outcome["bounced"],
        "late_bounces": outcome["bounced_after_delivery"],
        "deferred_at_least_once": stats["deferred_at_least_once"]["count"],
        "deferred_then_delivered": sends.filter(status=Send.Status.SENT, attempts__gt=1).count(),
        "human_opens": engagement["human_opens"]["count"],
        "human_open_rate": engagement["human_opens"]["rate"],
        "machine_opens": engagement["machine_opens"]["count"],
        "pixel_fetches": stats["totals"]["opens"],
        "clicked": engagement["unique_clicks"]["count"],
        "click_rate": engagement["unique_clicks"]["rate"],
        "complaints": engagement["complaints"]["count"],
        "unsubscribes": engagement["unsubscribes"]["count"],
        "one_click_unsubscribes": unsubscribes.get("one-click", 0),
        "page_unsubscribes": unsubscribes.get("page", 0),
    }


def wait_for_late_bounces(campaign_id, sink):
    """The sink sends its DSNs a moment after delivery; the bounce server records each."""
    from tracking.models import Event

    deadline = time.monotonic() + 30
    while len(sink.dsn_sent) < sink.dsn_due and time.monotonic() < deadline:
        time.sleep(0.1)
    moved = len(sink.dsn_sent)
    while moved and time.monotonic() < deadline and Event.objects.filter(
            campaign_id=campaign_id, type=Event.Type.BOUNCE, source="bounce-server").count() < moved:
        time.sleep(0.2)


def summarise(campaign_id, sink, contacts, played, inbox):
    from django.db.models import Max, Sum

    from campaigns.models import Campaign, Suppression
    from delivery.models import DomainThrottle, Send

    campaign = Campaign.objects.get(pk=campaign_id)
    figures = campaign_figures(campaign)
    sends = Send.objects.filter(campaign_id=campaign_id)
    last = sends.filter(status=Send.Status.SENT).aggregate(last=Max("sent_at"))["last"]
    seconds = (last - campaign.started_at).total_seconds() if last else 0.0
    throttles = {t.domain_list()[0]: t for t in DomainThrottle.objects.filter(name__startswith="demo ")}
    attempts = dict(sends.values_list("domain").annotate(n=Sum("attempts")))
    slowest = max(DOMAINS, key=lambda d: (attempts.get(d) or 0) / throttles[d].rate)
    peaks = sink.peak_rates()
    domains = {}
    for domain, spec in DOMAINS.items():
        throttle = throttles[domain]
        domains[domain] = {"peak": peaks.get(domain, 0), "limit": throttle.rate, "burst": throttle.burst,
                           "ceiling": throttle.rate + throttle.burst, "behaviour": spec["behaviour"]}
        domains[domain]["within"] = domains[domain]["peak"] <= domains[domain]["ceiling"]
    return {
        "campaign": campaign_id,
        "status": campaign.status,
        "contacts": contacts,
        "suppressed_before": contacts - figures["recipients"],
        **figures,
        "suppressed_now": Suppression.objects.filter(email_key__in=sends.values("email")).count(),
        "played": played,
        "seconds": round(seconds, 1),
        "per_second": round(figures["sent"] / seconds, 1) if seconds else 0.0,
        "limits_add_up_to": sum(throttle.rate for throttle in throttles.values()),
        "slowest_domain": {"domain": slowest, "attempts": attempts.get(slowest) or 0, "limit": throttles[slowest].rate,
                           "seconds": round((attempts.get(slowest) or 0) / throttles[slowest].rate)},
        "domains": domains,
        "inbox": [{"to": rcpt, "eml": str(eml), "txt": str(txt)} for rcpt, eml, txt in inbox.in_order()],
    }


def _share(rate):
    return f"{rate:.1%} of delivered"


def print_summary(s):
    played = s["played"]
    log("")
    log("Summary")
    log(f"  contacts imported            {s['contacts']}")
    log(f"  suppressed before sending    {s['suppressed_before']}  (earlier unsubscribes and complaints)")
    log(f"  recipients                   {s['recipients']}")
    log("  outcomes, as the statistics page shows them (each recipient once; they add up to 100 %):")
    for line in s["outcomes"].values():
        log(f"    {line['label'] + ' ':.<26} {line['count']:6}  {line['rate']:7.2%}")
    if s["failed"]:
        log(f"    (failed, most often: {s['failed_reply'][:70]})")
    log(f"  deferred at least once       {s['deferred_at_least_once']}  ({s['deferred_then_delivered']} were 451 first, "
        f"then delivered on retry)")
    log(f"  bounced                      {s['bounced']} with 550 at RCPT (suppressed at once), {s['late_bounces']} "
        f"after delivery (DSN through the bounce server)")
    log(f"  suppressed after this send   {s['suppressed_now']}  (bounces, and unsubscribes from everything)")
    log(f"  opened                       {s['human_opens']} people ({_share(s['human_open_rate'])}), "
        f"{s['machine_opens']} more by mail privacy proxies  ({s['pixel_fetches']} fetches of the pixel)")
    log(f"  clicked                      {s['clicked']} people ({_share(s['click_rate'])})")
    log(f"  unsubscribed                 {s['unsubscribes']}  ({s['one_click_unsubscribes']} one-click from the "
        f"mail client, {s['page_unsubscribes']} on the page)")
    log(f"    as {played['recipients']} recipients among the first {demo_engagement.PLAYED_CONTACTS} contacts did "
        f"over HTTP: {played['requests']} requests to the web server in {played['seconds']} s")
    if played["not_played"] or played["error_count"]:
        log(f"    ({played['not_played']} left out at the time limit, {played['error_count']} stopped by an error)")
    log(f"  messages per second          {s['per_second']}  ({s['sent']} in {s['seconds']} s, retries included)")
    slowest = s["slowest_domain"]
    log(f"    not thousands: the demo's {len(s['domains'])} domain limits add up to {s['limits_add_up_to']}/s, and "
        f"{slowest['domain']} alone takes {slowest['seconds']} s ({slowest['attempts']} attempts at {slowest['limit']}/s)")
    log("  busiest second per domain (limit N/s with a burst of B: at most N+B in any one second):")
    for domain, d in s["domains"].items():
        verdict = "within" if d["within"] else "OVER"
        log(f"    {domain:20} {d['peak']:4}   limit {d['limit']}/s with a burst of {d['burst']}: "
            f"at most {d['ceiling']}, {verdict}   {d['behaviour']}")
    log("  inbox: what a recipient gets (.eml for a mail client, .txt with every part decoded):")
    for message in s["inbox"]:
        log(f"    {shown(message['txt'])}")


# --- main ---------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description="Run Herald's demo campaign end to end.")
    parser.add_argument("--contacts", type=int, default=10_000, help="contacts to generate and import (default 10000)")
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "demo"), help="scratch directory (default var/demo)")
    parser.add_argument("--no-serve", action="store_true", help="stop after the summary (also HERALD_DEMO_SERVE=0)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the database, Redis and files of an earlier run instead of starting afresh")
    parser.add_argument("--port", type=int, default=None,
                        help="port of the web server and admin (default 8000, or a free one when 8000 is taken)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the campaign may take (default 900)")
    args = parser.parse_args()
    if args.contacts < 20:
        parser.error("--contacts must be at least 20")
    if os.environ.get("HERALD_DEMO_SERVE", "1").strip().lower() in ("0", "false", "no", "off"):
        args.no_serve = True
    if args.port is None:
        args.port = 8000 if not port_answers("127.0.0.1", 8000) else free_port()
    return args


def demo_secret_key(var_dir):
    """The demo's SECRET_KEY, shared by every process it starts and kept for the next run of the demo."""
    path = var_dir / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def main():
    args = parse_args()
    var_dir = Path(args.var_dir).resolve()
    if not args.keep:
        clear_scratch(var_dir)
    log_dir = var_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "HERALD_VAR_DIR": str(var_dir),
        "HERALD_BASE_URL": f"http://127.0.0.1:{args.port}",
        # Deferred recipients come back within seconds, not the production five minutes.
        "HERALD_RETRY_FIRST_DELAY": "3",
        "HERALD_RETRY_MAX_DELAY": "30",
        "PYTHONUNBUFFERED": "1",
        # Herald does not start without one (unless DEBUG is on).
        "SECRET_KEY": os.environ.get("SECRET_KEY") or demo_secret_key(var_dir),
    })
    processes = Processes(log_dir)

    signal.signal(signal.SIGTERM, _Interrupts.handler)
    signal.signal(signal.SIGINT, _Interrupts.handler)
    try:
        env["REDIS_URL"] = ensure_redis(processes, env, args.keep)
        ensure_database(env.get("DATABASE_URL"), args.keep)
        os.environ.update(env)
        return run(args, env, processes, var_dir, log_dir)
    except KeyboardInterrupt:
        # Ctrl-C is how the demo is meant to end: stop everything, and exit 0.
        log("\nStopping…")
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes.stop_all()
        log(f"Stopped {len(processes.started)} process(es) the demo started.")


def run(args, env, processes, var_dir, log_dir):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    os.environ["LOG_LEVEL"] = os.environ.get("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    log("Migrating the database…")
    call_command("migrate", verbosity=0, interactive=False)
    call_command("collectstatic", interactive=False, verbosity=0)

    bounce_port = free_port()
    processes.start("bounce-server", [PYTHON, "manage.py", "run_bounce_server", "--port", str(bounce_port)], env)
    processes.start("worker", [CELERY, "-A", "herald", "worker", "-n", f"demo-{os.getpid()}@%h", "-c", "2",
                               "--without-gossip", "--without-mingle", "-l", "info"], env)
    processes.start("beat", [CELERY, "-A", "herald", "beat", "-l", "info", "--pidfile", str(log_dir / "beat.pid"),
                             "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"], env)
    processes.start("web", [GUNICORN, "herald.wsgi:application", "--bind", f"127.0.0.1:{args.port}", "--workers", "2",
                            "--threads", "4", "--access-logfile", "-"], env)
    inbox = Inbox(var_dir / "inbox", [TEST_ADDRESS, *inbox_addresses()])
    sink = DomainSink(free_port(), bounce_port, inbox, demo_engagement.plays)
    sink.controller.start()
    try:
        set_up_engine(sink.port)
        wait_for(lambda: port_answers("127.0.0.1", bounce_port), 30, "the bounce server listening")
        wait_for(lambda: port_answers("127.0.0.1", args.port), 30, f"the web server on port {args.port}")
        wait_for(lambda: b" ready." in (log_dir / "worker.log").read_bytes(), 60, "the Celery worker ready")
        log(f"Started: web server :{args.port}, bounce server :{bounce_port}, Celery worker and beat, "
            f"SMTP sink :{sink.port} imitating " + ", ".join(DOMAINS))

        csv_path = var_dir / "contacts.csv"
        write_contacts(csv_path, args.contacts)
        list_name = f"Demo readers {time.strftime('%Y-%m-%d %H:%M:%S')}"
        log(f"Importing {args.contacts} contacts from {shown(csv_path)}…")
        t0 = time.monotonic()
        call_command("import_contacts", str(csv_path), "--list", list_name)
        log(f"  imported in {time.monotonic() - t0:.1f} s")
        seed_suppressions(max(1, args.contacts // 400))

        from delivery import lifecycle

        campaign = create_campaign(list_name)
        test_send(campaign)
        log(f"Sending “{campaign.name}”…")
        # As Send now in the admin does: the worker snapshots the audience, then sends.
        lifecycle.start_in_background(campaign.pk)
        watch(campaign.pk, processes, args.timeout)
        wait_for_late_bounces(campaign.pk, sink)
        recipients = Recipients(campaign.pk, sink)
        try:
            played = recipients.play()
        finally:
            recipients.close()
        summary = summarise(campaign.pk, sink, args.contacts, played, inbox)
        summary["pids"] = processes.pids()
        print_summary(summary)
        (var_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if args.no_serve:
            return 0
        serve(args, campaign, processes, inbox)
        return 0
    finally:
        sink.controller.stop()


def serve(args, campaign, processes, inbox):
    from django.contrib.auth.models import User
    from django.urls import reverse

    password = secrets.token_urlsafe(12)
    user, _ = User.objects.get_or_create(username="admin", defaults={"email": "admin@herald.localhost"})
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    base = f"http://127.0.0.1:{args.port}"
    log("")
    log(f"Admin: {base}/admin/   user admin   password {password}")
    log(f"Statistics of this campaign: {base}{reverse('admin:tracking_campaignstatistics_change', args=[campaign.pk])}")
    log(f"Test sends from the admin go to the sink; each is kept in {shown(inbox.directory)}/.")
    log("Ctrl-C stops the web server, the worker, beat, the bounce server and the sink.")
    seen = len(inbox.messages())
    while True:
        processes.check_alive()
        messages = inbox.messages()
        for rcpt, _eml, txt in messages[seen:]:
            log(f"Inbox: a message for {rcpt}: {shown(txt)}")
        seen = len(messages)
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
