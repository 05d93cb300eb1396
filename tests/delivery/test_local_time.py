"""Local-time delivery: one snapshot, each zone's sends released when its local time comes; quiet hours.

The clock is injected: the campaign starts at a given instant, and the
engine's tick (ledger.due_waves) and the batches run "at" later instants.
On 28 March 2027 Europe starts summer time (01:00 UTC) and Adelaide is still
on its daylight time (+10:30); Kolkata is +05:30 all year.
"""

from datetime import UTC, date, datetime, time, timedelta

import pytest

from campaigns.models import Contact, PassedZones
from delivery import engine, ledger, lifecycle, localtime, placement
from delivery.models import Send

pytestmark = pytest.mark.django_db

START = datetime(2027, 3, 27, 12, 0, tzinfo=UTC)
# 09:00 local on 28 March 2027, in UTC:
ADELAIDE = datetime(2027, 3, 27, 22, 30, tzinfo=UTC)  # +10:30 (ACDT)
KOLKATA = datetime(2027, 3, 28, 3, 30, tzinfo=UTC)  # +05:30
BERLIN = datetime(2027, 3, 28, 7, 0, tzinfo=UTC)  # +02:00 since 01:00 UTC that day (was +01:00)
LONDON = datetime(2027, 3, 28, 8, 0, tzinfo=UTC)  # +01:00 since 01:00 UTC that day (list default)
NEW_YORK = datetime(2027, 3, 28, 13, 0, tzinfo=UTC)  # -04:00 since 14 March


@pytest.fixture
def world(make_campaign):
    campaign = make_campaign(["ade@example.com", "kol@example.com", "ber@example.com", "lon@example.com",
                              "nyc@example.com", "odd@example.com"], name="Local morning")
    attributes = {"ade": {"timezone": "Australia/Adelaide"}, "kol": {"timezone": "Asia/Kolkata"},
                  "ber": {"country": "DE"}, "nyc": {"country": "United States"},
                  "odd": {"timezone": "Mars/Olympus_Mons"}}  # not a zone: the list's default
    for contact in Contact.objects.all():
        contact.attributes = attributes.get(contact.email.split("@")[0], {})
        contact.save()
    campaign.lists.update(default_timezone="Europe/London")
    return campaign


def sent(campaign):
    return sorted(Send.objects.filter(campaign=campaign, status=Send.Status.SENT).values_list("email", flat=True))


def tick(now):
    """Beat's due-retries tick and the batches it enqueues, run here at ``now``."""
    ids = ledger.due_waves(now)
    if ids:
        engine.send_batch(ids, now=now)
    return ids


def test_each_zone_is_sent_at_nine_in_its_own_time(sink, relay, world):
    world.local_date, world.local_time = date(2027, 3, 28), time(9, 0)
    world.save()
    preview = placement.preview_waves(world, START)
    assert [(w["at"], w["recipients"]) for w in preview] == [
        (ADELAIDE.isoformat(), 1), (KOLKATA.isoformat(), 1), (BERLIN.isoformat(), 1), (LONDON.isoformat(), 2),
        (NEW_YORK.isoformat(), 1)]

    lifecycle.start_campaign(world.pk, now=START)
    assert Send.objects.filter(campaign=world, parked=True, hold=Send.HOLD_LOCAL_TIME).count() == 6
    assert tick(START) == [] and sink.recipients() == []
    progress = lifecycle.progress(world.pk)["waves"]
    assert (progress["done"], progress["pending"]) == (0, 5)

    assert tick(ADELAIDE.replace(minute=29)) == []
    tick(ADELAIDE)
    assert sent(world) == ["ade@example.com"]
    tick(KOLKATA)
    tick(BERLIN.replace(hour=6, minute=59))  # an hour before summer time it would have been due
    assert sent(world) == ["ade@example.com", "kol@example.com"]
    tick(BERLIN)
    tick(LONDON)
    assert sent(world) == ["ade@example.com", "ber@example.com", "kol@example.com", "lon@example.com", "odd@example.com"]
    progress = lifecycle.progress(world.pk)["waves"]
    assert (progress["done"], progress["pending"]) == (4, 1)
    tick(NEW_YORK)
    assert len(sent(world)) == 6 and sorted(sink.recipients()) == sorted(Contact.objects.values_list("email", flat=True))
    ledger.settle_campaigns([world.pk])
    world.refresh_from_db()
    assert world.status == "finished"


@pytest.mark.parametrize(("passed", "kolkata_at"), [
    (PassedZones.NOW, None), (PassedZones.NEXT_DAY, datetime(2027, 3, 29, 3, 30, tzinfo=UTC))])
def test_zones_whose_time_has_passed_go_at_once_or_the_next_day(sink, relay, world, passed, kolkata_at):
    world.local_date, world.local_time, world.passed_zones = date(2027, 3, 28), time(9, 0), passed
    world.save()
    late = datetime(2027, 3, 28, 5, 0, tzinfo=UTC)  # after Adelaide's and Kolkata's 09:00
    lifecycle.start_campaign(world.pk, now=late)
    due_now = list(Send.objects.filter(campaign=world, parked=False).values_list("email", flat=True))
    held = dict(Send.objects.filter(campaign=world, parked=True).values_list("email", "next_attempt_at"))
    if passed == PassedZones.NOW:
        assert sorted(due_now) == ["ade@example.com", "kol@example.com"]
    else:
        assert due_now == [] and held["kol@example.com"] == kolkata_at
        assert held["ade@example.com"] == datetime(2027, 3, 28, 22, 30, tzinfo=UTC)
    assert held["ber@example.com"] == BERLIN


def test_quiet_hours_hold_the_zones_inside_them_until_they_end(sink, relay, world):
    world.quiet_start, world.quiet_end = time(21, 0), time(8, 0)
    world.save()
    # 12:00 UTC: 22:30 in Adelaide and 08:00 in New York (the quiet hours end at 08:00), 17:30 in Kolkata.
    lifecycle.start_campaign(world.pk, now=START)
    held = dict(Send.objects.filter(campaign=world, parked=True).values_list("email", "next_attempt_at"))
    assert held == {"ade@example.com": datetime(2027, 3, 27, 21, 30, tzinfo=UTC)}  # 08:00 ACDT on the 28th
    engine.send_batch(list(Send.objects.filter(campaign=world, parked=False).values_list("id", flat=True)), now=START)
    assert len(sent(world)) == 5
    assert tick(datetime(2027, 3, 27, 21, 29, tzinfo=UTC)) == []
    tick(datetime(2027, 3, 27, 21, 30, tzinfo=UTC))
    assert len(sent(world)) == 6


def test_a_send_that_comes_due_inside_the_quiet_hours_waits_for_their_end(sink, relay, world):
    world.quiet_start, world.quiet_end = time(21, 0), time(8, 0)
    world.save()
    lifecycle.start_campaign(world.pk, now=START)
    # The batch runs at 16:00 UTC (a retry come due, or the tail of a long send): 21:30 in Kolkata.
    late = datetime(2027, 3, 27, 16, 0, tzinfo=UTC)
    engine.send_batch(list(Send.objects.filter(campaign=world, parked=False).values_list("id", flat=True)), now=late)
    assert sent(world) == ["ber@example.com", "lon@example.com", "nyc@example.com", "odd@example.com"]
    kolkata = Send.objects.get(campaign=world, email="kol@example.com")
    assert kolkata.status == Send.Status.QUEUED and kolkata.parked
    end = datetime(2027, 3, 28, 2, 30, tzinfo=UTC)  # 08:00 in Kolkata
    assert kolkata.next_attempt_at == end + timedelta(seconds=engine.SLOT_MARGIN)
    for ids, _countdown, reserved in ledger.due_slots(now=end + timedelta(seconds=1)):
        engine.send_batch(ids, now=end + timedelta(seconds=1), reserved=reserved)
    assert "kol@example.com" in sent(world)


def test_global_quiet_hours_apply_to_a_campaign_without_its_own(world, settings):
    settings.HERALD_QUIET_HOURS = "20:00-09:00"
    lifecycle.start_campaign(world.pk, now=START)
    held = dict(Send.objects.filter(campaign=world, parked=True).values_list("email", "next_attempt_at"))
    # New York is at 08:00, Adelaide at 22:30: both wait for 09:00 in their zone.
    assert held == {"ade@example.com": datetime(2027, 3, 27, 22, 30, tzinfo=UTC), "nyc@example.com": START.replace(hour=13)}


def test_a_paused_campaign_keeps_its_waves_held_and_releases_them_on_resume(sink, relay, world):
    world.local_date, world.local_time = date(2027, 3, 28), time(9, 0)
    world.save()
    lifecycle.start_campaign(world.pk, now=START)
    lifecycle.pause_campaign(world.pk)
    assert tick(ADELAIDE) == []
    ledger.due_slots()  # gives back reserved slots of stopped campaigns: never a held row
    assert Send.objects.filter(campaign=world, parked=True).count() == 6
    lifecycle.resume_campaign(world.pk)
    tick(ADELAIDE)
    assert sent(world) == ["ade@example.com"]


def test_zones_come_from_the_attribute_the_country_by_code_or_name_or_the_list():
    assert localtime.zone_for("", "in", "").key == "Asia/Kolkata"
    assert localtime.zone_for("", "Germany", "").key == "Europe/Berlin"
    assert localtime.zone_for("Nowhere/City", "", "Australia/Adelaide").key == "Australia/Adelaide"
    assert localtime.zone_for("", "", "").key == "UTC"  # the operator's zone (TIME_ZONE)


def test_the_confirmation_shows_recipients_per_wave_and_a_list_default_must_be_a_zone(world, admin_client):
    from django.core.exceptions import ValidationError
    from django.urls import reverse

    world.local_date, world.local_time = date(2099, 3, 28), time(9, 0)
    world.save()
    page = admin_client.get(reverse("delivery-admin:campaign-send", args=[world.pk])).content.decode()
    table = page[page.index('id="send-waves"'):]
    assert table.count("<tr>") == 6  # a header and five waves
    assert "Europe/London" in table and "Asia/Kolkata" in table
    lst = world.lists.get()
    lst.default_timezone = "Europe/Londres"
    with pytest.raises(ValidationError, match="not a time zone name"):
        lst.full_clean()
