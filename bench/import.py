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
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TARGET_ROWS_PER_S = 50_000
TARGET_PEAK_MB = 200

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
    """Run a child process; return (seconds, peak RSS in MB, stdout, stderr)."""
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
    return elapsed, usage.ru_maxrss / 1024, stdout, stderr


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
    _, _, out, _ = run_child([sys.executable, "-c", BASELINE, str(rows)], env)
    return float(out.strip().splitlines()[-1])


def import_once(env, path, list_name):
    seconds, peak, out, err = run_child(
        [sys.executable, "manage.py", "import_contacts", str(path), "--list", list_name], env)
    summary = next((line for line in out.splitlines() if " rows, " in line), out.strip())
    phases = next((line.split("campaigns.imports: ")[1] for line in err.splitlines() if "campaigns.imports:" in line), "")
    return seconds, peak, summary, phases


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
