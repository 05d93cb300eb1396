"""Herald's demo, end to end on one machine: python scripts/demo_campaign.py [--contacts N] [--no-serve]

Starts what a real installation runs (a Celery worker and beat, the bounce
server, Redis on a private port when none answers), plus an SMTP sink that
imitates several recipient domains; imports a generated CSV of contacts, sends
a campaign to them with a progress bar, prints a summary, then serves the admin
at http://127.0.0.1:8000/admin/ until Ctrl-C, which stops every process it
started. ``--no-serve`` (or HERALD_DEMO_SERVE=0) stops after the summary.

It runs on Herald's embedded defaults: without DATABASE_URL the database is a
SQLite file in the scratch directory (var/demo/herald.sqlite3). With
DATABASE_URL=postgres://… it uses that PostgreSQL database, created when missing.
"""

import argparse
import asyncio
import csv
import json
import os
import secrets
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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
SLOW_DELAY = 0.05


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


# --- processes -------------------------------------------------------------------

class Processes:
    """Every process the demo starts, each in its own process group, stopped on exit."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started = []

    def start(self, name, argv, env):
        out = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
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
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    def pids(self):
        return {name: proc.pid for name, proc in self.started}


def redis_answers(url):
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def ensure_redis(processes, env):
    url = env.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if redis_answers(url):
        log(f"Redis: using {url}")
        return url
    if os.environ.get("REDIS_URL"):
        raise SystemExit(f"demo: REDIS_URL={url} does not answer")
    port = free_port()
    try:
        processes.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(processes.log_dir)], env)
    except FileNotFoundError:
        raise SystemExit("demo: no Redis answers and redis-server is not installed (apt-get install redis-server)")
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_answers(url), 15, f"Redis on port {port}")
    log(f"Redis: started a private one on 127.0.0.1:{port}")
    return url


def ensure_database(url):
    """Nothing to do for the SQLite default (settings create the file); a PostgreSQL database is created."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return
    if not parts.scheme.startswith("postgres"):
        raise SystemExit(f"demo: DATABASE_URL={url} — the demo runs on SQLite (unset it) or PostgreSQL")
    import psycopg

    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
                log(f"PostgreSQL: created database {name}")
    except psycopg.OperationalError as exc:
        raise SystemExit(f"demo: PostgreSQL at {parts.hostname}:{parts.port or 5432} cannot be used: {exc}")


# --- the SMTP sink that imitates recipient domains ------------------------------------

class DomainSink:
    """aiosmtpd on loopback: records every accepted recipient with its time, per domain."""

    def __init__(self, bounce_port):
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.bounce_port = bounce_port
        self.accepted = defaultdict(list)  # domain -> [time]
        self.deferred_once = set()
        self.dsn_sent = []
        self.dsn_due = 0  # late bounces decided, sent or not yet
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, _, domain = address.lower().rpartition("@")
        if domain == "reject.example.io" and local.startswith("gone"):
            return f"550 5.1.1 <{address}>: no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        rcpts = [r.lower() for r in envelope.rcpt_tos]
        domains = {r.rpartition("@")[2] for r in rcpts}
        if "slow.example.net" in domains:
            await asyncio.sleep(SLOW_DELAY)
        if "defer.example.org" in domains:
            with self.lock:
                first = [r for r in rcpts if r not in self.deferred_once]
                self.deferred_once.update(first)
            if first:
                return "451 4.3.0 Greylisted, please come back later"
        now = time.time()
        with self.lock:
            for r in rcpts:
                self.accepted[r.rpartition("@")[2]].append(now)
        moved = [r for r in rcpts if r.partition("@")[0].startswith("moved")]
        if moved and envelope.mail_from:
            with self.lock:
                self.dsn_due += len(moved)
            threading.Thread(target=self.send_dsn, args=(envelope.mail_from, moved), daemon=True).start()
        return f"250 2.0.0 queued as {secrets.token_hex(6)}"

    def send_dsn(self, return_path, recipients):
        """A late bounce, as a receiving MTA sends it: an RFC 3464 report to the VERP return path."""
        boundary = "dsn-" + secrets.token_hex(8)
        per_recipient = "".join(
            f"\r\nFinal-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 mailbox moved away\r\n" for r in recipients
        )
        report = (
            f"From: MAILER-DAEMON@reject.example.io\r\nTo: {return_path}\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: {make_msgid(domain='reject.example.io')}\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
            f"The mailbox has moved away; your message could not be delivered.\r\n"
            f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.reject.example.io\r\n{per_recipient}"
            f"--{boundary}--\r\n"
        )
        try:
            with smtplib.SMTP("127.0.0.1", self.bounce_port, timeout=30) as smtp:
                smtp.sendmail("", [return_path], report.encode())
            with self.lock:
                self.dsn_sent.extend(recipients)
        except (OSError, smtplib.SMTPException) as exc:
            log(f"sink: the bounce server refused a DSN: {exc}")
            with self.lock:
                self.dsn_due -= len(recipients)

    def peak_rates(self):
        """Per domain: the most recipients accepted within any one second."""
        peaks = {}
        with self.lock:
            for domain, times in self.accepted.items():
                times = sorted(times)
                best, start = 0, 0
                for end in range(len(times)):
                    while times[end] - times[start] >= 1.0:
                        start += 1
                    best = max(best, end - start + 1)
                peaks[domain] = best
        return peaks


# --- the demo's data ---------------------------------------------------------------

def write_contacts(path, count):
    """A CSV of ``count`` contacts spread over the imitated domains."""
    slots = [domain for domain, spec in DOMAINS.items() for _ in range(spec["share"])]
    first_names = ["Ada", "Bo", "Chloé", "Dmitri", "Eun-ji", "Femi", "Greta", "Hiro", "Inés", "Jamal"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "first_name", "last_name", "city"])
        seen = defaultdict(int)
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
                "<p style='color:#888'>You get this because you joined the demo list.</p></body></html>",
    })
    campaign = Campaign.objects.create(
        name=f"Demo campaign {time.strftime('%Y-%m-%d %H:%M:%S')}",
        subject="Hello {{ contact.first_name }}, the spring news is here",
        from_name="Herald Demo", from_email="news@demo.herald.localhost", template=layout,
        html_body="<h1>Spring news</h1><p>Hi {{ contact.first_name }}, here is what is new in "
                  "{{ contact.attributes.city | default('your city') }}.</p>"
                  "<p><a href='https://herald.example/spring'>Read the whole story</a></p>",
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


# --- progress and summary -----------------------------------------------------------

def progress_line(counts, total, started):
    done = counts["sent"] + counts["bounced"] + counts["failed"] + counts["cancelled"]
    share = done / total if total else 1.0
    width = 32
    bar = "█" * int(share * width) + "░" * (width - int(share * width))
    rate = counts["sent"] / max(time.monotonic() - started, 0.001)
    return (f"[{bar}] {share:6.1%}  sent {counts['sent']}  deferred {counts['deferred']}  "
            f"bounced {counts['bounced']}  queued {counts['queued'] + counts['sending']}  {rate:.0f}/s")


def watch(campaign_id, processes, timeout):
    from django.db import close_old_connections

    from campaigns.models import Campaign
    from delivery import lifecycle

    tty = sys.stdout.isatty()
    started = time.monotonic()
    last_print = 0.0
    while True:
        close_old_connections()
        data = lifecycle.progress(campaign_id)
        counts = data["counts"]
        line = progress_line(counts, counts["total"], started)
        if tty:
            print("\r" + line, end="", flush=True)
        elif time.monotonic() - last_print >= 5:
            log(line)
            last_print = time.monotonic()
        if data["status"] in (Campaign.Status.FINISHED, Campaign.Status.CANCELLED):
            print("\r" + line if tty else line, flush=True)
            return data
        if data["status"] == Campaign.Status.PAUSED:
            raise SystemExit(f"\ndemo: the campaign paused: {data['status_reason']}")
        if time.monotonic() - started > timeout:
            raise SystemExit(f"\ndemo: the campaign did not finish within {timeout:.0f}s: {counts}")
        processes.check_alive()
        time.sleep(0.5)


def summarise(campaign_id, sink, contacts, wait_dsn):
    from django.db.models import Count, Max, Min

    from campaigns.models import Campaign, Suppression
    from delivery.models import DomainThrottle, Send
    from tracking.models import Event

    campaign = Campaign.objects.get(pk=campaign_id)
    sends = Send.objects.filter(campaign_id=campaign_id)
    sent = sends.filter(status=Send.Status.SENT)
    span = sent.aggregate(first=Min("sent_at"), last=Max("sent_at"))
    seconds = (span["last"] - campaign.started_at).total_seconds() if span["last"] else 0.0
    deadline = time.monotonic() + 30
    while wait_dsn and len(sink.dsn_sent) < sink.dsn_due and time.monotonic() < deadline:
        time.sleep(0.1)
    moved = list(sink.dsn_sent)
    if wait_dsn and moved:
        # The bounce server records what the DSNs report; give it a moment.
        while time.monotonic() < deadline and Event.objects.filter(
                campaign_id=campaign_id, type=Event.Type.BOUNCE, source="bounce-server").count() < len(moved):
            time.sleep(0.2)
    throttles = {t.domain_list()[0]: t for t in DomainThrottle.objects.filter(name__startswith="demo ")}
    peaks = sink.peak_rates()
    return {
        "campaign": campaign_id,
        "status": campaign.status,
        "contacts": contacts,
        "recipients": campaign.total,
        "suppressed_before": contacts - campaign.total,
        "sent": sent.count(),
        "deferred_then_delivered": sent.filter(attempts__gt=1).count(),
        "bounced": sends.filter(status=Send.Status.BOUNCED).count(),
        "failed": sends.filter(status=Send.Status.FAILED).count(),
        "failed_reply": (sends.filter(status=Send.Status.FAILED).values("smtp_reply").annotate(n=Count("id"))
                         .order_by("-n").values_list("smtp_reply", flat=True).first() or ""),
        "late_bounces": Event.objects.filter(campaign_id=campaign_id, type=Event.Type.BOUNCE,
                                             source="bounce-server").count(),
        "suppressed_now": Suppression.objects.filter(email_key__in=sends.values("email")).count(),
        "seconds": round(seconds, 1),
        "per_second": round(sent.count() / seconds, 1) if seconds else 0.0,
        "domains": {
            domain: {"peak": peaks.get(domain, 0), "limit": throttles[domain].rate, "burst": throttles[domain].burst,
                     "behaviour": spec["behaviour"]}
            for domain, spec in DOMAINS.items() if domain in throttles
        },
    }


def print_summary(s):
    log("")
    log("Summary")
    log(f"  contacts imported            {s['contacts']}")
    log(f"  suppressed before sending    {s['suppressed_before']}  (earlier unsubscribes, complaints, bounces)")
    log(f"  recipients                   {s['recipients']}")
    log(f"  sent                         {s['sent']}")
    log(f"    of which deferred first    {s['deferred_then_delivered']}  (451, then delivered on retry)")
    log(f"  bounced                      {s['bounced']}  (550 at RCPT; suppressed at once)")
    if s["failed"]:
        log(f"  failed                       {s['failed']}  (most often: {s['failed_reply'][:70]})")
    log(f"  bounced later                {s['late_bounces']}  (DSN through the bounce server)")
    log(f"  suppressed after this send   {s['suppressed_now']}")
    log(f"  messages per second          {s['per_second']}  ({s['sent']} in {s['seconds']} s, retries included)")
    log("  highest rate seen per domain (any one second) against its limit:")
    for domain, d in s["domains"].items():
        log(f"    {domain:20} {d['peak']:5}/s   limit {d['limit']}/s + burst {d['burst']}   {d['behaviour']}")


# --- main ---------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description="Run Herald's demo campaign end to end.")
    parser.add_argument("--contacts", type=int, default=10_000, help="contacts to generate and import (default 10000)")
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "demo"), help="scratch directory (default var/demo)")
    parser.add_argument("--no-serve", action="store_true", help="stop after the summary (also HERALD_DEMO_SERVE=0)")
    parser.add_argument("--port", type=int, default=8000, help="port of the admin (default 8000)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the campaign may take (default 900)")
    args = parser.parse_args()
    if args.contacts < 20:
        parser.error("--contacts must be at least 20")
    if os.environ.get("HERALD_DEMO_SERVE", "1").strip().lower() in ("0", "false", "no", "off"):
        args.no_serve = True
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

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        env["REDIS_URL"] = ensure_redis(processes, env)
        ensure_database(env.get("DATABASE_URL"))
        os.environ.update(env)
        return run(args, env, processes, var_dir, log_dir)
    except KeyboardInterrupt:
        log("\nStopping…")
        return 130
    finally:
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

    bounce_port = free_port()
    processes.start("bounce-server", [PYTHON, "manage.py", "run_bounce_server", "--port", str(bounce_port)], env)
    processes.start("worker", [CELERY, "-A", "herald", "worker", "-n", f"demo-{os.getpid()}@%h", "-c", "2",
                               "--without-gossip", "--without-mingle", "-l", "info"], env)
    processes.start("beat", [CELERY, "-A", "herald", "beat", "-l", "info", "--pidfile", str(log_dir / "beat.pid"),
                             "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"], env)
    sink = DomainSink(bounce_port)
    sink.controller.start()
    try:
        set_up_engine(sink.port)
        wait_for(lambda: port_answers("127.0.0.1", bounce_port), 30, "the bounce server listening")
        wait_for(lambda: b" ready." in (log_dir / "worker.log").read_bytes(), 60, "the Celery worker ready")
        log(f"Started: bounce server :{bounce_port}, Celery worker and beat, SMTP sink :{sink.port} imitating "
            + ", ".join(DOMAINS))

        csv_path = var_dir / "contacts.csv"
        write_contacts(csv_path, args.contacts)
        list_name = f"Demo readers {time.strftime('%Y-%m-%d %H:%M:%S')}"
        log(f"Importing {args.contacts} contacts from {csv_path}…")
        t0 = time.monotonic()
        call_command("import_contacts", str(csv_path), "--list", list_name)
        log(f"  imported in {time.monotonic() - t0:.1f} s")
        seed_suppressions(max(1, args.contacts // 400))

        from delivery import lifecycle

        campaign = create_campaign(list_name)
        log(f"Sending “{campaign.name}”…")
        lifecycle.start_campaign(campaign.pk)
        watch(campaign.pk, processes, args.timeout)
        summary = summarise(campaign.pk, sink, args.contacts, wait_dsn=True)
        summary["pids"] = processes.pids()
        print_summary(summary)
        (var_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if args.no_serve:
            return 0
        serve(args, env, processes)
        return 0
    finally:
        sink.controller.stop()


def serve(args, env, processes):
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)
    password = secrets.token_urlsafe(12)
    user, _ = User.objects.get_or_create(username="admin", defaults={"email": "admin@herald.localhost"})
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    processes.start("web", [GUNICORN, "herald.wsgi:application", "--bind", f"127.0.0.1:{args.port}", "--workers", "2",
                            "--access-logfile", "-"], env)
    wait_for(lambda: port_answers("127.0.0.1", args.port), 30, f"the admin on port {args.port}")
    log("")
    log(f"Admin: http://127.0.0.1:{args.port}/admin/   user admin   password {password}")
    log("Ctrl-C stops the admin, the worker, beat, the bounce server and the sink.")
    while True:
        processes.check_alive()
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
