"""Group commit: many messages stored in one transaction, each with its own recipients."""

from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from delivery.models import Send
from submission.models import OutboundMessage
from submission.store import Accepted, store_batch, stored_not_handed_off
from tests.submission.conftest import make_credential

pytestmark = pytest.mark.django_db


def test_a_batch_keeps_every_message_with_its_own_recipients(alice):
    items = [
        Accepted(alice.pk, f"app{n}@example.com", [f"r{n}-{k}@Dest{n}.test" for k in range(n + 1)], f"body {n}\r\n".encode(),
                 tag=f"t{n}")
        for n in range(5)
    ]
    queued = store_batch(items)
    assert len(queued) == 1 + 2 + 3 + 4 + 5
    for n, item in enumerate(items):
        message = OutboundMessage.objects.get(pk=item.outbound_id)
        assert (message.mail_from, bytes(message.raw), message.tag, message.size) == (
            f"app{n}@example.com", f"body {n}\r\n".encode(), f"t{n}", len(item.raw))
        sends = Send.objects.filter(outbound_id=item.outbound_id).order_by("id")
        assert [s.email for s in sends] == item.rcpt_tos
        assert sorted(item.send_ids) == [s.pk for s in sends]
        assert {s.domain for s in sends} == {f"dest{n}.test"}


@pytest.mark.django_db(transaction=True)
def test_nothing_is_stored_when_the_batch_fails():
    items = [Accepted(make_credential().pk, "a@example.com", ["b@dest.test"], b"x\r\n"),
             Accepted(999_999, "a@example.com", ["c@dest.test"], b"x\r\n")]  # no such credential
    with pytest.raises(IntegrityError):  # foreign keys are checked at commit
        store_batch(items)
    assert not OutboundMessage.objects.exists() and not Send.objects.exists()


def test_a_restart_hands_off_recent_due_submitted_sends_and_leaves_the_rest(alice, settings):
    """What a restarted server enqueues: its recent queued sends, not the sweeper's older ones nor reserved ones."""
    settings.HERALD_ORPHAN_GRACE = 300
    recent = store_batch([Accepted(alice.pk, "a@example.com", ["r1@dest.test", "r2@dest.test"], b"x\r\n")])
    [old, later, sent] = store_batch([Accepted(alice.pk, "a@example.com", ["o@dest.test", "l@dest.test", "s@dest.test"],
                                               b"y\r\n")])
    now = timezone.now()
    Send.objects.filter(pk=old).update(next_attempt_at=now - timedelta(seconds=301))  # the sweeper's
    Send.objects.filter(pk=later).update(next_attempt_at=now + timedelta(seconds=60))  # waits for its slot
    Send.objects.filter(pk=sent).update(status=Send.Status.SENT)
    Send.objects.create(email="c@dest.test", domain="dest.test", status=Send.Status.QUEUED)  # no submitted message
    assert stored_not_handed_off(now) == recent
