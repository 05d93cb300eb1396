"""Events for what the engine learned at send time (delivery.signals.send_outcome)."""

import pytest

from campaigns.models import Suppression
from delivery.signals import send_outcome
from tracking.models import Event

pytestmark = pytest.mark.django_db


def test_5xx_at_send_time_is_a_hard_bounce_event_and_suppresses(bob_send):
    send_outcome.send(sender=None, send=bob_send, outcome="bounced", code=550, reply="5.1.1 <bob@example.net>: user unknown")
    event = Event.objects.get()
    assert (event.type, event.send_id, event.status, event.source) == ("bounce", bob_send.pk, "5.1.1", "smtp")
    assert event.reason == "reply 550 5.1.1 at send time: hard"
    assert Suppression.objects.get().reason == "hard_bounce"
    # The engine may report the same outcome twice (a retried write-back): one Event.
    send_outcome.send(sender=None, send=bob_send, outcome="bounced", code=550, reply="5.1.1 user unknown")
    assert Event.objects.count() == 1


def test_mailbox_full_at_rcpt_is_soft(bob_send):
    send_outcome.send(sender=None, send=bob_send, outcome="bounced", code=552, reply="5.2.2 mailbox full")
    assert Event.objects.get().type == "soft_bounce"
    assert not Suppression.objects.exists()


def test_giving_up_is_a_failed_event_and_sent_is_nothing(alice_send, bob_send):
    send_outcome.send(sender=None, send=bob_send, outcome="failed", code=451, reply="4.3.0 try later")
    send_outcome.send(sender=None, send=alice_send, outcome="sent", code=250, reply="2.0.0 queued")
    send_outcome.send(sender=None, send=alice_send, outcome="deferred", code=451, reply="4.3.0 try later")
    assert list(Event.objects.values_list("type", "send_id")) == [("failed", bob_send.pk)]
