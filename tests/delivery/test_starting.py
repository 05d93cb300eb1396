"""Starting a campaign: the request answers at once with "starting", a worker snapshots the audience in chunks
(progress on the way), and a pause, a cancel or a lost worker in the middle loses and duplicates nobody."""

import collections
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from campaigns.models import ApiToken, Campaign, Contact
from delivery import lifecycle, scheduler
from delivery.lifecycle import LifecycleError
from delivery.models import Send
from delivery.tasks import start_campaign
from tests.delivery.conftest import SENDABLE_HTML, drain
from tests.delivery.workers import Worker
from tests.support.wait import wait_until

ADDRESSES = [f"s{i}@example.com" for i in range(9)]


class WorkerLost(BaseException):
    """Stands for the process dying: nothing after it runs."""


def bearer():
    user = User.objects.create_superuser("sam", "sam@herald.example", "a long passphrase 42")
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)[1]}"}


def status(campaign):
    campaign.refresh_from_db()
    return campaign.status


def once_each(campaign):
    emails = Send.objects.filter(campaign=campaign).values_list("email", flat=True)
    counts = collections.Counter(emails)
    assert sorted(counts) == sorted(ADDRESSES) and set(counts.values()) == {1}, counts


@pytest.mark.django_db
def test_pause_while_starting_stops_the_snapshot_and_resume_continues_it(sink, relay, make_campaign, settings):
    settings.HERALD_START_CHUNK = 2
    campaign = make_campaign(ADDRESSES)
    assert lifecycle.start_in_background(campaign.pk).status == Campaign.Status.STARTING

    def pause_after_the_first_chunk(cursor, upto):
        lifecycle.pause_campaign(campaign.pk)

    lifecycle.prepare(campaign.pk, on_chunk=pause_after_the_first_chunk)

    progress = lifecycle.progress(campaign.pk)
    assert progress["status"] == "paused"
    assert progress["recipients"] == progress["counts"]["total"] == 2 and progress["snapshot"] < 1
    lifecycle.resume_campaign(campaign.pk)
    assert status(campaign) == Campaign.Status.STARTING
    start_campaign(campaign.pk)  # the task the resume handed to a worker
    assert status(campaign) == Campaign.Status.SENDING
    assert campaign.total == len(ADDRESSES)
    once_each(campaign)
    drain(campaign.pk)
    assert sorted(sink.recipients()) == sorted(ADDRESSES)
    assert status(campaign) == Campaign.Status.FINISHED


@pytest.mark.django_db
def test_cancel_while_starting_ends_the_snapshot_and_mails_nobody(sink, relay, make_campaign, settings):
    settings.HERALD_START_CHUNK = 2
    campaign = make_campaign(ADDRESSES)
    lifecycle.start_in_background(campaign.pk)

    lifecycle.prepare(campaign.pk, on_chunk=lambda cursor, upto: lifecycle.cancel_campaign(campaign.pk))
    start_campaign(campaign.pk)  # a second delivery of the task changes nothing

    assert status(campaign) == Campaign.Status.CANCELLED
    counts = lifecycle.counts(campaign.pk)
    assert (counts["cancelled"], counts["queued"], counts["total"]) == (2, 0, 2)
    with pytest.raises(LifecycleError, match="is cancelled"):
        lifecycle.resume_campaign(campaign.pk)
    drain(campaign.pk)
    assert sink.recipients() == []


@pytest.mark.django_db
def test_a_start_that_lost_its_worker_is_handed_on_and_resumes_without_duplicates(sink, relay, make_campaign, settings):
    settings.HERALD_START_CHUNK = 2
    campaign = make_campaign(ADDRESSES)
    lifecycle.start_in_background(campaign.pk)
    chunks = []

    def die_after_two_chunks(cursor, upto):
        chunks.append(cursor)
        if len(chunks) == 2:
            raise WorkerLost

    with pytest.raises(WorkerLost):
        lifecycle.prepare(campaign.pk, on_chunk=die_after_two_chunks)
    assert status(campaign) == Campaign.Status.STARTING and Send.objects.filter(campaign=campaign).count() == 4

    # Within the stall period the tick leaves it alone; after it, hands it on once.
    assert scheduler.dispatch_due().restarted == []
    later = timezone.now() + timedelta(seconds=lifecycle.STALLED_START_SECONDS + 1)
    assert scheduler.dispatch_due(now=later).restarted == [campaign.pk]
    assert scheduler.dispatch_due(now=later).restarted == []
    start_campaign(campaign.pk)

    assert status(campaign) == Campaign.Status.SENDING and campaign.total == len(ADDRESSES)
    once_each(campaign)
    drain(campaign.pk)
    assert sorted(sink.recipients()) == sorted(ADDRESSES)


@pytest.mark.django_db
def test_contacts_added_while_starting_wait_for_the_next_campaign(make_campaign, settings):
    settings.HERALD_START_CHUNK = 2
    campaign = make_campaign(ADDRESSES)
    lifecycle.start_in_background(campaign.pk)
    late = Contact.objects.create(email="late@example.com")
    campaign.lists.get().subscriptions.create(contact=late)

    start_campaign(campaign.pk)

    once_each(campaign)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_send_answers_at_once_and_a_real_worker_snapshots_and_sends(client, tmp_path, sink, relay, make_campaign):
    campaign = make_campaign(ADDRESSES, html_body=SENDABLE_HTML)
    response = client.post(f"/api/v1/campaigns/{campaign.pk}/send", **bearer())

    assert response.status_code == 202
    assert response.json()["status"] == "starting" and response.json()["recipients"] == 0
    assert not Send.objects.filter(campaign=campaign).exists()  # no worker yet: the request snapshotted nobody
    worker = Worker("starter", tmp_path, HERALD_START_CHUNK=2).wait_ready()
    try:
        wait_until(lambda: status(campaign) == Campaign.Status.FINISHED, timeout=60, message="campaign finished")
    finally:
        worker.stop()
    assert sorted(sink.recipients()) == sorted(ADDRESSES)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_worker_killed_in_the_middle_of_a_chunk_loses_and_duplicates_nobody(tmp_path, sink, relay, make_campaign):
    campaign = make_campaign(ADDRESSES)
    lifecycle.start_in_background(campaign.pk)
    first = second = None
    try:
        # The operator's row lock, taken before any worker runs, holds the worker between
        # writing its first chunk and committing it.
        with transaction.atomic():
            Campaign.objects.select_for_update().get(pk=campaign.pk)
            first = Worker("doomed", tmp_path, HERALD_START_CHUNK=3).wait_ready()
            wait_until(_waiting_for_a_lock, timeout=90, message="the worker writing its first chunk")
            first.kill()
        assert status(campaign) == Campaign.Status.STARTING
        # Its session ends when PostgreSQL finds the client gone; the uncommitted chunk goes with it.
        wait_until(lambda: not Send.objects.filter(campaign=campaign).exists() and not _waiting_for_a_lock(),
                   timeout=90, message="the killed worker's chunk rolled back")

        later = timezone.now() + timedelta(seconds=lifecycle.STALLED_START_SECONDS + 1)
        assert scheduler.dispatch_due(now=later).restarted == [campaign.pk]
        second = Worker("heir", tmp_path, HERALD_START_CHUNK=3).wait_ready()
        wait_until(lambda: status(campaign) == Campaign.Status.FINISHED, timeout=90, message="campaign finished")
    finally:
        for worker in (first, second):
            if worker:
                worker.stop()
    assert sorted(sink.recipients()) == sorted(ADDRESSES)


def _waiting_for_a_lock():
    """Whether another session of this test database waits for a lock (other databases on the server may, too)."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")  # inside a transaction the view would stay as first read
        cur.execute("""SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()""")
        return cur.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_a_pause_racing_a_chunk_keeps_every_recipient_once(sink, relay, make_campaign, settings):
    """The chunk commits only while the campaign is starting: a pause meanwhile rolls it back, resume redoes it."""
    settings.HERALD_START_CHUNK = 3
    campaign = make_campaign(ADDRESSES)
    lifecycle.start_in_background(campaign.pk)
    outcome = {}

    def worker():
        try:
            outcome["campaign"] = lifecycle.prepare(campaign.pk)
        finally:
            connection.close()

    with transaction.atomic():
        Campaign.objects.select_for_update().get(pk=campaign.pk)
        thread = threading.Thread(target=worker)
        thread.start()
        wait_until(_waiting_for_a_lock, timeout=90, message="the chunk waiting to commit")
        # The operator pauses while the chunk is written (the UPDATE runs under the row lock held here).
        Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.PAUSED)
    thread.join(30)

    assert outcome["campaign"].status == Campaign.Status.PAUSED
    assert not Send.objects.filter(campaign=campaign).exists()
    lifecycle.resume_campaign(campaign.pk)  # in these tests hand-offs wait on the broker: run the task here
    start_campaign(campaign.pk)
    once_each(campaign)
    drain(campaign.pk)
    assert sorted(sink.recipients()) == sorted(ADDRESSES)
