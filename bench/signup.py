"""Benchmark of the hosted signup form. Prints figures; asserts nothing.

    .venv/bin/python bench/signup.py [--processes 2] [--signups 3000]

Signups per second through POST /s/<slug>/ to a double opt-in list, each
checked (honeypot, signed timestamp, fields, rate limits in Redis), stored with
its consent evidence, and its confirmation mail stored in the ledger and put
on the broker for the engine. Requests go through Django's whole stack
(middleware, URL resolver, view, template) from ``django.test.Client`` in
--processes processes at once, each with distinct client addresses; no HTTP
parsing, which is the same for every endpoint.

The baseline of the same run is a plain Django view that only inserts the
contact row with the same statement: what any signup endpoint costs at least.

Uses a scratch PostgreSQL database (herald_bench_signup, recreated) and the
Redis database of REDIS_URL, whose Celery queue it empties at the end.
"""

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

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


def run(args):
    """One load process: ``count`` signups to ``path``; returns seconds taken."""
    path, start, count, token = args
    from django.conf import settings
    from django.db import connections
    from django.test import Client

    connections.close_all()  # each process its own connection after the fork
    settings.ROOT_URLCONF = BenchUrls()
    client = Client()
    client.post(path, {"email": f"warm{start}@example.com", "ts": token, "first_name": "W"}, REMOTE_ADDR="10.255.0.1")
    began = time.perf_counter()
    for n in range(start, start + count):
        response = client.post(path, {"email": f"user{n}@example.com", "ts": token, "first_name": "Ann", "website": ""},
                               REMOTE_ADDR=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}: {response.content[:300]!r}")
    return time.perf_counter() - began


def measure(path, processes, signups, offset, token):
    per = signups // processes
    began = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(run, [(path, offset + i * per, per, token) for i in range(processes)])
    wall = time.perf_counter() - began
    return per * processes / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--signups", type=int, default=3000)
    args = parser.parse_args()
    recreate_database(f"{PARTS.scheme}://{PARTS.netloc}", DB_NAME)
    setup_django()
    from django.conf import settings
    from django.db import connections

    from audience import tokens
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
    print(f"{args.signups} signups in {args.processes} processes, PostgreSQL at {PARTS.hostname}:{PARTS.port}")
    base = measure("/baseline/", args.processes, args.signups, 0, token)
    print(f"  baseline (plain view, one INSERT):           {base:8.0f} signups/s")
    rate = measure("/s/weekly/", args.processes, args.signups, 10**6, token)
    mailed = Send.objects.filter(campaign=None).count()
    print(f"  hosted form, double opt-in, mail enqueued:   {rate:8.0f} signups/s  ({rate / base:.2f} of the baseline; "
          f"{mailed} confirmation mails in the ledger)")
    purged = app.control.purge()
    print(f"  ({purged} confirmation tasks removed from the broker)")
    connections.close_all()


if __name__ == "__main__":
    main()
