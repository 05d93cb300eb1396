"""Warm-up schedules in the engine: each provider gets the day's allowance of a sending domain's mail, the rest
waits in the ledger for the next day, across every worker."""

import collections
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from campaigns.models import ApiToken, Campaign
from delivery import engine, ledger, lifecycle, warmup
from delivery.models import Send, Warmup
from tests.delivery.test_source_addresses import mx_dns  # noqa: F401 - fixture
from tests.delivery.workers import Worker
from tests.support.wait import wait_until


def day_start(days_from_today):
    """An hour into a day (in TIME_ZONE), counted from today: the engine's injected clock."""
    return warmup.next_day(timezone.now()) + timedelta(days=days_from_today - 1, hours=1)


def send_due(campaign, now):
    """What the workers and beat would do at ``now``: hand over the parked rows due, then send every queued row
    not parked (no Celery)."""
    for ids, _countdown, reserved in ledger.due_slots(now=now):
        engine.send_batch(ids, now=now, reserved=reserved)
    for _ in range(50):
        ids = list(Send.objects.filter(campaign=campaign, status=Send.Status.QUEUED, parked=False)
                   .values_list("id", flat=True))
        if not ids:
            return
        engine.send_batch(ids, now=now)
    raise AssertionError("sends still queued after draining")


def by_domain(addresses):
    return collections.Counter(a.rpartition("@")[2] for a in addresses)


@pytest.fixture
def news_campaign(make_campaign):
    """130 recipients at two providers, from news@herald.example."""
    return make_campaign([f"g{i}@gmail.example" for i in range(80)] + [f"y{i}@yahoo.example" for i in range(50)])


@pytest.mark.django_db(transaction=True)
def test_a_campaign_over_the_allowance_sends_it_each_day_and_the_rest_the_next(sink, relay, news_campaign):
    Warmup.objects.create(identity="herald.example", preset=Warmup.Preset.STANDARD)
    lifecycle.start_campaign(news_campaign.pk)

    day1 = day_start(1)
    send_due(news_campaign, day1)
    assert by_domain(sink.recipients()) == {"gmail.example": 50, "yahoo.example": 50}
    waiting = Send.objects.filter(campaign=news_campaign, status=Send.Status.QUEUED)
    assert waiting.count() == 30 and not waiting.filter(parked=False).exists()
    # They wait for the next day in the ledger, with no task on the broker.
    tomorrow = warmup.next_day(day1) + timedelta(seconds=engine.SLOT_MARGIN)
    assert set(waiting.values_list("next_attempt_at", flat=True)) == {tomorrow}
    assert ledger.due_slots(now=day1 + timedelta(hours=22)) == []

    send_due(news_campaign, day_start(2))
    assert by_domain(sink.recipients()) == {"gmail.example": 80, "yahoo.example": 50}
    news_campaign.refresh_from_db()
    assert news_campaign.status == Campaign.Status.FINISHED


@pytest.mark.django_db(transaction=True)
def test_turning_a_schedule_off_sends_what_it_held_at_once(sink, relay, news_campaign):
    schedule = Warmup.objects.create(identity="herald.example", preset=Warmup.Preset.STANDARD)
    lifecycle.start_campaign(news_campaign.pk)
    send_due(news_campaign, timezone.now())
    assert len(sink.recipients()) == 100
    schedule.preset = Warmup.Preset.OFF
    schedule.save()
    send_due(news_campaign, timezone.now())
    assert by_domain(sink.recipients()) == {"gmail.example": 80, "yahoo.example": 50}


@pytest.mark.django_db(transaction=True)
def test_a_send_admitted_today_is_not_counted_twice_when_it_comes_back(relay, news_campaign):
    Warmup.objects.create(identity="herald.example", preset=Warmup.Preset.STANDARD)
    lifecycle.start_campaign(news_campaign.pk)
    rows = ledger.claim(Send.objects.filter(domain="gmail.example").values_list("id", flat=True)[:10])
    day1 = day_start(1)
    assert len(warmup.admit(rows, day1)[0]) == 10
    assert len(warmup.admit(rows, day1)[0]) == 10  # back for a throttle slot, or after its worker died
    assert warmup.usage("herald.example", day1.date()) == {"domain:gmail.example": 10}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("schedule", ["off", "none"])
def test_without_a_schedule_or_with_it_off_nothing_is_limited(sink, relay, news_campaign, schedule):
    if schedule == "off":
        Warmup.objects.create(identity="herald.example", preset=Warmup.Preset.OFF)
    lifecycle.start_campaign(news_campaign.pk)
    send_due(news_campaign, day_start(1))
    assert by_domain(sink.recipients()) == {"gmail.example": 80, "yahoo.example": 50}


@pytest.mark.django_db(transaction=True)
def test_other_sending_domains_are_not_held_back(sink, relay, make_campaign):
    Warmup.objects.create(identity="new.example", preset=Warmup.Preset.STANDARD)
    campaign = make_campaign([f"g{i}@gmail.example" for i in range(80)])  # from news@herald.example
    lifecycle.start_campaign(campaign.pk)
    send_due(campaign, day_start(1))
    assert len(sink.recipients()) == 80


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_two_workers_together_send_no_more_than_the_day_s_allowance(tmp_path, sink, relay, news_campaign, settings):
    settings.HERALD_BATCH_SIZE = 7
    Warmup.objects.create(identity="herald.example", preset=Warmup.Preset.STANDARD)
    workers = [Worker(f"warm{i}", tmp_path, HERALD_BATCH_SIZE=7) for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        lifecycle.start_campaign(news_campaign.pk)
        sink.wait_for(100, timeout=60)
        held = Send.objects.filter(campaign=news_campaign, status=Send.Status.QUEUED, parked=True)
        wait_until(lambda: held.count() == 30 and not Send.objects.filter(status=Send.Status.SENDING).exists(),
                   timeout=30, message="the rest parked for tomorrow")
    finally:
        for w in workers:
            w.stop()
    assert by_domain(sink.recipients()) == {"gmail.example": 50, "yahoo.example": 50}
    assert len({item.peer for item in sink.received}) >= 2  # both workers sent


@pytest.mark.django_db
def test_the_api_puts_a_domain_on_a_schedule_and_shows_today_s_usage(client, relay):
    user = User.objects.create_user("ops")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="delivery", codename__endswith="warmup"))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)[1]}"}
    created = client.post("/api/v1/warmups", {"identity": "News.Example.com"}, content_type="application/json", **auth)
    assert created.status_code == 201
    body = created.json()
    assert (body["identity"], body["preset"], body["daily_allowance"]) == ("news.example.com", "standard", 50)
    assert body["schedule"][:3] == [50, 100, 200]
    again = client.post("/api/v1/warmups", {"identity": "news.example.com"}, content_type="application/json", **auth)
    assert again.status_code == 409

    rows = [SimpleNamespace(id=i, campaign_id=None, domain="gmail.example") for i in range(3)]
    for row in rows:
        row.campaign_id = Campaign.objects.create(name=f"c{row.id}", from_email="a@news.example.com").pk
    warmup.admit(rows)
    shown = client.get(f"/api/v1/warmups/{body['id']}", **auth).json()
    assert shown["today"] == {"gmail.example": 3}

    off = client.patch(f"/api/v1/warmups/{body['id']}", {"preset": "off"}, content_type="application/json", **auth)
    assert off.status_code == 200 and off.json()["daily_allowance"] is None
    bad = client.patch(f"/api/v1/warmups/{body['id']}", {"preset": "reckless"}, content_type="application/json", **auth)
    assert bad.status_code == 422 and "preset" in bad.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_schedule_on_one_source_address_holds_back_only_the_mail_leaving_from_it(mx_dns, make_campaign,  # noqa: F811
                                                                                   settings):
    from delivery import routing
    from tests.delivery.servers import DroppingSink
    from tests.delivery.test_source_addresses import SOURCES, direct_from

    with DroppingSink() as mx:
        settings.HERALD_DIRECT_PORT = mx.port
        direct_from(SOURCES)
        # A new address warms up beside one already warm: only the new one's mail is counted and held.
        Warmup.objects.create(identity="127.0.0.2", preset=Warmup.Preset.STANDARD)
        campaign = make_campaign([f"r{i}@pool.test" for i in range(200)])
        lifecycle.start_campaign(campaign.pk)
        rows = list(Send.objects.filter(campaign=campaign))
        routing.refresh()
        leaving = collections.Counter(routing.target_for(row).source.address for row in rows)
        send_due(campaign, day_start(1))
        wait_until(lambda: len(mx.received) >= 50 + leaving["127.0.0.3"], message="the day's mail at the MX")
        sent_from = collections.Counter(item.peer[0] for item in mx.received)

    assert sent_from == {"127.0.0.2": 50, "127.0.0.3": leaving["127.0.0.3"]}
    assert Send.objects.filter(campaign=campaign, status=Send.Status.QUEUED).count() == leaving["127.0.0.2"] - 50
