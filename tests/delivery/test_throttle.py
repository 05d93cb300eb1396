"""Token buckets and connection slots, in the real Redis."""

import pytest

from delivery import adaptive, engine, lifecycle, throttle
from delivery.models import DomainThrottle, Period, Send
from delivery.throttle import Limit, take_tokens
from tests.support.smtp import Rules, Sink


def test_tokens_are_taken_in_batches_up_to_the_burst():
    limit = Limit("domain:slow.example", rate=1 / 3600, burst=10)
    first = take_tokens(limit, 25)
    assert first.granted == 10
    second = take_tokens(limit, 5)
    assert second.granted == 0 and second.wait > 3000  # about an hour for the next token
    throttle.give_back(limit, 3)
    assert take_tokens(limit, 5).granted == 3


def test_unlimited_grants_everything():
    assert take_tokens(Limit("domain:free.example", 0, 0), 500).granted == 500


def test_connection_slots_are_capped_across_holders():
    assert throttle.acquire_slot("relay:1", 2, "worker-a", 30)
    assert throttle.acquire_slot("relay:1", 2, "worker-b", 30)
    assert not throttle.acquire_slot("relay:1", 2, "worker-c", 30)
    assert throttle.acquire_slot("relay:1", 2, "worker-a", 30)  # refreshing a held slot
    throttle.release_slot("relay:1", "worker-a")
    assert throttle.acquire_slot("relay:1", 2, "worker-c", 30)


@pytest.mark.django_db
def test_a_421_slows_the_domain_group_and_sends_the_rest_later(make_relay, make_campaign):
    row = DomainThrottle.objects.create(name="example", domains="example.com, example.net", rate=100, period=Period.SECOND)
    addresses = [f"t{i}@example.com" for i in range(6)]
    with Sink(rules=Rules(data={"t3@example.com": "421 4.7.0 too many messages, slow down"})) as server:
        make_relay(server.port)
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        engine.send_batch(list(Send.objects.values_list("id", flat=True)))
        received = server.recipients()
    throttled = Send.objects.get(email="t3@example.com")
    assert throttled.status == "deferred" and throttled.smtp_code == 421
    # Sends go in id order: those before the 421 went out, the rest were handed back.
    before = Send.objects.filter(pk__lt=throttled.pk)
    after = Send.objects.filter(pk__gt=throttled.pk)
    assert sorted(received) == sorted(before.values_list("email", flat=True))
    assert {s.status for s in before} <= {"sent"}
    assert {s.status for s in after} <= {"queued"}
    assert all(s.next_attempt_at > throttled.first_attempt_at for s in after)
    assert set(after.values_list("attempts", flat=True)) <= {0}  # handed back, not failed
    assert adaptive.state(f"throttle:{row.pk}").rate == 50
