"""A welcome series of three emails with waits: each sent exactly once per contact, whatever the ticks do."""

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.db import connection, connections

from automations import sweep, triggers
from automations.models import Automation, Enrolment, Message, Step
from campaigns.models import Subscription, Suppression
from delivery import engine
from delivery.models import Send
from tests.automations.conftest import automation_with, contact, subscribe, template
from tests.delivery.workers import test_database_url as database_url
from tests.support.wait import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
DAY = 24 * 3600


@pytest.fixture
def series(newsletter, t0):
    steps = [
        {"kind": Step.Kind.EMAIL, "template": template("welcome", "Welcome, {{ contact.first_name }}")},
        {"kind": Step.Kind.WAIT, "wait_seconds": DAY},
        {"kind": Step.Kind.EMAIL, "template": template("tips", "Three tips")},
        {"kind": Step.Kind.WAIT, "wait_seconds": 2 * DAY},
        {"kind": Step.Kind.EMAIL, "template": template("offer", "An offer for you")},
    ]
    auto = automation_with(steps, trigger=Automation.Trigger.SUBSCRIBED, mailing_list=newsletter)
    # Active since a minute ago: those who subscribe from now on are welcomed.
    Automation.objects.filter(pk=auto.pk).update(watermark=t0 - timedelta(minutes=1))
    return auto


def sends_per_contact():
    rows = Message.objects.values_list("contact__email", "step__position")
    out = {}
    for email, position in rows:
        out.setdefault(email, []).append(position)
    return {k: sorted(v) for k, v in out.items()}


def _locked_step_update(step_id):
    """Hold the row lock the sweep needs to count a step, so a sweep can be caught before its commit."""
    conn = psycopg.connect(database_url(), autocommit=False)
    conn.execute("SELECT 1 FROM automations_step WHERE id = %s FOR UPDATE", [step_id])
    return conn


def _sweep_process(now):
    code = ("import django, datetime; django.setup(); from automations import sweep; "
            f"sweep.advance(now=datetime.datetime.fromisoformat({now.isoformat()!r}))")
    env = dict(os.environ, DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="herald.settings")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True)


def _backend_waiting():
    with connection.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE%%automations_step%%'")
        row = cur.fetchone()
    return row and row[0]


def _backend_gone(pid):
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cur.fetchone() is None


def test_each_step_is_sent_once_across_a_killed_sweep_and_a_duplicated_tick(series, newsletter, t0, relay, sink):
    alice, bob = contact("alice@example.com"), contact("bob@example.org")
    subscribe(alice, newsletter)
    subscribe(bob, newsletter)
    assert triggers.poll(now=t0 + timedelta(seconds=5)) == 2
    assert triggers.poll(now=t0 + timedelta(seconds=10)) == 0  # the overlapping window enrols nobody twice

    # A sweep killed with SIGKILL after writing the first emails' Send rows, before its commit.
    first_email = series.current_steps().first()
    lock = _locked_step_update(first_email.pk)
    child = _sweep_process(t0 + timedelta(seconds=10))
    try:
        pid = wait_until(_backend_waiting, timeout=60, message="the sweep to wait before its commit")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        lock.rollback()
        lock.close()
    wait_until(lambda: _backend_gone(pid), timeout=30, message="the killed sweep's transaction to end")
    assert not Send.objects.exists(), "nothing of the killed sweep's batch was committed"

    # The next tick does the batch again; the welcome goes out once to each.
    assert sweep.advance(now=t0 + timedelta(seconds=15)) == 2
    assert sweep.advance(now=t0 + timedelta(seconds=20)) == 0
    assert sends_per_contact() == {"alice@example.com": [10], "bob@example.org": [10]}

    # Beat fires the tick twice at once, a day later: the tips still go once to each.
    def tick():
        try:
            sweep.advance(now=t0 + timedelta(seconds=DAY + 30))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sends_per_contact() == {"alice@example.com": [10, 30], "bob@example.org": [10, 30]}

    # Not before the second wait is over; then the offer, and the series ends.
    sweep.advance(now=t0 + timedelta(seconds=3 * DAY))
    assert sends_per_contact()["alice@example.com"] == [10, 30]
    sweep.advance(now=t0 + timedelta(seconds=3 * DAY + 60))
    sweep.advance(now=t0 + timedelta(seconds=3 * DAY + 120))
    assert sends_per_contact() == {"alice@example.com": [10, 30, 50], "bob@example.org": [10, 30, 50]}
    assert set(Enrolment.objects.values_list("status", flat=True)) == {Enrolment.Status.DONE}

    # The engine delivers each message once, rendered for its contact.
    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    subjects = sorted((m.rcpt_tos[0], m.message["Subject"]) for m in sink.received)
    assert subjects == [
        ("alice@example.com", "An offer for you"), ("alice@example.com", "Three tips"),
        ("alice@example.com", "Welcome, Alice"),
        ("bob@example.org", "An offer for you"), ("bob@example.org", "Three tips"), ("bob@example.org", "Welcome, Bob"),
    ]
    stats = {s.position: (s.entered, s.exited) for s in series.current_steps()}
    assert stats[10] == (2, 0) and stats[50] == (2, 2), "both went on from the welcome, and finished at the offer"


def test_contacts_who_unsubscribe_or_are_suppressed_leave_at_once(series, newsletter, t0):
    alice, bob, carol = contact("alice@example.com"), contact("bob@example.org"), contact("carol@example.net")
    subscriptions = [subscribe(person, newsletter) for person in (alice, bob, carol)]
    triggers.poll(now=t0 + timedelta(seconds=5))
    sweep.advance(now=t0 + timedelta(seconds=5))
    alice.status = alice.Status.UNSUBSCRIBED
    alice.save()
    subscriptions[1].status = Subscription.Status.UNSUBSCRIBED
    subscriptions[1].save()
    Suppression.objects.create(email="carol@example.net", reason=Suppression.Reason.HARD_BOUNCE)
    assert sweep.exit_unmailable(now=t0 + timedelta(seconds=6)) == 3
    sweep.advance(now=t0 + timedelta(seconds=2 * DAY))
    assert sends_per_contact() == {"alice@example.com": [10], "bob@example.org": [10], "carol@example.net": [10]}
    assert set(Enrolment.objects.values_list("status", flat=True)) == {Enrolment.Status.EXITED}


def test_a_paused_automation_holds_its_contacts_where_they_are(series, newsletter, t0):
    subscribe(contact("alice@example.com"), newsletter)
    triggers.poll(now=t0 + timedelta(seconds=5))
    Automation.objects.filter(pk=series.pk).update(status=Automation.Status.PAUSED)
    assert sweep.advance(now=t0 + timedelta(seconds=5)) == 0
    Automation.objects.filter(pk=series.pk).update(status=Automation.Status.ACTIVE)
    assert sweep.advance(now=t0 + timedelta(seconds=6)) == 1
    assert sends_per_contact() == {"alice@example.com": [10]}
