"""The circuit breaker: a campaign whose hard bounces, complaints or one provider's policy blocks
pass their limit pauses itself, and resumes only when an operator acknowledges the figures."""

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

import herald.settings as shipped
from campaigns.models import ApiToken, AuditEntry, Campaign, Suppression
from delivery import lifecycle, tokens
from delivery.models import DomainThrottle, Period, Send
from tests.delivery import conftest as delivery
from tests.delivery.workers import Worker
from tests.support.wait import wait_until
from tests.tracking import samples
from tracking import breaker
from tracking.feedback import process_message
from tracking.models import BreakerTrip
from tracking.stats import campaign_stats

pytestmark = [pytest.mark.django_db(transaction=True)]

# The send engine's fixtures: a clean Redis and engine state, a relay to the sink, campaigns.
fresh_engine_state, make_relay, relay, make_campaign = (
    delivery.fresh_engine_state, delivery.make_relay, delivery.relay, delivery.make_campaign)
ROOT = Path(__file__).resolve().parents[2]
UNKNOWN = "550 5.1.1 no such user"
BLOCKED = "554 5.7.1 Service unavailable; client host blocklisted"


@pytest.fixture(autouse=True)
def small_sample(settings):
    """Twenty answers make a sample here; the shipped defaults are tested apart."""
    settings.HERALD_BREAKER_MIN_SAMPLE = 20


def status(campaign):
    campaign.refresh_from_db()
    return campaign.status


def paused(campaign):
    return status(campaign) == Campaign.Status.PAUSED


def done(campaign):
    return status(campaign) in (Campaign.Status.PAUSED, Campaign.Status.FINISHED)


def every(n, addresses):
    return addresses[n - 1::n]


def run_with_worker(tmp_path, campaign, **env):
    worker = Worker("breaker", tmp_path, HERALD_BATCH_SIZE=50, **env).wait_ready()
    try:
        lifecycle.start_campaign(campaign.pk)
        wait_until(lambda: done(campaign), timeout=60, message="campaign paused or finished")
    finally:
        worker.stop()


def test_shipped_limits_are_the_readme_s():
    assert (shipped.HERALD_BREAKER_MIN_SAMPLE, shipped.HERALD_BREAKER_HARD_BOUNCE_PERCENT,
            shipped.HERALD_BREAKER_COMPLAINT_PERCENT, shipped.HERALD_BREAKER_POLICY_PERCENT) == (500, 5.0, 0.3, 10.0)
    readme = (ROOT / "README.md").read_text()
    for line in ("| `HERALD_BREAKER_MIN_SAMPLE` | `500` |", "| `HERALD_BREAKER_HARD_BOUNCE_PERCENT` | `5` |",
                 "| `HERALD_BREAKER_COMPLAINT_PERCENT` | `0.3` |", "| `HERALD_BREAKER_POLICY_PERCENT` | `10` |"):
        assert line in readme


@pytest.mark.slow
def test_hard_bounces_over_the_limit_pause_the_campaign_with_the_figures(tmp_path, sink, relay, make_campaign):
    addresses = [f"r{i}@example.com" for i in range(300)]
    for address in every(5, addresses):  # 20 % unknown
        sink.rules.rcpt[address] = UNKNOWN
    campaign = make_campaign(addresses)
    run_with_worker(tmp_path, campaign, HERALD_BREAKER_MIN_SAMPLE=20)

    assert status(campaign) == Campaign.Status.PAUSED
    assert campaign.status_reason.startswith("Circuit breaker: hard bounces ")
    assert "over the limit of 5 %" in campaign.status_reason
    assert "acknowledgement" in campaign.status_reason
    (trip,) = BreakerTrip.objects.filter(campaign=campaign)
    assert (trip.scope, trip.metric, trip.domain) == ("campaign", "hard_bounce", "herald.example")
    assert trip.base >= 20 and trip.count * 100 > 5 * trip.base
    assert f"{trip.count} of {trip.base} attempts" in trip.reason
    assert len(sink.recipients()) < 200  # it stopped long before the end
    (entry,) = AuditEntry.objects.filter(action="campaign.breaker_trip")
    assert entry.object_id == str(campaign.pk) and entry.detail["count"] == trip.count
    # The breaker's figures are the statistics page's.
    stats, figures = campaign_stats(campaign), breaker.figures([campaign.pk])
    outcomes = {key: value["count"] for key, value in stats["outcomes"].items()}
    assert figures.hard == outcomes["bounced"] > 0
    assert figures.attempts == outcomes["delivered"] + outcomes["bounced"] + outcomes["failed"]
    assert figures.delivered == outcomes["delivered"]


@pytest.mark.slow
def test_below_the_minimum_sample_nothing_trips(tmp_path, sink, relay, make_campaign):
    addresses = [f"s{i}@example.com" for i in range(40)]
    for address in every(4, addresses):  # 25 %, but only 40 answers
        sink.rules.rcpt[address] = UNKNOWN
    campaign = make_campaign(addresses)
    run_with_worker(tmp_path, campaign, HERALD_BREAKER_MIN_SAMPLE=50)

    assert status(campaign) == Campaign.Status.FINISHED
    assert not BreakerTrip.objects.exists()
    assert Send.objects.filter(campaign=campaign, status="bounced").count() == 10


@pytest.mark.slow
def test_policy_blocks_from_one_provider_pause_the_campaign(tmp_path, sink, relay, make_campaign):
    DomainThrottle.objects.create(name="blockmail", domains="blockmail.example, blockmail.example.net", rate=1000,
                                  period=Period.SECOND)
    fine = [f"f{i}@fine.example" for i in range(150)]
    blocked = [f"b{i}@blockmail.example" for i in range(75)] + [f"b{i}@blockmail.example.net" for i in range(75)]
    for address in every(4, blocked):  # 25 % of one provider's, 12.5 % of all
        sink.rules.rcpt[address] = BLOCKED
    campaign = make_campaign([a for pair in zip(fine, blocked, strict=True) for a in pair])
    run_with_worker(tmp_path, campaign, HERALD_BREAKER_MIN_SAMPLE=20)

    assert status(campaign) == Campaign.Status.PAUSED
    (trip,) = BreakerTrip.objects.filter(campaign=campaign)
    assert (trip.metric, trip.provider) == ("policy", "blockmail")
    assert "policy blocks by blockmail" in campaign.status_reason
    assert "over the limit of 10 %" in campaign.status_reason
    # A block says nothing about the address: nobody is suppressed for it.
    assert not Suppression.objects.exists()


@pytest.mark.slow
def test_one_provider_s_blocks_under_its_limit_do_not_trip(tmp_path, sink, relay, make_campaign):
    addresses = [f"g{i}@fine.example" for i in range(60)]
    for address in every(30, addresses):  # 3.3 %: at most 10 % of any sample of 20, in whatever order
        sink.rules.rcpt[address] = BLOCKED
    campaign = make_campaign(addresses)
    run_with_worker(tmp_path, campaign, HERALD_BREAKER_MIN_SAMPLE=20)

    assert status(campaign) == Campaign.Status.FINISHED
    assert not BreakerTrip.objects.exists()


def first_queued(campaign, n):
    """The addresses ``send_part`` sends to next, in its order."""
    return list(Send.objects.filter(campaign=campaign, status="queued").order_by("id").values_list("email", flat=True)[:n])


def send_part(campaign, n):
    """Send the first ``n`` queued recipients of a running campaign in this process."""
    from delivery import engine

    ids = list(Send.objects.filter(campaign=campaign, status="queued").order_by("id").values_list("id", flat=True)[:n])
    engine.send_batch(ids)


def test_complaints_through_the_feedback_loop_pause_the_campaign(sink, relay, make_campaign, redis_client):
    campaign = make_campaign([f"c{i}@example.com" for i in range(60)])
    lifecycle.start_campaign(campaign.pk)
    send_part(campaign, 30)
    sent = list(Send.objects.filter(campaign=campaign, status="sent").order_by("id"))
    assert len(sent) == 30 and status(campaign) == Campaign.Status.SENDING

    process_message(samples.arf(tokens.verp_address(sent[0].pk), sent[0].email, sent[0].message_id), "fbl@x")

    assert status(campaign) == Campaign.Status.PAUSED
    (trip,) = BreakerTrip.objects.filter(campaign=campaign)
    assert (trip.metric, trip.count, trip.base) == ("complaint", 1, 30)
    assert "complaints 1 of 30 deliveries (3.33 %), over the limit of 0.3 %" in campaign.status_reason
    assert campaign_stats(campaign)["engagement"]["complaints"]["count"] == 1


def send_domain_first(campaign, domain, others):
    """Answer every recipient at ``domain`` first, then ``others`` of the rest, as a throttled domain
    that goes to the broker ahead of the bulk does."""
    from delivery import engine

    queued = Send.objects.filter(campaign=campaign, status="queued").order_by("id")
    engine.send_batch(list(queued.filter(domain=domain).values_list("id", flat=True)))
    engine.send_batch(list(queued.exclude(domain=domain).values_list("id", flat=True)[:others]))


def test_a_small_domain_answering_first_does_not_speak_for_the_whole_campaign(sink, relay, make_campaign, redis_client):
    # 20 of 200 recipients are at a domain that rejects 8 of them: 4 % of the campaign, under the 5 % limit.
    small = [f"s{i}@reject.example.io" for i in range(20)]
    for address in small[:8]:
        sink.rules.rcpt[address] = UNKNOWN
    campaign = make_campaign([f"b{i}@example.com" for i in range(180)] + small)
    lifecycle.start_campaign(campaign.pk)

    # Its answers come first: 8 hard bounces in the first 40 answers are 20 % of them.
    send_domain_first(campaign, "reject.example.io", 20)
    assert Send.objects.filter(campaign=campaign, status="bounced").count() == 8
    assert status(campaign) == Campaign.Status.SENDING
    verdict = breaker.Breaker.of_campaign(campaign.pk).evaluate()
    assert verdict is None and not BreakerTrip.objects.exists()
    f = breaker.figures([campaign.pk])
    assert (f.hard, f.attempts) == (8, 40) and f.hard_rate < 0.05

    send_part(campaign, 160)
    assert status(campaign) == Campaign.Status.FINISHED
    assert not BreakerTrip.objects.exists()


def test_a_small_domain_whose_bounces_pass_the_campaign_s_limit_trips_it(sink, relay, make_campaign, redis_client):
    # 20 of 200 recipients, all unknown: 10 % of the campaign.
    small = [f"u{i}@reject.example.io" for i in range(20)]
    for address in small:
        sink.rules.rcpt[address] = UNKNOWN
    campaign = make_campaign([f"b{i}@example.com" for i in range(180)] + small)
    lifecycle.start_campaign(campaign.pk)

    send_domain_first(campaign, "reject.example.io", 20)
    assert paused(campaign)
    (trip,) = BreakerTrip.objects.filter(campaign=campaign)
    assert (trip.metric, trip.count) == ("hard_bounce", 20)
    # Judged as the campaign's rate (its tenth of the recipients, all bouncing), not as that domain's 100 %.
    assert 0.05 < trip.rate < 0.1
    assert "weighted by its share of the recipients" in campaign.status_reason


@pytest.fixture
def tripped(sink, relay, make_campaign, redis_client):
    """A running campaign that has just paused itself for its hard bounces (a quarter of its first answers)."""
    campaign = make_campaign([f"t{i}@example.com" for i in range(80)])
    lifecycle.start_campaign(campaign.pk)
    for address in every(4, first_queued(campaign, 24)):
        sink.rules.rcpt[address] = UNKNOWN
    send_part(campaign, 24)
    assert paused(campaign), (lifecycle.counts(campaign.pk), list(BreakerTrip.objects.values()), campaign.status_reason)
    return campaign


@pytest.fixture
def bearer(db):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(root)[1]}"}


def test_the_api_resumes_a_tripped_campaign_only_with_an_acknowledgement(client, bearer, tripped):
    url = f"/api/v1/campaigns/{tripped.pk}/resume"
    refused = client.post(url, **bearer)
    assert refused.status_code == 409
    assert "circuit breaker" in refused.json()["detail"] and '{"acknowledge": true}' in refused.json()["detail"]
    trip = BreakerTrip.objects.get(campaign=tripped)
    assert f"hard bounces {trip.count} of {trip.base} attempts" in refused.json()["detail"]
    assert paused(tripped)
    assert client.post(url, data={"acknowledge": False}, content_type="application/json", **bearer).status_code == 409

    resumed = client.post(url, data=json.dumps({"acknowledge": True}), content_type="application/json", **bearer)
    assert resumed.status_code == 200 and resumed.json()["status"] == "sending"
    (trip,) = BreakerTrip.objects.filter(campaign=tripped)
    assert trip.acknowledged_at is not None and trip.acknowledged_by == "root"
    assert AuditEntry.objects.filter(action="campaign.breaker_acknowledge", actor="root").count() == 1
    # The figures acknowledged do not trip it again: its sample starts afresh.
    assert breaker.Breaker.of_campaign(tripped.pk).evaluate() is None
    send_part(tripped, 30)  # clean recipients
    assert status(tripped) == Campaign.Status.SENDING


def test_an_ordinary_pause_resumes_without_an_acknowledgement(client, bearer, sink, relay, make_campaign):
    campaign = make_campaign(["a@example.com"])
    lifecycle.start_campaign(campaign.pk)
    lifecycle.pause_campaign(campaign.pk)
    assert client.post(f"/api/v1/campaigns/{campaign.pk}/resume", **bearer).status_code == 200


def test_the_admin_asks_for_the_acknowledgement_naming_the_figures(admin_client, tripped):
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[tripped.pk])).content.decode()
    trip = BreakerTrip.objects.get(campaign=tripped)
    assert 'id="herald-acknowledge"' in page and f"hard bounces: {trip.count} of {trip.base}" in page
    dashboard = admin_client.get(reverse("admin:index")).content.decode()
    assert "Paused by the circuit breaker" in dashboard and f"hard bounces {trip.count} of {trip.base} attempts" in dashboard

    url = reverse("delivery-admin:campaign-resume", args=[tripped.pk])
    refused = admin_client.post(url, follow=True)
    assert paused(tripped) and "acknowledge" in refused.content.decode()
    admin_client.post(url, {"acknowledge": "1"})
    assert status(tripped) == Campaign.Status.SENDING


def test_a_sending_domain_trip_pauses_its_other_campaigns(sink, relay, make_campaign, redis_client):
    # Each campaign stays under the sample; together they make one, 30 % hard bounces.
    first = make_campaign([f"x{i}@example.com" for i in range(40)], name="First")
    second = make_campaign([f"y{i}@example.com" for i in range(40)], name="Second")
    elsewhere = make_campaign([f"z{i}@example.com" for i in range(40)], name="Elsewhere",
                              from_email="news@other.example")
    for campaign in (first, second, elsewhere):
        lifecycle.start_campaign(campaign.pk)
    for address in every(3, first_queued(first, 12)) + every(4, first_queued(second, 12)):
        sink.rules.rcpt[address] = UNKNOWN
    send_part(first, 12)
    send_part(second, 12)

    assert paused(first) and paused(second)
    assert status(elsewhere) == Campaign.Status.SENDING
    assert set(BreakerTrip.objects.values_list("campaign__name", "scope", "domain")) == {
        ("First", "domain", "herald.example"), ("Second", "domain", "herald.example")}
    trip = BreakerTrip.objects.get(campaign=second)
    assert trip.base >= 20 and max(Send.objects.filter(campaign=c).exclude(status="queued").count()
                                   for c in (first, second)) < 20
    for campaign in (first, second):
        assert campaign.status_reason.startswith(
            f"Circuit breaker of the sending domain herald.example: hard bounces {trip.count} of {trip.base} attempts")
    assert AuditEntry.objects.filter(action="campaign.breaker_trip").count() == 2


def test_the_command_line_resumes_a_tripped_campaign_only_with_acknowledge(tripped):
    with pytest.raises(CommandError, match="--resume --acknowledge"):
        call_command("send_campaign", tripped.pk, "--resume")
    assert paused(tripped)
    call_command("send_campaign", tripped.pk, "--resume", "--acknowledge", stdout=io.StringIO())
    assert status(tripped) == Campaign.Status.SENDING
    assert BreakerTrip.objects.get(campaign=tripped).acknowledged_by == "system"


def test_a_bounce_far_below_the_limits_costs_no_count_of_the_campaign(sink, relay, make_campaign, redis_client):
    campaign = make_campaign([f"q{i}@example.com" for i in range(60)])
    lifecycle.start_campaign(campaign.pk)
    send_part(campaign, 40)
    sent = list(Send.objects.filter(campaign=campaign, status="sent").order_by("id"))
    # 40 answers, for the campaign and its sending domain alike: the third hard bounce could pass 5 %.
    assert breaker.Breaker.of_campaign(campaign.pk).evaluate() is None
    assert breaker.Breaker.of_domain("herald.example").evaluate() is None

    def bounce(send):
        with CaptureQueriesContext(connection) as queries:
            process_message(samples.postfix(tokens.verp_address(send.pk), send.email, send.message_id), "b@x")
        return [q["sql"] for q in queries.captured_queries if "GROUP BY" in q["sql"]]

    assert bounce(sent[0]) == [] and bounce(sent[1]) == []
    assert bounce(sent[2]) != []  # the third could pass 5 % of 40: counted, and over the limit
    assert paused(campaign)
    assert BreakerTrip.objects.get(campaign=campaign).reason.startswith("Circuit breaker: hard bounces 3 of 40 attempts")
