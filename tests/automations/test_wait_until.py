"""A wait until a weekday and time of day ends at that time where the contact lives, daylight saving time included."""

from datetime import UTC, datetime, time, timedelta

import pytest

from automations import sweep
from automations.enrol import enrol
from automations.models import Enrolment, Message, Step
from tests.automations.conftest import automation_with, contact, template

pytestmark = pytest.mark.django_db


def due(person):
    return Enrolment.objects.get(contact=person).due_at


def sent_to(person):
    return Message.objects.filter(contact=person).count()


def test_a_wait_until_monday_nine_ends_at_nine_in_new_york_after_the_clocks_go_forward():
    auto = automation_with([{"kind": Step.Kind.WAIT, "wait_weekday": 0, "wait_time": time(9, 0)},
                            {"kind": Step.Kind.EMAIL, "template": template("week", "Your week")}])
    ny = contact("nora@example.com", attributes={"timezone": "America/New_York"})
    # Saturday 7 March 2026, 10:00 in New York (EST, UTC-5); the clocks go forward on Sunday the 8th.
    saturday = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)
    enrol(auto, [ny.pk], now=saturday)
    sweep.advance(now=saturday)
    monday_nine = datetime(2026, 3, 9, 13, 0, tzinfo=UTC)  # 09:00 EDT (UTC-4), not 14:00
    assert due(ny) == monday_nine

    sweep.advance(now=monday_nine - timedelta(minutes=1))
    assert sent_to(ny) == 0
    sweep.advance(now=monday_nine)
    assert sent_to(ny) == 1


def test_a_wait_until_nine_is_the_next_nine_in_each_contacts_zone_as_the_clocks_go_back():
    auto = automation_with([{"kind": Step.Kind.WAIT, "wait_time": time(9, 0)},
                            {"kind": Step.Kind.EMAIL, "template": template("morning", "Good morning")}])
    berlin = contact("bert@example.com", attributes={"timezone": "Europe/Berlin"})
    by_country = contact("greta@example.com", attributes={"country": "DE"})
    tokyo = contact("kenji@example.jp", attributes={"timezone": "Asia/Tokyo"})
    nowhere = contact("otto@example.com", attributes={"timezone": "Not/AZone"})
    # Saturday 24 October 2026, 14:00 in Berlin (CEST, UTC+2); the clocks go back that night.
    now = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    enrol(auto, [berlin.pk, by_country.pk, tokyo.pk, nowhere.pk], now=now)
    sweep.advance(now=now)
    sunday_nine_cet = datetime(2026, 10, 25, 8, 0, tzinfo=UTC)  # 09:00 CET (UTC+1)
    assert due(berlin) == sunday_nine_cet
    assert due(by_country) == sunday_nine_cet, "the zone of the country, as for a campaign sent at local time"
    assert due(tokyo) == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 09:00 JST; 21:00 in Tokyo now
    assert due(nowhere) == datetime(2026, 10, 25, 9, 0, tzinfo=UTC), "the operator's zone (UTC here)"


def test_a_duration_then_a_time_of_day_waits_at_least_the_duration():
    auto = automation_with([{"kind": Step.Kind.WAIT, "wait_seconds": 2 * 86400, "wait_time": time(8, 30)},
                            {"kind": Step.Kind.EMAIL, "template": template("later", "Later")}])
    person = contact("lea@example.com", attributes={"timezone": "Europe/Berlin"})
    now = datetime(2026, 3, 27, 7, 0, tzinfo=UTC)  # Friday 08:00 CET: two days on is Sunday, after the change
    enrol(auto, [person.pk], now=now)
    sweep.advance(now=now)
    assert due(person) == datetime(2026, 3, 30, 6, 30, tzinfo=UTC)  # Monday 08:30 CEST
