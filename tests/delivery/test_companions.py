"""Submitted mail arrives a message at a time, one task each: a worker that takes one sends the others to the
same domains that wait too, over its connection, and their own tasks then find nothing left to do."""

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import engine
from delivery.models import Send
from submission.store import Accepted, store_batch
from tests.submission.conftest import make_credential

pytestmark = pytest.mark.django_db


def submit(credential, to):
    (send_id,) = store_batch([Accepted(credential.pk, "app@shop.herald.example", [to], b"Subject: hi\r\n\r\nhi\r\n",
                                       from_domain="shop.herald.example")])
    return send_id


def test_one_task_of_submitted_mail_takes_the_waiting_mail_to_its_domain_along(sink, relay):
    credential = make_credential(domains="shop.herald.example")
    ids = [submit(credential, f"r{i}@example.com") for i in range(12)]
    other = submit(credential, "x@example.org")
    later = submit(credential, "later@example.com")
    Send.objects.filter(pk=later).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    held = submit(credential, "held@example.com")
    Send.objects.filter(pk=held).update(hold=1)

    engine.send_batch([ids[0]])

    # The first message's task sent the eleven others to example.com as well, over one connection.
    assert sorted(sink.recipients()) == sorted(f"r{i}@example.com" for i in range(12))
    assert len({item.peer for item in sink.received}) == 1
    assert set(Send.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"sent"}
    # Another domain, a retry not yet due and a held message keep their turn.
    assert dict(Send.objects.filter(pk__in=[other, later, held]).values_list("email", "status")) == {
        "x@example.org": "queued", "later@example.com": "queued", "held@example.com": "queued"}
    # The other messages' own tasks come later and find them sent: nothing is sent twice.
    for send_id in ids[1:]:
        engine.send_batch([send_id])
    assert len(sink.recipients()) == 12


def test_a_campaign_batch_takes_no_submitted_mail_along(sink, relay, make_campaign):
    from delivery import lifecycle
    from tests.delivery.conftest import SENDABLE_HTML

    credential = make_credential(domains="shop.herald.example")
    submitted = submit(credential, "app-user@example.com")
    campaign = make_campaign(["reader@example.com"], html_body=SENDABLE_HTML)
    lifecycle.start_campaign(campaign.pk)

    engine.send_batch(list(Send.objects.filter(campaign=campaign).values_list("id", flat=True)))

    assert sink.recipients() == ["reader@example.com"]
    assert Send.objects.get(pk=submitted).status == "queued"
