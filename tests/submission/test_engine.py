"""Submitted messages go out through the engine: a real Celery worker sending into an SMTP sink."""

import signal
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import dispatch, ledger, routing, tokens
from delivery.models import Send
from tests.delivery.workers import Worker
from tests.submission.conftest import ServerProcess, connect, make_credential, message
from tests.support.smtp import Rules, Sink
from tests.support.wait import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def relay_to(loopback_relay):
    def point(port):
        loopback_relay.port = port
        loopback_relay.save()
        routing.forget_relay()

    return point


def all_sent(count):
    return Send.objects.filter(status=Send.Status.SENT).count() == count


def test_submitted_message_is_delivered_with_verp_and_without_internal_headers(tls_files, client_tls, redis_client,
                                                                                transactional_db, relay_to, tmp_path):
    # The server as operators run it: its own process, handing sends to the engine from its helper process.
    make_credential(hasher="pbkdf2_sha256")
    with Sink() as sink:
        relay_to(sink.port)
        server = ServerProcess(tls_files)
        worker = Worker("submit", tmp_path).wait_ready()
        try:
            with connect(server, client_tls) as smtp:
                smtp.sendmail("alice@example.com", ["bob@dest.test"],
                              message(extra="X-Herald-Tag: receipts\r\nBcc: boss@example.com\r\n"))
            sink.wait_for(1, timeout=60)
            wait_until(lambda: all_sent(1), timeout=30, message="the send recorded as sent")
        finally:
            worker.stop()
            server.stop()
    got = sink.received[0]
    send = Send.objects.get()
    assert got.rcpt_tos == ["bob@dest.test"] and got.mail_from == tokens.verp_address(send.pk)
    assert got.message["X-Herald-Tag"] is None and got.message["Bcc"] is None
    assert got.message["Subject"] == "Hello" and got.message["Message-ID"]
    assert send.message_id == got.message["Message-ID"].strip("<>")


def test_worker_killed_after_the_250_still_delivers(server, client_tls, alice, relay_to, tmp_path, settings):
    addresses = [f"user{i}@dest{i % 3}.test" for i in range(10)]
    # Slow replies keep the worker busy long enough to kill it mid-delivery.
    with Sink(rules=Rules(delay=0.5)) as sink:
        relay_to(sink.port)
        with connect(server, client_tls) as smtp:
            for address in addresses:
                smtp.sendmail("alice@example.com", [address], message(to=address))
        first = Worker("doomed", tmp_path).wait_ready()
        second = None
        try:
            wait_until(lambda: Send.objects.filter(status=Send.Status.SENDING).exists() or sink.received, timeout=60,
                       message="the worker to start delivering")
            first.kill(signal.SIGKILL)
            assert Send.objects.exclude(status=Send.Status.SENT).exists(), "the worker must die before it is done"
            # The sweeper (beat, every 30 s) returns expired leases and forgotten queued rows.
            later = timezone.now() + timedelta(seconds=ledger.lease_seconds() + ledger.orphan_grace() + 1)
            dispatch.enqueue_sends(ledger.sweep(now=later))
            second = Worker("survivor", tmp_path).wait_ready()
            wait_until(lambda: all_sent(len(addresses)), timeout=90, message="every accepted message delivered")
        finally:
            first.stop()
            if second:
                second.stop()
        assert set(sink.recipients()) == set(addresses)
