"""How fast ``import_contacts`` loads a large CSV file, and how much memory it needs.

    .venv/bin/python bench/import.py [--rows 1000000] [--baseline-rows 1000] [--skip-sqlite] [--update-pass]

Generates a CSV file of N contacts (email, first name, last name and two
attribute columns, with a few invalid and duplicate rows mixed in), then runs
``manage.py import_contacts`` as a child process on

* PostgreSQL: a scratch database (herald_bench_import, dropped and created again
  on the server of DATABASE_URL, default postgres://herald:herald@127.0.0.1:5432/),
* SQLite: a temporary database file,

and prints rows per second and the child's peak resident memory (from
``wait4``'s rusage). A naive baseline, Django ORM ``get_or_create`` per row for
the contact and its subscription, runs on a small sample in the same scratch
database and is extrapolated, for the speed-up ratio. ``--update-pass`` imports
the same file a second time (every row an update).
"""

import argparse
import contextlib
import csv
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import benchlib  # noqa: F401  (sets a SECRET_KEY for benchmark processes)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TARGET_ROWS_PER_S = 50_000
TARGET_PEAK_MB = 200

APP_NAME = "herald-bench-import"
TICKS = os.sysconf("SC_CLK_TCK")


class BackendCPU:
    """CPU seconds spent by the PostgreSQL backends serving the command.

    On a busy machine wall time says little; the CPU both sides used says
    what the import costs. Backends are found by application_name and their
    /proc/<pid>/stat read until they exit.
    """

    def __init__(self, database_url):
        import psycopg

        self._conn = psycopg.connect(database_url.split("?")[0], autocommit=True)
        self._seen = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.2):
            pids = [r[0] for r in self._conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APP_NAME])]
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                self._seen[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._conn.close()

    @property
    def seconds(self):
        return sum(self._seen.values())


CITIES = ["Berlin", "Köln", "Paris", "Lyon", "Madrid", "Porto", "Oslo", "Wien"]
PLANS = ["free", "pro", "team"]


def generate(path: Path, rows: int, seed=7):
    """A realistic file: mixed-case addresses, ~0.1% invalid, ~0.1% case-variant duplicates."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Email", "First name", "Last name", "City", "Plan"])
        for i in range(rows):
            if i % 1000 == 999:
                email = f"broken-{i}.example.com"
            elif i % 1000 == 500:
                email = f"User{i - 1}@Example{(i - 1) % 50}.com".upper()
            else:
                email = f"User{i}@Example{i % 50}.com"
            writer.writerow([email, f"First{i}", f"Last{i % 9973}", rng.choice(CITIES), rng.choice(PLANS)])


def run_child(args, env):
    """Run a child process; return (seconds, peak RSS in MB, stdout, stderr, CPU seconds)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return elapsed, usage.ru_maxrss / 1024, stdout, stderr, usage.ru_utime + usage.ru_stime


def child_env(database_url):
    return dict(os.environ, DATABASE_URL=database_url, LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")


def scratch_postgres(base_url: str) -> str:
    parts = urlsplit(base_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    name = "herald_bench_import"
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", admin_url, "-qc", sql], check=True, capture_output=True)
    return urlunsplit(parts._replace(path="/" + name))


def migrate(env):
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)


BASELINE = r"""
import sys, time, django
django.setup()
from campaigns.models import Contact, MailingList, Subscription
n = int(sys.argv[1])
lst, _ = MailingList.objects.get_or_create(name="Naive")
started = time.perf_counter()
for i in range(n):
    contact, created = Contact.objects.get_or_create(
        email_key=f"naive{i}@example{i % 50}.com",
        defaults={"email": f"Naive{i}@Example{i % 50}.com", "first_name": f"First{i}", "last_name": f"Last{i}",
                  "attributes": {"City": "Berlin", "Plan": "pro"}})
    Subscription.objects.get_or_create(contact=contact, mailing_list=lst)
print(n / (time.perf_counter() - started))
"""


def baseline(env, rows):
    env = dict(env, DJANGO_SETTINGS_MODULE="herald.settings")
    out = run_child([sys.executable, "-c", BASELINE, str(rows)], env)[2]
    return float(out.strip().splitlines()[-1])


def import_once(env, path, list_name):
    database_url = env["DATABASE_URL"]
    if database_url.startswith("postgres"):
        env = dict(env, DATABASE_URL=f"{database_url}?application_name={APP_NAME}")
        sampler = BackendCPU(database_url)
    else:
        sampler = None
    with sampler or contextlib.nullcontext():
        seconds, peak, out, err, cpu = run_child(
            [sys.executable, "manage.py", "import_contacts", str(path), "--list", list_name], env)
    summary = next((line for line in out.splitlines() if " rows, " in line), out.strip())
    phases = next((line.split("campaigns.imports: ")[1] for line in err.splitlines() if "campaigns.imports:" in line), "")
    backend = f", PostgreSQL backend {sampler.seconds:.1f} s" if sampler else " (SQLite runs in-process)"
    cpu_line = f"CPU: command {cpu:.1f} s{backend}"
    return seconds, peak, summary, f"{phases}; {cpu_line}"


def report(label, rows, seconds, peak, summary, phases):
    rate = rows / seconds
    print(f"{label:<28} {rows:>9,} rows in {seconds:6.1f} s = {rate:>8,.0f} rows/s   peak RSS {peak:6.1f} MB")
    print(f"{'':<28} {summary}")
    if phases:
        print(f"{'':<28} {phases}")
    return rate, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=1000)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--update-pass", action="store_true", help="import the same file again (all updates)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"contacts-{args.rows}.csv"
    if not path.exists():
        started = time.perf_counter()
        generate(path, args.rows)
        print(f"generated {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other work on the machine skews figures)")

    base = os.environ.get("DATABASE_URL", "postgres://herald:herald@127.0.0.1:5432/herald")
    if not base.startswith("postgres"):
        base = "postgres://herald:herald@127.0.0.1:5432/herald"
    pg_env = child_env(scratch_postgres(base))
    migrate(pg_env)
    naive = baseline(pg_env, args.baseline_rows)
    print(f"{'naive ORM baseline (PG)':<28} {args.baseline_rows:>9,} rows sampled         = {naive:>8,.0f} rows/s   "
          "(get_or_create per contact and subscription)")

    results = [("PostgreSQL", *report("import_contacts PostgreSQL", args.rows, *import_once(pg_env, path, "Bench")))]
    if args.update_pass:
        again = report("  again (all updates)", args.rows, *import_once(pg_env, path, "Bench"))
        results.append(("PostgreSQL, all updates", *again))

    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_env = child_env(f"sqlite:///{tmp}/bench.sqlite3")
            sqlite_env["HERALD_VAR_DIR"] = tmp
            migrate(sqlite_env)
            results.append(("SQLite", *report("import_contacts SQLite", args.rows, *import_once(sqlite_env, path, "Bench"))))

    print()
    for label, rate, peak in results:
        print(f"{label:<24} {rate:>8,.0f} rows/s = {rate / naive:4.0f}x the naive baseline, peak RSS {peak:.0f} MB")
    pg_rate, pg_peak = results[0][1], results[0][2]
    verdict = "met" if pg_rate >= TARGET_ROWS_PER_S and pg_peak < TARGET_PEAK_MB else "NOT met"
    print(f"target (>= {TARGET_ROWS_PER_S:,} rows/s on PostgreSQL, peak < {TARGET_PEAK_MB} MB): {verdict} "
          f"for {args.rows:,} rows")


if __name__ == "__main__":
    main()
