"""A campaign through a real SMTP relay (aiosmtpd on loopback), run by the engine in this process."""

import pytest
from django.utils import timezone

from campaigns.models import Campaign, Contact, Suppression
from delivery import engine, lifecycle, throttle
from delivery.models import Send
from delivery.signals import send_outcome
from tests.delivery.conftest import drain, statuses
from tests.delivery.servers import DroppingSink, PipeliningSink
from tests.support.smtp import Rules
from tests.support.wait import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["plain", "pipelining"])
def server_class(request):
    """Each behaviour once with one command per round trip and once pipelined (RFC 2920)."""
    return PipeliningSink if request.param == "pipelining" else DroppingSink


def test_every_recipient_gets_one_personalised_message_over_few_connections(make_relay, make_campaign, server_class):
    addresses = [f"user{i}@example.com" for i in range(30)] + [f"User{i}@Example.org" for i in range(10)]
    campaign = make_campaign(addresses, text_body="Hi {{ contact.first_name }}\n.a line that starts with a dot\n.\nend")

    with server_class() as sink:
        make_relay(sink.port)
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)

    assert sorted(r.lower() for r in sink.recipients()) == sorted(a.lower() for a in addresses)
    first = next(item for item in sink.received if item.rcpt_tos == ["user7@example.com"])
    assert first.message["Subject"] == "Hello user7"
    text = first.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert ".a line that starts with a dot\n.\nend" in text  # dots survive the wire (RFC 5321 4.5.2)
    assert first.mail_from.startswith("bounces+")
    assert len({item.peer for item in sink.received}) <= 2  # one connection per domain batch at most, reused
    sent = Send.objects.get(email="user7@example.com")
    assert sent.status == "sent" and sent.smtp_code == 250 and sent.message_id
    assert f"<{sent.message_id}>" == first.message["Message-ID"]
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED
    counts = lifecycle.counts(campaign.pk)
    assert counts["sent"] == counts["total"] == campaign.total == 40


def test_replies_are_classified_per_recipient(make_relay, make_campaign, server_class):
    rules = Rules(
        rcpt={"gone@example.com": "550 5.1.1 <gone@example.com>: user unknown"},
        data={"busy@example.com": "451 4.3.0 mailbox busy, try later", "spam@example.com": "554 5.7.1 message refused by policy"},
    )
    outcomes = []

    def record(sender, send, outcome, code, reply, **kw):
        outcomes.append((send.email, outcome, code))

    send_outcome.connect(record)
    try:
        with server_class(rules=rules) as server:
            make_relay(server.port)
            names = ["ok", "gone", "busy", "spam", "ok2"]
            campaign = make_campaign([f"{n}@example.com" for n in names])
            lifecycle.start_campaign(campaign.pk)
            drain(campaign.pk)
            got = server.recipients()
    finally:
        send_outcome.disconnect(record)

    assert sorted(got) == ["ok2@example.com", "ok@example.com"]
    assert statuses(campaign.pk) == {
        "ok@example.com": "sent", "ok2@example.com": "sent", "gone@example.com": "bounced",
        "busy@example.com": "deferred", "spam@example.com": "failed",
    }
    # The hard bounce is suppressed for every later campaign; the policy refusal is not.
    assert Suppression.objects.filter(email_key="gone@example.com", reason="hard_bounce").exists()
    assert not Suppression.objects.filter(email_key="spam@example.com").exists()
    assert Contact.objects.get(email_key="gone@example.com").status == Contact.Status.BLOCKLISTED
    assert sorted(outcomes) == [("gone@example.com", "bounced", 550), ("spam@example.com", "failed", 554)]
    busy = Send.objects.get(email="busy@example.com")
    assert busy.smtp_reply.startswith("451 4.3.0") and busy.next_attempt_at > busy.first_attempt_at
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING  # a retry is still due

    later = make_campaign(["gone@example.com", "spam@example.com", "new@example.com"], name="Summer news")
    lifecycle.start_campaign(later.pk)
    assert sorted(statuses(later.pk)) == ["new@example.com", "spam@example.com"]


def test_a_dropped_connection_defers_only_the_message_in_flight(make_relay, make_campaign, server_class):
    rules = Rules(drop_after_data={"drop@example.com"})
    with server_class(rules=rules) as server:
        make_relay(server.port)
        addresses = [f"a{i}@example.com" for i in range(5)] + ["drop@example.com"] + [f"b{i}@example.com" for i in range(5)]
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        got = server.recipients()
        sessions = len(server.sessions)  # SMTP sessions that said EHLO

    assert sorted(got) == sorted(a for a in addresses if a != "drop@example.com")
    # One session until the drop, one more after it: the drop may hit the first
    # message of the batch, so the first session need not deliver anything.
    assert sessions == 2
    result = statuses(campaign.pk)
    assert result.pop("drop@example.com") == "deferred"
    assert set(result.values()) == {"sent"}
    assert "closed the connection" in Send.objects.get(email="drop@example.com").smtp_reply


def test_slow_replies_within_the_timeout_are_waited_for(make_relay, make_campaign, settings):
    settings.HERALD_SMTP_TIMEOUT = 5
    with PipeliningSink(rules=Rules(delay=0.3)) as server:
        make_relay(server.port)
        campaign = make_campaign(["slow1@example.com", "slow2@example.com"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
    assert set(statuses(campaign.pk).values()) == {"sent"}


def test_a_reply_slower_than_the_timeout_is_an_unknown_outcome_retried_later(make_relay, make_campaign, settings):
    settings.HERALD_SMTP_TIMEOUT = 1
    with PipeliningSink(rules=Rules(delay=2.5)) as server:
        make_relay(server.port)
        campaign = make_campaign(["slow@example.com"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
    send = Send.objects.get(email="slow@example.com")
    assert send.status == "deferred"
    assert "did not answer within 1s" in send.smtp_reply


def test_recipients_unsubscribed_after_the_snapshot_are_skipped(sink, relay, make_campaign):
    campaign = make_campaign(["stay@example.com", "leave@example.com"])
    lifecycle.start_campaign(campaign.pk)
    Contact.objects.filter(email_key="leave@example.com").update(status=Contact.Status.UNSUBSCRIBED)
    drain(campaign.pk)
    assert sink.recipients() == ["stay@example.com"]
    assert statuses(campaign.pk) == {"stay@example.com": "sent", "leave@example.com": "skipped"}
    counts = lifecycle.counts(campaign.pk)
    assert counts["total"] == counts["sent"] + counts["skipped"] == 2


def test_connections_are_renewed_after_the_messages_per_connection_limit(make_relay, make_campaign):
    with PipeliningSink() as server:
        make_relay(server.port, messages_per_connection=3)
        campaign = make_campaign([f"m{i}@example.com" for i in range(7)])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        peers = [item.peer for item in server.received]
    assert len(peers) == 7 and len(set(peers)) == 3


def test_no_free_connection_slot_hands_the_batch_back(make_relay, make_campaign):
    with PipeliningSink() as server:
        relay = make_relay(server.port, max_connections=1)
        assert throttle.acquire_slot(f"relay:{relay.pk}", 1, "another-worker", 60)
        campaign = make_campaign(["a@example.com", "b@example.com"])
        lifecycle.start_campaign(campaign.pk)
        ids = list(Send.objects.values_list("id", flat=True))
        requeue = engine.send_batch(ids)
        assert server.recipients() == []
        assert sorted(requeue[0][0]) == sorted(ids) and requeue[0][1] > 0
        assert set(statuses(campaign.pk).values()) == {"queued"}
        throttle.release_slot(f"relay:{relay.pk}", "another-worker")
        drain(campaign.pk)
        assert sorted(server.recipients()) == ["a@example.com", "b@example.com"]


def test_a_relay_rate_limit_sends_the_rest_later(make_relay, make_campaign):
    with PipeliningSink() as server:
        make_relay(server.port, rate=3, rate_period="hour")
        campaign = make_campaign([f"r{i}@example.com" for i in range(5)])
        lifecycle.start_campaign(campaign.pk)
        engine.send_batch(list(Send.objects.values_list("id", flat=True)))
        assert len(server.recipients()) == 3
    later = Send.objects.filter(status="queued")
    assert later.count() == 2 and all(s.next_attempt_at > timezone.now() for s in later)


def test_a_pooled_connection_the_server_closed_while_idle_costs_no_retry(make_relay, make_campaign):
    with PipeliningSink() as server:
        make_relay(server.port)
        first = make_campaign(["a@example.com"])
        lifecycle.start_campaign(first.pk)
        drain(first.pk)
        server.hang_up_all()
        wait_until(lambda: all(s.transport is None for s in server.sessions), timeout=10, message="server hung up")
        second = make_campaign(["b@example.com"], name="Second")
        lifecycle.start_campaign(second.pk)
        drain(second.pk)
        assert sorted(server.recipients()) == ["a@example.com", "b@example.com"]
    send = Send.objects.get(email="b@example.com")
    assert (send.status, send.attempts) == ("sent", 1)


def test_contact_attributes_reach_the_message(make_relay, make_campaign):
    campaign = make_campaign(["ann@example.com"], text_body="Hi from {{ contact.attributes.city | default('nowhere') }}")
    Contact.objects.filter(email="ann@example.com").update(attributes={"city": "Leipzig"})

    with DroppingSink() as sink:
        make_relay(sink.port)
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)

    (item,) = sink.received
    assert "Hi from Leipzig" in item.message.get_body(("plain",)).get_content()
