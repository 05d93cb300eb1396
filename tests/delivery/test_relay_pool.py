"""A pool of relays: weighted spreading, routing rules, failover and recovery, a broken relay beside a good one."""

import collections
import threading

import pytest
from aiosmtpd.controller import Controller

from campaigns.models import Campaign
from delivery import engine, health, ledger, lifecycle, routing
from delivery.models import Relay, RelayGroup, RoutingRule, Send
from tests.delivery.conftest import drain, statuses
from tests.delivery.servers import Authenticator, PipeliningSink, PostfixSink
from tests.support.smtp import Rules, Sink, SinkHandler
from tests.support.tls import server_context
from tests.support.wait import wait_until
from tracking.stats import campaign_stats

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_sinks():
    with PipeliningSink() as first, PipeliningSink() as second:
        yield first, second


def group_of(name, *relays, **fields):
    group = RelayGroup.objects.create(name=name, **fields)
    group.relays.set(relays)
    return group


def route(group, position=100, **conditions):
    return RoutingRule.objects.create(group=group, position=position, **conditions)


def sink_on(port, **kwargs):
    """A sink listening on a given port: a relay that comes back where it was."""
    server = Sink(**kwargs)
    server.port = port
    server.controller = Controller(SinkHandler(server), hostname="127.0.0.1", port=port, ready_timeout=10)
    return server


def test_a_group_spreads_ten_thousand_messages_by_weight(make_relay, make_campaign):
    with PostfixSink() as big, PostfixSink() as small:
        heavy = make_relay(big.port, name="heavy", weight=3)
        light = make_relay(small.port, name="light", weight=1)
        route(group_of("bulk", heavy, light))
        campaign = make_campaign([f"r{i}@d{i % 7}.example" for i in range(10_000)])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        wait_until(lambda: big.messages + small.messages >= 10_000, message="the sinks to count every message")
        got_big, got_small = big.messages, small.messages

    assert lifecycle.counts(campaign.pk)["sent"] == 10_000
    assert got_big + got_small == 10_000  # nobody twice
    assert abs(got_big / 10_000 - 0.75) < 0.02
    # The statistics say which relay carried how much, as the sinks counted it.
    carried = {row["relay"]: row["sent"] for row in campaign_stats(campaign)["relays"]}
    assert carried == {"heavy": got_big, "light": got_small}


def test_rules_route_by_sending_domain_and_by_kind(two_sinks, make_relay, make_campaign):
    from submission.store import Accepted, store_batch
    from tests.submission.conftest import make_credential

    news_sink, other_sink = two_sinks
    news = make_relay(news_sink.port, name="news relay")
    other = make_relay(other_sink.port, name="everything else")
    route(group_of("newsletters", news), position=1, from_domain="News.Herald.example")
    route(group_of("apps", other), position=2, kind=RoutingRule.Kind.SUBMITTED)
    route(group_of("default", other), position=3)

    from_news = make_campaign(["ann@example.com"], name="News", from_email="editor@news.herald.example")
    from_shop = make_campaign(["bob@example.com"], name="Shop", from_email="deals@shop.herald.example")
    for campaign in (from_news, from_shop):
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
    # Mail an application submitted from the newsletter domain follows the first rule that matches it.
    credential = make_credential(domains="news.herald.example")
    ids = store_batch([Accepted(credential.pk, "app@news.herald.example", ["cat@example.com"], b"Subject: hi\r\n\r\nhi\r\n",
                                from_domain="news.herald.example")])
    engine.send_batch(ids)

    assert news_sink.recipients() == ["ann@example.com", "cat@example.com"]
    assert other_sink.recipients() == ["bob@example.com"]
    RoutingRule.objects.filter(position=1).update(enabled=False)
    routing.relay_changed()  # as a save in the admin or the API does
    later = store_batch([Accepted(credential.pk, "app@news.herald.example", ["dan@example.com"], b"Subject: hi\r\n\r\nhi\r\n",
                                  from_domain="news.herald.example")])
    engine.send_batch(later)
    assert other_sink.recipients() == ["bob@example.com", "dan@example.com"]


def test_a_relay_stopped_mid_campaign_hands_its_share_to_the_other_and_gets_it_back(make_relay, make_campaign, settings):
    settings.HERALD_RELAY_RETRY_SECONDS = 0.3
    first = Sink(rules=Rules(delay=0.003)).__enter__()
    with PipeliningSink() as second:
        port = first.port
        a = make_relay(port, name="a")
        b = make_relay(second.port, name="b")
        route(group_of("pair", a, b))
        addresses = [f"r{i}@d{i % 5}.example" for i in range(400)]
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)

        def stop_first():
            first.wait_for(40, timeout=60)
            first.__exit__(None, None, None)

        stopper = threading.Thread(target=stop_first)
        stopper.start()
        drain(campaign.pk)
        stopper.join()
        # The messages on the wire when it stopped were deferred; their retry goes to the relay that is up. (One
        # that a retry of the stopped relay's gave back once more gets another, as the sweeper would give it.)
        for _ in range(5):
            deferred = Send.objects.filter(campaign=campaign, status=Send.Status.DEFERRED)
            if not deferred.exists():
                break
            ledger.due_retries(now=deferred.order_by("-next_attempt_at").first().next_attempt_at)
            drain(campaign.pk)
        before = first.recipients()
        assert 40 <= len(before) < 200
        received = collections.Counter(before + second.recipients())
        assert set(received) == set(addresses) and set(received.values()) == {1}
        assert set(statuses(campaign.pk).values()) == {"sent"}
        assert health.status(a)["state"] in ("down", "retrying")

        # It comes back: once its backoff ends it gets its share again, and is up.
        with sink_on(port) as back:
            later = make_campaign([f"n{i}@example.com" for i in range(60)], name="Later news")
            lifecycle.start_campaign(later.pk)
            # Not retry_in == 0: it is rounded to a tenth, and shows 0 while the backoff has 0.04 s left.
            wait_until(lambda: health.status(a)["state"] != "down", timeout=10, message="backoff over")
            drain(later.pk)
            assert 15 <= len(back.recipients()) <= 45
            assert health.status(a)["state"] == "up"
            assert len(back.recipients()) + len(second.recipients()) - 360 == 60


@pytest.fixture
def trusted(settings, certificate):
    settings.HERALD_SMTP_CA_FILE = certificate[0]


@pytest.mark.parametrize("broken", ["auth", "tls"])
def test_one_relay_failing_tls_or_auth_leaves_the_campaign_to_the_other(broken, trusted, certificate, make_relay,
                                                                         make_campaign):
    auth = Authenticator()
    with Sink(tls_context=server_context(*certificate), require_starttls=True, authenticator=auth) as secure, \
            PipeliningSink() as good:
        if broken == "auth":
            bad = make_relay(secure.port, name="bad", security=Relay.Security.STARTTLS, username="herald", password="wrong")
        else:  # STARTTLS required of a server that does not offer it
            bad = make_relay(good.port, name="bad", security=Relay.Security.STARTTLS)
        fine = make_relay(good.port, name="fine")
        route(group_of("pair", bad, fine))
        addresses = [f"r{i}@d{i % 4}.example" for i in range(40)]
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)

        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.FINISHED
        assert sorted(good.recipients()) == sorted(addresses)
        status = health.status(bad)
        assert status["state"] == "down"
        assert ("535" in status["reason"]) if broken == "auth" else ("does not offer STARTTLS" in status["reason"])
        assert status["replies"] and status["replies"][0]["code"] is None
        assert health.status(fine)["replies"][0]["code"] == 250


def test_when_every_relay_of_the_group_fails_the_campaign_pauses_with_the_reason(trusted, certificate, make_relay,
                                                                                 make_campaign):
    with Sink(tls_context=server_context(*certificate), require_starttls=True, authenticator=Authenticator()) as secure:
        one = make_relay(secure.port, name="one", security=Relay.Security.STARTTLS, username="herald", password="wrong")
        two = make_relay(secure.port, name="two", security=Relay.Security.STARTTLS, username="herald", password="bad")
        route(group_of("pair", one, two))
        campaign = make_campaign(["ann@example.com", "bob@example.com"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.PAUSED
        assert "535 5.7.8" in campaign.status_reason
        assert set(statuses(campaign.pk).values()) == {"queued"}


class RefusingMailHandler(SinkHandler):
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        return "451 4.3.0 sender queue full, try later"


def test_a_relay_refusing_every_session_hands_its_messages_to_the_other_at_once(make_relay, make_campaign):
    refusing = Sink()
    refusing.controller.handler = RefusingMailHandler(refusing)
    with refusing, PipeliningSink() as good:
        bad = make_relay(refusing.port, name="refusing")
        fine = make_relay(good.port, name="fine")
        route(group_of("pair", bad, fine))
        addresses = [f"r{i}@example.com" for i in range(40)]
        campaign = make_campaign(addresses)
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)

        assert sorted(good.recipients()) == sorted(addresses)
        assert set(statuses(campaign.pk).values()) == {"sent"}  # none waits for a retry
        assert "451 4.3.0" in health.status(bad)["reason"]


def test_rules_route_by_recipient_provider_and_skip_a_group_whose_relays_are_all_disabled(two_sinks, make_relay,
                                                                                          make_campaign):
    first, second = two_sinks
    main = make_relay(first.port, name="a main")
    special = make_relay(second.port, name="b special")
    switched_off = make_relay(second.port, name="c off", enabled=False)
    route(group_of("nothing enabled", switched_off), position=1)  # would catch everything
    route(group_of("for example.org", special), position=2, provider="Example.org")
    campaign = make_campaign(["ann@example.com", "bob@example.org"])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    # No rule for example.com: the first enabled relay by name, as with no rules at all.
    assert first.recipients() == ["ann@example.com"]
    assert second.recipients() == ["bob@example.org"]
    assert {main.pk, special.pk} == set(Send.objects.values_list("relay_id", flat=True))


def test_a_test_send_goes_the_way_the_campaign_will_and_says_which_relay_took_it(two_sinks, make_relay, make_campaign):
    from delivery.testsend import send_test

    news_sink, other_sink = two_sinks
    news = make_relay(news_sink.port, name="news relay")
    other = make_relay(other_sink.port, name="everything else")
    route(group_of("newsletters", news), position=1, from_domain="news.herald.example")
    route(group_of("default", other), position=2)
    campaign = make_campaign(["ann@example.com"], name="News", from_email="editor@news.herald.example")

    [result] = send_test(campaign, ["me@example.org"])
    assert result.ok and f"127.0.0.1:{news_sink.port}" in result.detail
    assert news_sink.recipients() == ["me@example.org"] and other_sink.recipients() == []


def test_rules_by_kind_tell_transactional_mail_from_other_submitted_mail(two_sinks, make_relay):
    from submission.store import Accepted, store_batch
    from tests.submission.conftest import make_credential

    receipts, others = two_sinks
    route(group_of("receipts", make_relay(receipts.port, name="receipts")), position=1,
          kind=RoutingRule.Kind.TRANSACTIONAL)
    route(group_of("default", make_relay(others.port, name="others")), position=2)
    credential = make_credential(domains="shop.herald.example")

    def stored(to, tag):
        return store_batch([Accepted(credential.pk, "app@shop.herald.example", [to], b"Subject: hi\r\n\r\nhi\r\n",
                                     from_domain="shop.herald.example", tag=tag)])

    # As the transactional API stores them (automations.transactional), and as an application's SMTP login does.
    engine.send_batch(stored("ann@example.com", "transactional:receipt") + stored("bob@example.com", "newsletter"))
    assert receipts.recipients() == ["ann@example.com"] and others.recipients() == ["bob@example.com"]
    # An automation's email step has neither a campaign nor a stored message.
    assert routing.kind_of(Send(campaign_id=None, outbound_id=None)) == RoutingRule.Kind.AUTOMATION
