"""Deferred sends come back with exponential backoff and fail at the give-up age; time is passed in, not slept."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from delivery import ledger, lifecycle
from delivery.classify import BOUNCED, DEFERRED, FAILED, SENT, classify_reply, next_attempt, retry_delay
from delivery.models import Send
from tests.delivery.conftest import drain
from tests.support.smtp import Rules, Sink

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("code", "text", "status", "suppress", "throttle"),
    [
        (250, "2.0.0 queued as 1234", SENT, False, False),
        (451, "4.3.0 try again later", DEFERRED, False, False),
        (452, "4.2.2 mailbox full", DEFERRED, False, False),
        (452, "4.2.2 The email account that you tried to reach is over quota, rate of arrival exceeded", DEFERRED, False, False),
        (451, "4.7.1 Greylisted, please try again later", DEFERRED, False, False),
        (450, "4.7.1 <a@example.com>: Recipient address rejected: Greylisted for 300 seconds", DEFERRED, False, False),
        (421, "4.7.0 too many connections, slow down", DEFERRED, False, True),
        (421, "4.3.2 Service not available, closing transmission channel", DEFERRED, False, True),
        (450, "4.7.1 rate limited", DEFERRED, False, True),
        (451, "4.7.0 Rate limit exceeded, please slow down", DEFERRED, False, True),
        (450, "4.7.28 Our system has detected an unusual rate of unsolicited mail", DEFERRED, False, True),
        (451, "4.7.0 Too many messages from your IP, try again later", DEFERRED, False, True),
        (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages",
         DEFERRED, False, True),
        (451, "4.7.1 Service unavailable, try again later", DEFERRED, False, False),
        (550, "5.1.1 <x@example.com>: Recipient address rejected", BOUNCED, True, False),
        (550, "Requested action not taken: mailbox unavailable, user unknown", BOUNCED, True, False),
        (554, "5.7.1 Service unavailable; client host blocked using Spamhaus", FAILED, False, False),
        (552, "5.3.4 message too big", FAILED, False, False),
        (None, "connection lost", DEFERRED, False, False),
    ],
)
def test_replies_are_classified(code, text, status, suppress, throttle):
    outcome = classify_reply(code, text)
    assert (outcome.status, outcome.suppress, outcome.throttle) == (status, suppress, throttle)


def test_backoff_doubles_with_jitter_up_to_the_cap(settings):
    settings.HERALD_RETRY_FIRST_DELAY = 300
    settings.HERALD_RETRY_MAX_DELAY = 3600
    delays = [retry_delay(n) for n in range(1, 8)]
    assert 240 <= delays[0] <= 360
    assert 480 <= delays[1] <= 720
    assert all(2880 <= d <= 4320 for d in delays[4:])


def test_next_attempt_stops_at_the_give_up_age(settings):
    settings.HERALD_GIVE_UP_AFTER = 3600
    first = timezone.now()
    assert next_attempt(first, 1, first) is not None
    last = next_attempt(first, 10, first + timedelta(seconds=3500))
    assert last == first + timedelta(seconds=3600)  # one try at the give-up age, not beyond
    assert next_attempt(first, 11, first + timedelta(seconds=3600)) is None


def test_a_deferred_send_is_retried_when_due_then_delivered(make_relay, make_campaign, settings):
    settings.HERALD_RETRY_FIRST_DELAY = 600
    with Sink(rules=Rules(defer_first={"later@example.com"})) as server:
        make_relay(server.port)
        campaign = make_campaign(["later@example.com", "now@example.com"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        send = Send.objects.get(email="later@example.com")
        assert send.status == "deferred" and send.attempts == 1
        wait = (send.next_attempt_at - send.first_attempt_at).total_seconds()
        assert 480 <= wait <= 720

        # Not due yet: nothing moves.
        assert ledger.due_retries(now=send.next_attempt_at - timedelta(seconds=1)) == []
        # Due: back on the queue and delivered.
        assert ledger.due_retries(now=send.next_attempt_at) == [send.pk]
        drain(campaign.pk)
        assert sorted(server.recipients()) == ["later@example.com", "now@example.com"]

    send.refresh_from_db()
    assert send.status == "sent" and send.attempts == 2
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED


def test_a_send_deferred_past_the_give_up_age_fails(make_relay, make_campaign, settings):
    settings.HERALD_GIVE_UP_AFTER = 3600
    with Sink(rules=Rules(data={"never@example.com": "451 4.3.0 still busy"})) as server:
        make_relay(server.port)
        campaign = make_campaign(["never@example.com"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        send = Send.objects.get()
        assert send.status == "deferred"
        later = send.first_attempt_at + timedelta(seconds=3601)
        ledger.due_retries(now=later)
        drain(campaign.pk, now=later)

    send.refresh_from_db()
    assert send.status == "failed" and send.attempts == 2
    assert send.smtp_reply.startswith("gave up after 3600s: 451 4.3.0 still busy")
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED
