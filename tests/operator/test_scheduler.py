"""Scheduled campaigns: started once when due, even with two ticks racing; too late means "missed"."""

import base64
import json
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from campaigns.models import Campaign
from delivery import lifecycle, scheduler
from delivery.models import Send
from delivery.tasks import dispatch_scheduled, start_campaign
from tests.delivery.conftest import drain

pytestmark = pytest.mark.django_db(transaction=True)


def race(*ticks):
    """Run the ticks in threads released at the same instant; return what each returned."""
    barrier = threading.Barrier(len(ticks))
    results = [None] * len(ticks)
    errors = []

    def run(i, tick):
        try:
            barrier.wait(10)
            results[i] = tick()
        except Exception as exc:  # surfaced below, with the thread's traceback lost but its message kept
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(ticks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def published_starts(redis_client):
    """Campaign ids of the start tasks waiting on the broker's queue."""
    ids = []
    for raw in redis_client.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "delivery.start_campaign":
            ids.append(json.loads(base64.b64decode(message["body"]))[0][0])
    return sorted(ids)


def run_published_starts(redis_client):
    """Run each published start task as a worker would."""
    for campaign_id in published_starts(redis_client):
        start_campaign(campaign_id)
    redis_client.delete("celery")


def test_a_campaign_scheduled_ahead_starts_once_with_two_ticks_racing(newsletter, relay, sink, redis_client):
    at = timezone.now() + timedelta(seconds=5)
    lifecycle.schedule_campaign(newsletter.pk, at)

    early = scheduler.dispatch_due(now=at - timedelta(seconds=1))
    newsletter.refresh_from_db()
    assert early.started == [] and newsletter.status == Campaign.Status.SCHEDULED

    due = at + timedelta(seconds=1)
    first, second = race(lambda: scheduler.dispatch_due(now=due), lambda: scheduler.dispatch_due(now=due))

    assert sorted([first.started, second.started]) == [[], [newsletter.pk]]
    newsletter.refresh_from_db()
    # The tick only claims it: the snapshot is the task it published, once.
    assert newsletter.status == Campaign.Status.STARTING
    assert newsletter.started_at == due
    assert published_starts(redis_client) == [newsletter.pk]
    run_published_starts(redis_client)
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.SENDING
    assert newsletter.total == 3
    drain(newsletter.pk)
    assert sorted(sink.recipients()) == ["ann@example.com", "bob@example.com", "cy@example.com"]
    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.FINISHED


def test_many_racing_ticks_through_the_celery_task_start_each_campaign_once(newsletter, relay, sink, redis_client):
    others = []
    for n in range(3):
        copy = Campaign.objects.create(name=f"Issue {n}", subject="Issue", from_email="news@herald.example",
                                       html_body="<p>Issue</p>")
        copy.lists.set(newsletter.lists.all())
        others.append(copy)
    at = timezone.now() - timedelta(seconds=1)
    for campaign in [newsletter, *others]:
        lifecycle.schedule_campaign(campaign.pk, at)

    # The real task, as beat calls it, four times at once.
    race(*[dispatch_scheduled] * 4)

    assert published_starts(redis_client) == sorted(c.pk for c in [newsletter, *others])
    run_published_starts(redis_client)
    for campaign in [newsletter, *others]:
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.SENDING
        assert Send.objects.filter(campaign=campaign).count() == 3
    for campaign in [newsletter, *others]:
        drain(campaign.pk)
    received = sink.recipients()
    assert len(received) == 12  # each of 3 readers once per campaign, no duplicate start
    assert sorted(set(received)) == ["ann@example.com", "bob@example.com", "cy@example.com"]


def test_a_campaign_past_the_cutoff_waits_as_missed_until_started_by_hand(newsletter, relay, sink, settings):
    settings.HERALD_SCHEDULE_CUTOFF = 6 * 3600
    at = timezone.now() - timedelta(days=1)
    lifecycle.schedule_campaign(newsletter.pk, at)

    # Beat comes back seven hours after the campaign's time.
    tick = scheduler.dispatch_due(now=at + timedelta(hours=7))

    newsletter.refresh_from_db()
    assert tick.missed == [newsletter.pk] and tick.started == []
    assert newsletter.status == Campaign.Status.MISSED
    assert "7.0 h ago" in newsletter.status_reason and "HERALD_SCHEDULE_CUTOFF" in newsletter.status_reason
    assert not Send.objects.filter(campaign=newsletter).exists()
    # Later ticks leave it alone.
    assert scheduler.dispatch_due(now=at + timedelta(hours=8)).started == []

    lifecycle.start_campaign(newsletter.pk)
    drain(newsletter.pk)
    assert len(sink.recipients()) == 3


def test_a_late_campaign_within_the_cutoff_still_starts(newsletter, relay, settings):
    settings.HERALD_SCHEDULE_CUTOFF = 6 * 3600
    at = timezone.now() - timedelta(days=1)
    lifecycle.schedule_campaign(newsletter.pk, at)

    tick = scheduler.dispatch_due(now=at + timedelta(hours=5, minutes=59))

    newsletter.refresh_from_db()
    assert tick.started == [newsletter.pk]
    assert newsletter.status == Campaign.Status.STARTING


def test_a_due_campaign_without_lists_is_left_for_the_operator(newsletter, fresh_engine):
    newsletter.lists.clear()
    Campaign.objects.filter(pk=newsletter.pk).update(status=Campaign.Status.SCHEDULED, scheduled_at=timezone.now())

    scheduler.dispatch_due()

    newsletter.refresh_from_db()
    assert newsletter.status == Campaign.Status.MISSED
    assert "no target lists" in newsletter.status_reason


def test_beat_runs_the_dispatcher_sweeper_retries_and_the_bounce_mailbox_poll(settings):
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from herald.celery import app
    from tracking.tasks import POLL_TASK, schedule

    settings.HERALD_BOUNCE_MAILBOX = "imaps://bounces:secret@127.0.0.1:993/INBOX"
    saved = dict(app.conf.beat_schedule)
    try:
        schedule(app, settings)
        DatabaseScheduler(app=app)  # syncs the configured entries into the database, as beat does at start
    finally:
        app.conf.beat_schedule.clear()
        app.conf.beat_schedule.update(saved)

    tasks = dict(PeriodicTask.objects.filter(enabled=True).values_list("task", "interval__every"))
    assert tasks["delivery.dispatch_scheduled"] <= 30
    assert tasks["delivery.sweep"] <= 60
    assert tasks["delivery.due_retries"] <= 60
    assert POLL_TASK in tasks
