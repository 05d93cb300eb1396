"""Benchmark of the SMTP submission server.

Prints the rate at which 16 concurrent authenticated clients (STARTTLS + AUTH
PLAIN, one connection each, 10 KB messages) get their messages accepted
durably: each 250 means the message and its Send row were committed to
PostgreSQL. The same clients against Postfix's smtp-sink (no TLS, nothing
stored) give a baseline in the same run: the client's own ceiling on this
machine. With ``--e2e N`` it also measures delivery end to end: N messages
submitted, a Celery worker sending them through a relay into smtp-sink.

Uses a scratch database (herald_bench_submission on the server named by
DATABASE_URL), emptied tables, and the Redis database of REDIS_URL, whose
Celery queue it empties before the end-to-end run.

    DATABASE_URL=postgres://herald:herald@127.0.0.1:5432/herald_h5 REDIS_URL=redis://127.0.0.1:6379/5 \
        .venv/bin/python bench/submission.py --messages 20000 --e2e 2000
"""

import argparse
import asyncio
import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from benchlib import free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SCRATCH = "herald_bench_submission"
SECRET = "bench-secret-0123456789abcdef"


def scratch_database(url):
    import psycopg

    parts = urlparse(url)
    admin = urlunparse(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (SCRATCH,)).fetchone():
            conn.execute(f'CREATE DATABASE "{SCRATCH}"')
    return urlunparse(parts._replace(path="/" + SCRATCH))


def setup_django(db_url):
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def reset_tables():
    from django.db import connection

    from delivery.models import Send
    from submission.models import OutboundMessage, SmtpCredential

    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {OutboundMessage._meta.db_table}, {SmtpCredential._meta.db_table}, {Send._meta.db_table} CASCADE")
    row = SmtpCredential(username="bench", allowed_domains="bench.example.com")
    from django.contrib.auth.hashers import make_password

    row.secret_hash = make_password(SECRET)
    row.save()


def use_relay(port):
    """Deliver through smtp-sink on loopback: a relay, so no MX is ever looked up."""
    from delivery.models import DomainThrottle, Relay

    Relay.objects.all().delete()
    DomainThrottle.objects.all().delete()
    Relay.objects.create(name="bench-sink", host="127.0.0.1", port=port, security=Relay.Security.NONE,
                         max_connections=8, messages_per_connection=100000)
    DomainThrottle.objects.create(name="bench", is_default=True, rate=1_000_000, max_connections=16)


def purge_queue():
    """Drop tasks left from the acceptance run: their rows are gone."""
    from herald.celery import app

    app.control.purge()


def certificate():
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    OUT.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = OUT / "submission-cert.pem", OUT / "submission-key.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def message_10k(n):
    body = "".join(f"Line {i:04d} of the benchmark message, padded to about seventy characters.....\r\n" for i in range(128))
    head = (f"From: Bench <app@bench.example.com>\r\nTo: rcpt{n}@dest.test\r\nSubject: Benchmark {n}\r\n"
            "X-Herald-Tag: bench\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return (head + body).encode()


class Client:
    """A minimal SMTP client: little CPU per message, so the server is what is measured."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def reply(self):
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return int(line[:3]), line

    async def cmd(self, text, expect):
        self.writer.write(text)
        code, line = await self.reply()
        if code != expect:
            raise RuntimeError(f"{text[:40]!r} -> {line!r}")

    @classmethod
    async def open(cls, port, tls, user, secret):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        await c.reply()
        await c.cmd(b"EHLO bench.test\r\n", 250)
        if tls is not None:
            await c.cmd(b"STARTTLS\r\n", 220)
            await writer.start_tls(tls, server_hostname="localhost")
            await c.cmd(b"EHLO bench.test\r\n", 250)
            token = base64.b64encode(f"\0{user}\0{secret}".encode())
            await c.cmd(b"AUTH PLAIN " + token + b"\r\n", 235)
        return c

    async def send(self, rcpt, data):
        await self.cmd(b"MAIL FROM:<app@bench.example.com>\r\n", 250)
        await self.cmd(f"RCPT TO:<{rcpt}>\r\n".encode(), 250)
        await self.cmd(b"DATA\r\n", 354)
        await self.cmd(data + b".\r\n", 250)

    async def close(self):
        self.writer.write(b"QUIT\r\n")
        try:
            await asyncio.wait_for(self.reply(), 5)
        except Exception:
            pass
        self.writer.close()


async def run_clients(port, tls, clients, total, seconds, user="bench", secret=SECRET):
    conns = await asyncio.gather(*(Client.open(port, tls, user, secret) for _ in range(clients)))
    data = [message_10k(i) for i in range(clients)]
    counter = {"next": 0, "done": 0}
    deadline = time.monotonic() + seconds

    async def worker(i, conn):
        while time.monotonic() < deadline:
            n = counter["next"]
            if n >= total:
                break
            counter["next"] += 1
            await conn.send(f"rcpt{n}@dest{n % 50}.test", data[i])
            counter["done"] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    elapsed = time.monotonic() - start
    await asyncio.gather(*(c.close() for c in conns))
    return counter["done"], elapsed


def cpu_seconds(pid):
    """User + system CPU of a process and all its descendants, threads included."""
    tick = os.sysconf("SC_CLK_TCK")
    pids, todo = [], [pid]
    while todo:  # the server, its forked workers, and their hand-off helpers
        current = todo.pop()
        pids.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start_process(args, env, ready, log_name):
    log = open(OUT / log_name, "w")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    if ready:
        line = proc.stdout.readline()
        if ready not in line:
            proc.kill()
            raise SystemExit(f"{args[0]} did not start: {line} (see bench/out/{log_name})")
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def smtp_sink(port):
    proc = subprocess.Popen(["/usr/sbin/smtp-sink", *(["-u", "nobody"] if os.geteuid() == 0 else []), "-c",
                             f"127.0.0.1:{port}", "256"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("smtp-sink did not start")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="stop after this many messages")
    parser.add_argument("--seconds", type=float, default=30, help="or after this many seconds")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--committers", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2, help="server processes (one per core)")
    parser.add_argument("--e2e", type=int, default=0, help="messages for the end-to-end delivery run (0 skips it)")
    args = parser.parse_args()

    db_url = scratch_database(os.environ.get("DATABASE_URL", "postgres://herald:herald@127.0.0.1:5432/herald"))
    setup_django(db_url)
    reset_tables()
    cert, key = certificate()
    env = {**os.environ, "DATABASE_URL": db_url, "HERALD_TLS_CERT": cert, "HERALD_TLS_KEY": key, "LOG_LEVEL": "WARNING"}
    tls = ssl.create_default_context(cafile=cert)
    tls.check_hostname = False

    sink_port = free_port()
    sink = smtp_sink(sink_port)
    use_relay(sink_port)
    try:
        done, elapsed = asyncio.run(run_clients(sink_port, None, args.clients, args.messages, args.seconds))
        print(f"baseline  smtp-sink, no TLS, nothing stored: {done} messages in {elapsed:.2f}s = {done / elapsed:,.0f} msg/s")

        port = free_port()
        server = start_process(
            [sys.executable, "manage.py", "run_submission_server", "--port", str(port), "--committers", str(args.committers),
             "--processes", str(args.processes)],
            env, "listening", "submission-server.log",
        )
        try:
            before = cpu_seconds(server.pid)
            done, elapsed = asyncio.run(run_clients(port, tls, args.clients, args.messages, args.seconds))
            cpu = cpu_seconds(server.pid) - before
        finally:
            stop(server)
        from submission.models import OutboundMessage

        stored = OutboundMessage.objects.count()
        print(f"submission {args.clients} clients, STARTTLS + AUTH, 10 KB, {args.processes} server process(es): "
              f"{done} accepted in {elapsed:.2f}s = "
              f"{done / elapsed:,.0f} msg/s durably accepted ({stored} rows committed)")
        # Wall-clock rates depend on what else the machine runs; CPU per message does not.
        print(f"server CPU {cpu / max(done, 1) * 1000:.2f} ms per message (all server processes and threads); "
              f"one free core would accept about {done / cpu if cpu else 0:,.0f} msg/s; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        if args.e2e:
            end_to_end(args, env, tls, sink_port)
    finally:
        stop(sink)


def end_to_end(args, env, tls, sink_port):
    try:
        import delivery.dispatch  # noqa: F401
    except ImportError:
        print("end-to-end: skipped, the engine (delivery.dispatch) is not available")
        return
    from django.db.models import Count

    from delivery.models import Send

    reset_tables()
    purge_queue()
    port = free_port()
    server = start_process([sys.executable, "manage.py", "run_submission_server", "--port", str(port)], env, "listening",
                           "submission-server-e2e.log")
    worker = start_process([sys.executable, "-m", "celery", "-A", "herald", "worker", "-c", "2", "-P", "prefork",
                            "--without-gossip", "--without-mingle", "-l", "WARNING"], env, None, "submission-worker.log")
    try:
        start = time.monotonic()
        submitted, _ = asyncio.run(run_clients(port, tls, args.clients, args.e2e, args.seconds))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sent = Send.objects.filter(status=Send.Status.SENT).count()
            if sent >= submitted:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        statuses = dict(Send.objects.values_list("status").annotate(n=Count("id")))
        print(f"end-to-end {submitted} submitted, {sent} delivered into smtp-sink by 1 worker (2 processes) in "
              f"{elapsed:.2f}s = {sent / elapsed:,.0f} msg/s  statuses={statuses}")
    finally:
        stop(worker)
        stop(server)


if __name__ == "__main__":
    main()
