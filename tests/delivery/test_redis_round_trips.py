"""Redis is asked per batch, per domain group and per write-back, never per recipient: planning and sending make
the same round trips for a batch of 10 and of 40 when both are written back in one chunk."""

import pytest
from redis.connection import AbstractConnection

from delivery import dispatch, engine, heartbeat, lifecycle, routing
from delivery.models import Send

pytestmark = pytest.mark.django_db

_HANDSHAKE = {"HELLO", "CLIENT", "SELECT", "AUTH", "PING"}


@pytest.fixture
def round_trips(monkeypatch):
    """Every command or pipeline this process sends to Redis, as (first word, key)."""
    sent = []
    original = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(command)
        return original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def sent_through(round_trips, make_campaign, n, name):
    campaign = make_campaign([f"{name}{i}@example.com" for i in range(n)], name=name)
    lifecycle.start_campaign(campaign.pk)
    ids = list(Send.objects.filter(campaign=campaign).values_list("id", flat=True))
    del round_trips[:]
    assert dispatch.enqueue_campaign(campaign.pk) == 1  # planned and put on the broker as one batch
    planning = _work(round_trips)
    del round_trips[:]
    routing.refresh()
    engine.send_batch(ids)
    sending = _work(round_trips)
    assert Send.objects.filter(campaign=campaign, status="sent").count() == n
    return planning, sending


def test_planning_and_sending_ask_redis_per_batch_not_per_row(round_trips, relay, make_campaign, monkeypatch):
    # Outcomes are written back every 10 messages and every second, and pause flags read every 0.1 s:
    # here one write-back and one read per batch, so whatever is left would be per row.
    monkeypatch.setattr(engine, "WRITE_CHUNK", 1000)
    monkeypatch.setattr(engine, "WRITE_SECONDS", 3600.0)
    monkeypatch.setattr(engine, "STOP_CHECK_SECONDS", 3600.0)
    sent_through(round_trips, make_campaign, 3, "warm")  # the first batch compiles, connects and loads scripts
    small = sent_through(round_trips, make_campaign, 10, "small")
    large = sent_through(round_trips, make_campaign, 40, "large")
    assert large[0] == small[0], "planning 40 rows asks Redis what planning 10 does"
    assert [n.split(":")[0] for n in large[1]] == [n.split(":")[0] for n in small[1]], (small[1], large[1])
    assert large[1].count(f"GET {routing.RELAY_GENERATION_KEY}") == 1, "the relay generation is read once per batch"


def _work(commands):
    """The round trips that do the work: the liveness key is refreshed by a timer thread, whatever the batch
    does, and a connection the pool opens meanwhile says hello; neither depends on the rows."""
    return [name for name in _names(commands)
            if not name.split(" ")[-1].startswith(heartbeat.KEY) and name.split(" ")[0] not in _HANDSHAKE]


def _flat(command):
    return b"".join(command) if isinstance(command, list) else command


def _names(commands):
    """Each round trip as its commands' first words and keys, for a readable failure."""
    out = []
    for c in commands:
        words = [w for w in _flat(c).split(b"\r\n") if w and w[:1] not in (b"*", b"$")]
        out.append(b" ".join(words[:2]).decode(errors="replace"))
    return out
