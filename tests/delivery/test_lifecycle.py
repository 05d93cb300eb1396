"""Start, pause, resume, cancel: conditional transitions, nothing resent, counts that always add up."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from campaigns.models import Campaign, Contact, MailingList, Subscription, Suppression
from delivery import engine, ledger, lifecycle, planner
from delivery.lifecycle import LifecycleError
from delivery.models import Send
from tests.delivery.conftest import drain, statuses
from tests.support.smtp import Rules, Sink

pytestmark = pytest.mark.django_db


def adds_up(campaign_id):
    counts = lifecycle.counts(campaign_id)
    parts = sum(v for k, v in counts.items() if k != "total")
    assert counts["total"] == parts
    return counts


def test_snapshot_skips_unsubscribed_blocklisted_suppressed_and_duplicates(make_campaign):
    campaign = make_campaign(["a@example.com", "b@example.com", "c@example.com", "d@example.com", "e@example.com"])
    other = MailingList.objects.create(name="Second list", optin=MailingList.OptIn.DOUBLE)
    campaign.lists.add(other)
    for contact in Contact.objects.all():  # everyone is on both lists: still one send each
        Subscription.objects.create(contact=contact, mailing_list=other, status=Subscription.Status.CONFIRMED)
    Contact.objects.filter(email_key="b@example.com").update(status=Contact.Status.BLOCKLISTED)
    Subscription.objects.filter(contact__email_key="c@example.com").update(status=Subscription.Status.UNSUBSCRIBED)
    Suppression.objects.create(email="D@example.com", reason="complaint")
    late = Contact.objects.create(email="f@example.com")
    Subscription.objects.create(contact=late, mailing_list=other, status=Subscription.Status.UNCONFIRMED)

    assert planner.count_audience(campaign) == 2
    lifecycle.start_campaign(campaign.pk)
    assert sorted(statuses(campaign.pk)) == ["a@example.com", "e@example.com"]
    campaign.refresh_from_db()
    assert campaign.total == 2 and campaign.status == Campaign.Status.SENDING


def test_only_a_draft_or_scheduled_campaign_starts(make_campaign):
    campaign = make_campaign(["a@example.com"])
    lifecycle.start_campaign(campaign.pk)
    with pytest.raises(LifecycleError, match=f"campaign {campaign.pk} is sending; it can start only when draft"):
        lifecycle.start_campaign(campaign.pk)
    with pytest.raises(LifecycleError, match="does not exist"):
        lifecycle.pause_campaign(999999)
    assert Send.objects.filter(campaign=campaign).count() == 1


def test_schedule_needs_an_aware_time(make_campaign):
    campaign = make_campaign(["a@example.com"])
    with pytest.raises(LifecycleError, match="time zone"):
        lifecycle.schedule_campaign(campaign.pk, timezone.now().replace(tzinfo=None))
    at = timezone.now() + timedelta(hours=1)
    assert lifecycle.schedule_campaign(campaign.pk, at).status == Campaign.Status.SCHEDULED


def test_pause_stops_sending_and_resume_continues_without_resending(sink, relay, make_campaign):
    addresses = [f"p{i}@example.com" for i in range(20)]
    campaign = make_campaign(addresses)
    lifecycle.start_campaign(campaign.pk)
    ids = list(Send.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True))
    engine.send_batch(ids[:8])
    lifecycle.pause_campaign(campaign.pk)
    engine.send_batch(ids)  # a task already on the queue: claims nothing
    assert len(sink.recipients()) == 8
    counts = adds_up(campaign.pk)
    assert (counts["sent"], counts["queued"]) == (8, 12)

    lifecycle.resume_campaign(campaign.pk)
    drain(campaign.pk)
    assert sorted(sink.recipients()) == sorted(addresses)  # each exactly once
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED
    assert adds_up(campaign.pk)["sent"] == 20


def test_cancel_leaves_unsent_rows_cancelled(sink, relay, make_campaign):
    campaign = make_campaign([f"c{i}@example.com" for i in range(10)])
    lifecycle.start_campaign(campaign.pk)
    ids = list(Send.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True))
    engine.send_batch(ids[:3])
    claimed = ledger.claim(ids[3:5])  # on the wire when the operator cancels
    lifecycle.cancel_campaign(campaign.pk)
    counts = adds_up(campaign.pk)
    assert (counts["sent"], counts["sending"], counts["cancelled"]) == (3, 2, 5)
    ledger.release(claimed)  # the worker hands them back: they end cancelled, not queued
    ledger.settle_campaigns([campaign.pk])
    counts = adds_up(campaign.pk)
    assert (counts["sent"], counts["cancelled"], counts["queued"]) == (3, 7, 0)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.CANCELLED
    with pytest.raises(LifecycleError, match="is cancelled"):
        lifecycle.resume_campaign(campaign.pk)


def test_expired_leases_return_to_the_queue(sink, relay, make_campaign):
    campaign = make_campaign(["lost@example.com"])
    lifecycle.start_campaign(campaign.pk)
    ledger.claim(list(Send.objects.values_list("id", flat=True)))  # a worker that then dies
    assert ledger.sweep() == []  # lease still valid
    later = timezone.now() + timedelta(seconds=ledger.lease_seconds() + 1)
    assert len(ledger.sweep(now=later)) == 1
    drain(campaign.pk)
    assert sink.recipients() == ["lost@example.com"]


@pytest.mark.django_db(transaction=True)
def test_cancel_in_the_middle_of_a_batch_stops_it_between_two_messages(make_relay, make_campaign):
    addresses = [f"m{i:02d}@example.com" for i in range(40)]
    with Sink(rules=Rules(delay=0.2)) as server:
        make_relay(server.port)
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        ids = list(Send.objects.filter(campaign=campaign).values_list("id", flat=True))
        seen = {}

        def operator():
            try:
                server.wait_for(2, timeout=30)
                lifecycle.cancel_campaign(campaign.pk)
                seen["at_cancel"] = len(server.recipients())
            finally:
                connection.close()

        clicks = threading.Thread(target=operator)
        clicks.start()
        engine.send_batch(ids)  # returns soon after the cancel, not after 40 messages
        clicks.join()
        received = server.recipients()

    assert len(received) - seen["at_cancel"] <= 2  # what was on the wire
    counts = adds_up(campaign.pk)
    assert counts["sent"] == len(received) and counts["cancelled"] == 40 - len(received)
    assert counts["sending"] == counts["queued"] == 0
