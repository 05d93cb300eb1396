"""Benchmark of the hosted signup form. Prints figures; asserts nothing.

    .venv/bin/python bench/signup.py [--processes 3] [--signups 6000] [--rounds 3]

Signups per second through POST /s/<slug>/ to a double opt-in list, each
checked (honeypot, signed timestamp, fields, rate limits in Redis), stored with
its consent evidence and the confirmation mail it is owed, and a worker woken
to send that mail. Requests are what a browser posts (a urlencoded form), handed
as WSGI environs to herald.wsgi's application, which is what gunicorn calls:
Django's whole stack (middleware, URL resolver, view, template). --processes
processes post at once (3, as docker-compose's web service runs gunicorn), each
with distinct client addresses; no HTTP parsing, which is the same for every
endpoint.

The baseline of the same run is a plain Django view that only inserts the
contact row with the same statement: what any signup endpoint costs at least.
The baseline and the form take turns, --rounds times, so a machine whose speed
changes during the run slows both alike; the medians are printed, and each
round's figures.

Then the worker's share: the owed confirmation mails rendered, stored in the
ledger with their Sends and handed to the engine, as the woken task does, in
the same number of processes; and both together, a signup's whole cost.

Uses a scratch PostgreSQL database (herald_bench_signup, recreated) and the
Redis database of REDIS_URL, whose Celery queue it empties at the end.
"""

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from benchlib import recreate_database

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "herald_bench_signup"
BASE_URL = os.environ.get("DATABASE_URL", "postgres://herald:herald@127.0.0.1:5432/herald")
PARTS = urlsplit(BASE_URL)


def setup_django():
    os.environ.update({"DATABASE_URL": f"{PARTS.scheme}://{PARTS.netloc}/{DB_NAME}", "DEBUG": "false",
                       "LOG_LEVEL": "ERROR", "ALLOWED_HOSTS": "testserver,127.0.0.1",
                       "HERALD_BASE_URL": "http://127.0.0.1"})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    import django

    django.setup()


def baseline_view(request):
    """The least a signup endpoint does: insert the contact."""
    from django.db import connection
    from django.http import HttpResponse
    from django.utils import timezone

    from audience.signup import _INSERT_CONTACT
    from campaigns.models import email_key

    now = timezone.now()
    email = request.POST["email"]
    with connection.cursor() as cur:
        cur.execute(_INSERT_CONTACT, [email, email_key(email), "", "", "{}", now, now])
    return HttpResponse("Thank you.")


class BenchUrls:
    """Herald's URLs and the baseline view."""

    @property
    def urlpatterns(self):
        from django.urls import path
        from django.views.decorators.csrf import csrf_exempt

        from herald.urls import urlpatterns

        return [path("baseline/", csrf_exempt(baseline_view)), *urlpatterns]


def prepare():
    from django.core.management import call_command

    from audience.models import SignupForm
    from campaigns.models import MailingList

    call_command("migrate", verbosity=0)
    weekly = MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)
    form = SignupForm.objects.create(name="Weekly", slug="weekly", consent_text="Yes, the weekly news please.",
                                     from_email="news@shop.example", fields=[{"name": "first_name"}])
    form.lists.add(weekly)
    return form.pk


def post(application, path, fields, address):
    """POST a urlencoded form to the WSGI application as a server would hand it; returns (status, body)."""
    body = urlencode(fields).encode()
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/x-www-form-urlencoded", "REMOTE_ADDR": address,
        "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) bench",
    }
    status = []
    answer = application(environ, lambda line, headers, exc_info=None: status.append(line))
    try:
        content = b"".join(answer)
    finally:
        getattr(answer, "close", lambda: None)()
    return status[0], content


def run(args):
    """One load process: ``count`` signups to ``path``; returns seconds taken."""
    path, start, count, token = args
    from django.conf import settings
    from django.db import connections

    from herald.wsgi import application

    connections.close_all()  # each process its own connection after the fork
    settings.ROOT_URLCONF = BenchUrls()
    post(application, path, {"email": f"warm{start}@example.com", "ts": token, "first_name": "W"}, "10.255.0.1")
    began = time.perf_counter()
    for n in range(start, start + count):
        status, content = post(application, path, {"email": f"user{n}@example.com", "ts": token, "first_name": "Ann",
                                                   "website": ""}, f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        if not status.startswith("200"):
            raise SystemExit(f"{path}: HTTP {status}: {content[:300]!r}")
    return time.perf_counter() - began


def drain(_):
    """One worker process: store owed confirmation mails until none is left; returns how many it stored."""
    from django.db import connections

    from audience import confirmations

    connections.close_all()
    return confirmations.send_due()


def measure(path, processes, signups, offset, token):
    per = signups // processes
    began = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(run, [(path, offset + i * per, per, token) for i in range(processes)])
    wall = time.perf_counter() - began
    return per * processes / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--signups", type=int, default=6000, help="for each of the baseline and the form, in all")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    recreate_database(f"{PARTS.scheme}://{PARTS.netloc}", DB_NAME)
    setup_django()
    from django.conf import settings
    from django.db import connections

    from audience import tokens
    from audience.models import ConfirmationDue
    from delivery.models import Send
    from herald.celery import app

    settings.HERALD_SIGNUP_LIMIT_PER_IP = 10**9  # the load comes from few addresses; per-address limits still count
    # An earlier run's keys would make this one's signups look like repeats, which mail nothing.
    from delivery.throttle import client
    stale = list(client().scan_iter("herald:signup:*", count=10000))
    if stale:
        client().delete(*stale)
    form_id = prepare()
    token = tokens.form_token(form_id)
    time.sleep(settings.HERALD_SIGNUP_MIN_SECONDS + 1)  # as a person would take to fill it in
    connections.close_all()
    print(f"{args.signups} signups to each in {args.processes} processes, {args.rounds} rounds taking turns, "
          f"PostgreSQL at {PARTS.hostname}:{PARTS.port}")
    per_round = args.signups // args.rounds
    bases, rates = [], []
    for n in range(args.rounds):
        bases.append(measure("/baseline/", args.processes, per_round, n * 10**5, token))
        rates.append(measure("/s/weekly/", args.processes, per_round, 10**6 + n * 10**5, token))
    base, rate = statistics.median(bases), statistics.median(rates)
    rounds = ", ".join(f"{b:.0f}/{r:.0f}" for b, r in zip(bases, rates, strict=True))
    print(f"  baseline (plain view, one INSERT):           {base:8.0f} signups/s")
    owed = ConfirmationDue.objects.count()
    print(f"  hosted form, double opt-in, mail owed:       {rate:8.0f} signups/s  ({rate / base:.2f} of the baseline; "
          f"{owed} confirmation mails owed)")
    print(f"  (each round, baseline/form: {rounds}; medians above)")
    connections.close_all()
    began = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        stored = sum(pool.map(drain, range(args.processes)))
    worker = stored / (time.perf_counter() - began)
    mailed = Send.objects.filter(campaign=None, status=Send.Status.QUEUED).count()
    print(f"  worker: confirmation mails stored, queued:   {worker:8.0f} mails/s    ({mailed} queued sends in the ledger, "
          f"{ConfirmationDue.objects.count()} still owed)")
    both = 1 / (1 / rate + 1 / worker)
    print(f"  a signup's whole cost, form and worker:      {both:8.0f} signups/s  ({both / base:.2f} of the baseline)")
    purged = app.control.purge()
    print(f"  ({purged} tasks removed from the broker: the wake-ups of the confirmation sender, and the sends)")
    connections.close_all()


if __name__ == "__main__":
    main()
