"""Warm-up schedules over several days: the daily volume grows while bounces stay low, holds or steps back when
they do not, and the admin shows the schedule and today's usage."""

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

import herald.settings as shipped
from campaigns.models import Campaign
from delivery import lifecycle, warmup
from delivery.models import Warmup, WarmupStep
from tests.delivery import conftest as delivery
from tests.delivery.test_warmup import day_start, send_due
from tracking import warmup as steps

pytestmark = [pytest.mark.django_db(transaction=True)]

fresh_engine_state, make_relay, relay, make_campaign = (
    delivery.fresh_engine_state, delivery.make_relay, delivery.relay, delivery.make_campaign)
A = WarmupStep.Action


def run_days(campaign, days, first=1):
    """Each day: the daily step at its start, then the day's sending; returns the messages sent each day."""
    sent, before = [], 0
    for day in range(first, first + days):
        now = day_start(day)
        steps.step(now=now)
        send_due(campaign, now + timedelta(minutes=5))
        total = campaign.sends.filter(attempts__gt=0).count()
        sent.append(total - before)
        before = total
    return sent


def schedule(**fields):
    fields.setdefault("preset", Warmup.Preset.STANDARD)
    return Warmup.objects.create(identity="herald.example", stepped_on=day_start(1).date(), **fields)


def test_the_daily_volume_doubles_while_bounces_stay_low_and_holds_after_a_small_day(sink, relay, make_campaign):
    w = schedule()
    campaign = make_campaign([f"r{i}@gmail.example" for i in range(400)])
    lifecycle.start_campaign(campaign.pk)

    assert run_days(campaign, 4) == [50, 100, 200, 50]
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED
    steps.step(now=day_start(5))
    w.refresh_from_db()
    assert list(w.steps.order_by("day").values_list("action", "to_stage")) == [
        (A.ADVANCE, 1), (A.ADVANCE, 2), (A.ADVANCE, 3), (A.HOLD, 3)]
    assert "received 50 of its 400" in w.reason  # the last day used too little of its volume to grow on
    assert warmup.allowance(w) == 400


@pytest.mark.parametrize(("bounces", "action", "then"), [(20, A.BACK, 100), (6, A.HOLD, 200)])
def test_bounces_over_the_thresholds_hold_or_step_back_the_schedule(sink, relay, make_campaign, bounces, action, then):
    w = schedule(stage=2)  # 200 a day per provider
    addresses = [f"r{i}@gmail.example" for i in range(200)]
    for address in addresses[:bounces]:
        sink.rules.rcpt[address] = "550 5.1.1 no such user"
    monday = make_campaign(addresses, name="Monday")
    lifecycle.start_campaign(monday.pk)
    assert run_days(monday, 1) == [200]

    tuesday = make_campaign([f"t{i}@gmail.example" for i in range(300)], name="Tuesday")
    lifecycle.start_campaign(tuesday.pk)
    assert run_days(tuesday, 1, first=2) == [then]
    w.refresh_from_db()
    last = w.steps.get()
    assert (last.action, last.attempts, last.hard_bounces) == (action, 200, bounces)
    assert f"hard bounces {bounces} of 200 attempts" in w.reason
    assert f"to {then} messages a day per provider" in w.reason


def test_a_schedule_steps_once_a_day_and_an_off_one_never(relay):
    w = schedule()
    off = Warmup.objects.create(identity="old.example", preset=Warmup.Preset.OFF)
    assert len(steps.step(now=day_start(2))) == 1
    assert steps.step(now=day_start(2) + timedelta(hours=3)) == []
    w.refresh_from_db()
    off.refresh_from_db()
    assert (w.stage, w.stepped_on, off.stepped_on) == (0, day_start(2).date(), None)  # nothing sent: it holds
    assert warmup.allowance(off) is None


def test_a_full_day_at_the_last_stage_completes_the_warm_up(relay, make_campaign):
    w = schedule(preset=Warmup.Preset.AGGRESSIVE, stage=5)  # 48,600 a day; the next stage would pass COMPLETE_AT
    campaign = make_campaign(["a@gmail.example"])
    for first in range(0, 48_600, 8_100):
        rows = [SimpleNamespace(id=i, campaign_id=campaign.pk, domain="gmail.example") for i in range(first, first + 8_100)]
        assert len(warmup.admit(rows, day_start(1))[0]) == 8_100
    steps.step(now=day_start(2))
    w.refresh_from_db()
    assert w.steps.get().action == A.COMPLETE and warmup.allowance(w) is None
    assert "Warm-up complete" in w.reason


def test_the_admin_shows_the_schedule_and_today_s_usage_per_provider(client, relay, make_campaign):
    w = schedule()
    campaign = make_campaign(["a@gmail.example", "b@gmail.example", "c@yahoo.example"])
    rows = [SimpleNamespace(id=i, campaign_id=campaign.pk, domain=d)
            for i, d in enumerate(["gmail.example", "gmail.example", "yahoo.example"])]
    warmup.admit(rows)
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "x"))

    page = client.get(reverse("admin:delivery_warmup_change", args=[w.pk])).content.decode()
    assert "day 1: 50 a day per provider" in page and "day 11: 51200 a day per provider" in page
    assert "gmail.example: 2 of 50, yahoo.example: 1 of 50" in page
    listing = client.get(reverse("admin:delivery_warmup_changelist")).content.decode()
    assert "herald.example" in listing and "gmail.example: 2 of 50" in listing


def test_shipped_thresholds_are_the_readme_s():
    assert (shipped.HERALD_WARMUP_HARD_BOUNCE_PERCENT, shipped.HERALD_WARMUP_COMPLAINT_PERCENT) == (2.0, 0.1)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| `HERALD_WARMUP_HARD_BOUNCE_PERCENT` | `2` |" in readme
    assert "| `HERALD_WARMUP_COMPLAINT_PERCENT` | `0.1` |" in readme


def test_sends_held_at_midnight_go_out_once_the_day_s_step_grows_the_volume(sink, relay, make_campaign):
    schedule()
    campaign = make_campaign([f"r{i}@gmail.example" for i in range(200)])
    lifecycle.start_campaign(campaign.pk)
    send_due(campaign, day_start(1))
    midnight = warmup.next_day(day_start(1))
    # The held sends come back at midnight, before beat's step: the old volume is spent already.
    send_due(campaign, midnight + timedelta(seconds=1))
    assert len(sink.recipients()) == 100
    steps.step(now=midnight + timedelta(minutes=1))
    send_due(campaign, midnight + timedelta(minutes=2))
    assert len(sink.recipients()) == 150  # day 2's hundred
