"""Who holds a claimed send: lease tokens, renewal on a timer, and rows that keep killing their worker."""

import collections
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import OperationalError, connection
from django.utils import timezone

from campaigns.models import Campaign, Suppression
from delivery import engine, ledger, lifecycle
from delivery.classify import SENT
from delivery.models import Send
from tests.delivery.conftest import drain
from tests.support.smtp import Rules, Sink


def later():
    """Past every lease taken now: what the sweeper sees when a worker stalled."""
    return timezone.now() + timedelta(seconds=ledger.lease_seconds() + 1)


@pytest.mark.django_db
def test_a_stale_worker_never_overwrites_the_new_owners_outcome(make_relay, make_campaign):
    addresses = ["one@example.com", "two@example.com", "gone@example.com"]
    with Sink(rules=Rules(rcpt={"gone@example.com": "550 5.1.1 no such user"})) as server:
        make_relay(server.port)
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        ids = list(Send.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True))

        stale = ledger.claim(ids)  # worker A, stuck in an SMTP timeout past its lease
        assert sorted(ledger.sweep(now=later())) == ids
        fresh = ledger.claim(ids)  # worker B takes the rows over

        # A wakes up while B holds the rows: every write it tries names its
        # own claim, which it no longer holds.
        ledger.extend_lease(stale)
        ledger.release(stale)
        written = ledger.write_back([ledger.Result(r, SENT, 250, "2.0.0 queued", "<late@herald>") for r in stale])
        assert Send.objects.filter(campaign=campaign, status="sending").count() == 3

        engine._send_group(fresh)  # B sends and records what the server said
        assert sorted(server.recipients()) == ["one@example.com", "two@example.com"]

    rows = {s.email: s for s in Send.objects.filter(campaign=campaign)}
    assert {e: s.status for e, s in rows.items()} == {
        "one@example.com": "sent", "two@example.com": "sent", "gone@example.com": "bounced"}
    assert rows["gone@example.com"].smtp_code == 550
    assert all(s.message_id != "<late@herald>" and s.attempts == 1 for s in rows.values())
    assert Suppression.objects.filter(email_key="gone@example.com").exists()
    assert written == set()


@pytest.mark.django_db(transaction=True)
def test_a_slow_batch_keeps_its_claim_while_the_sweeper_runs(make_relay, make_campaign, settings):
    settings.HERALD_SEND_LEASE = 2
    addresses = [f"slow{i}@example.com" for i in range(8)]
    with Sink(rules=Rules(delay=0.4)) as server:  # 3.2 s of replies: longer than the lease
        make_relay(server.port)
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        ids = list(Send.objects.filter(campaign=campaign).values_list("id", flat=True))
        swept, done = [], threading.Event()

        def beat():
            try:
                while not done.wait(0.2):
                    swept.extend(ledger.sweep())
            finally:
                connection.close()

        sweeper = threading.Thread(target=beat)
        sweeper.start()
        try:
            engine.send_batch(ids)
        finally:
            done.set()
            sweeper.join()
        received = server.recipients()

    assert swept == []  # the timer renewed the lease; nothing was handed to anyone else
    assert sorted(received) == sorted(addresses)
    assert lifecycle.counts(campaign.pk)["sent"] == 8


class WorkerDied(BaseException):
    """What a segfault or the OOM killer looks like from inside: nothing after it runs."""


@pytest.mark.django_db
def test_a_message_that_kills_its_worker_fails_after_five_claims(make_relay, make_campaign, monkeypatch):
    addresses = [f"r{i}@example.com" for i in range(10)]
    poison = "r5@example.com"
    build = engine._Builder._build

    def crashing_build(self, row):
        if row.email == poison:
            raise WorkerDied
        return build(self, row)

    monkeypatch.setattr(engine._Builder, "_build", crashing_build)
    # Outcomes are written back after WRITE_CHUNK messages or WRITE_SECONDS, whichever comes first. On a busy
    # machine the five messages before the poison could take a second and be written back before it kills the
    # worker, leaving it the only suspect (one death fewer). Here the chunk ends by its count alone.
    monkeypatch.setattr(engine, "WRITE_SECONDS", 600.0)
    deaths = 0
    with Sink() as server:
        make_relay(server.port)
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        for _ in range(20):
            ids = list(Send.objects.filter(campaign=campaign, status="queued").values_list("id", flat=True))
            if not ids:
                break
            try:
                engine.send_batch(ids)
            except WorkerDied:
                deaths += 1
                ledger.sweep(now=later())  # its lease runs out
        received = server.recipients()

    row = Send.objects.get(campaign=campaign, email=poison)
    assert row.status == "failed"
    assert row.smtp_reply == "claimed 5 times without an outcome: the worker died each time"
    assert deaths == 6  # at claim counts 1, 1 (in the batch), then 2, 3, 4, 5 (alone); the sixth claim fails it
    counts = collections.Counter(received)
    assert set(counts) == set(addresses) - {poison}
    # Only what went out before the first death, unrecorded, was sent twice.
    assert sum(n - 1 for n in counts.values()) <= engine.WRITE_CHUNK
    assert lifecycle.counts(campaign.pk)["sent"] == 9
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED


@pytest.mark.django_db
def test_rows_handed_back_for_a_throttle_are_never_taken_for_poison(make_relay, make_campaign):
    with Sink() as server:
        make_relay(server.port)
        campaign = make_campaign(["patient@example.com"])
        lifecycle.start_campaign(campaign.pk)
        ids = list(Send.objects.values_list("id", flat=True))
        for _ in range(8):
            ledger.release(ledger.claim(ids), 0.0)
        drain(campaign.pk)
        assert server.recipients() == ["patient@example.com"]


@pytest.mark.django_db
def test_a_lease_shorter_than_one_chunk_of_smtp_timeouts_is_refused(settings):
    settings.HERALD_SMTP_TIMEOUT = 0  # RFC 5321 minimums: one message may take 22 minutes
    settings.HERALD_SEND_LEASE = 600
    with pytest.raises(SystemCheckError, match="HERALD_SEND_LEASE is 600 s, shorter than the worst-case send chunk"):
        call_command("check")
    settings.HERALD_SMTP_TIMEOUT = 60
    call_command("check")


@pytest.mark.django_db
def test_outcomes_that_cannot_be_recorded_are_never_handed_back_for_a_resend(make_relay, make_campaign, monkeypatch):
    addresses = [f"w{i:02d}@example.com" for i in range(25)]

    def database_gone(*args):
        raise OperationalError("terminating connection due to administrator command")

    # PostgreSQL goes away for longer than the write back keeps trying.
    monkeypatch.setattr(ledger, "_write_back_postgres", database_gone)
    with Sink() as server:
        make_relay(server.port)
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        ids = list(Send.objects.filter(campaign=campaign).values_list("id", flat=True))
        with pytest.raises(OperationalError):
            engine.send_batch(ids)
        delivered = set(server.recipients())

    rows = dict(Send.objects.filter(campaign=campaign).values_list("email", "status"))
    assert len(delivered) == engine.WRITE_CHUNK  # the first chunk went out
    # What went out stays claimed (it may have been delivered) until its lease runs
    # out; only what never reached the wire goes back to the queue now.
    assert {e for e, s in rows.items() if s == "sending"} == delivered
    assert {e for e, s in rows.items() if s == "queued"} == set(addresses) - delivered
