"""Recipients' local time: which zone a contact lives in, and when their message may go.

A contact's zone is its ``timezone`` attribute (an IANA name such as
Europe/Berlin), else a zone guessed from its ``country`` attribute (an ISO
3166 code or English name, read from the tz database's own tables), else the
default of the first of the campaign's lists that has one, else the
operator's zone (TIME_ZONE).

A campaign sent "at 09:00 local on a date" is released in waves, one per
distinct moment: every zone whose 09:00 is the same instant goes together
(Asia/Kolkata's 09:00 is 03:30 UTC; Australia/Adelaide's moves with its
daylight saving time, as every zone's does through zoneinfo). Zones whose
time has passed when the campaign starts are sent at once or the next day.
Quiet hours (the campaign's own, else HERALD_QUIET_HOURS) move a release
that falls inside them to their end, in the recipient's zone.
"""

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django.conf import settings

from campaigns.models import Campaign, PassedZones

ZONE_ATTRIBUTES = ("timezone", "time_zone", "tz")
# The zone.tab lists a country's zones by region, not by population: for
# countries with several, the zone where most of their people live.
MAIN_ZONES = {
    "US": "America/New_York", "CA": "America/Toronto", "AU": "Australia/Sydney", "BR": "America/Sao_Paulo",
    "RU": "Europe/Moscow", "MX": "America/Mexico_City", "ID": "Asia/Jakarta", "CN": "Asia/Shanghai",
    "KZ": "Asia/Almaty", "AR": "America/Argentina/Buenos_Aires", "ES": "Europe/Madrid", "PT": "Europe/Lisbon",
    "DE": "Europe/Berlin", "NZ": "Pacific/Auckland", "CL": "America/Santiago", "EC": "America/Guayaquil",
    "UA": "Europe/Kyiv", "MN": "Asia/Ulaanbaatar", "CD": "Africa/Kinshasa", "MY": "Asia/Kuala_Lumpur",
    "GB": "Europe/London", "UK": "Europe/London",
}


@functools.cache
def _zone_tables() -> tuple[dict, dict]:
    """(country code -> zone name, lower-case country name -> code) from the tz database's tables."""
    import tzdata

    folder = Path(tzdata.__file__).parent / "zoneinfo"
    first = {}
    for line in (folder / "zone.tab").read_text().splitlines():
        if line and not line.startswith("#"):
            code, _, name = line.split("\t")[:3]
            first.setdefault(code, name)
    names = {}
    for line in (folder / "iso3166.tab").read_text().splitlines():
        if line and not line.startswith("#"):
            code, name = line.split("\t")[:2]
            names[name.strip().lower()] = code
    return {**first, **MAIN_ZONES}, names


@functools.cache
def zone(name: str) -> ZoneInfo | None:
    """The zone of an IANA name, or None for anything else (a typo, an offset, "local")."""
    name = (name or "").strip()
    if not name or name not in _known():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@functools.cache
def _known() -> frozenset:
    return frozenset(available_timezones())


def zone_of_country(country: str) -> ZoneInfo | None:
    value = (country or "").strip()
    if not value:
        return None
    by_code, by_name = _zone_tables()
    code = value.upper() if len(value) == 2 else by_name.get(value.lower(), "")
    return zone(by_code.get(code, ""))


def default_zone() -> ZoneInfo:
    return zone(settings.TIME_ZONE) or ZoneInfo("UTC")


def zone_for(tz_attribute, country_attribute, list_default) -> ZoneInfo:
    return (zone(tz_attribute) or zone_of_country(country_attribute) or zone(list_default) or default_zone())


def _clock(value: str) -> time:
    hours, _, minutes = value.strip().partition(":")
    return time(int(hours), int(minutes or 0))


def parse_quiet_hours(value: str) -> tuple[time, time] | None:
    """``"21:00-08:00"`` → (21:00, 08:00); blank → None. Raises ValueError for anything else."""
    value = (value or "").strip()
    if not value:
        return None
    start, sep, end = value.partition("-")
    if not sep:
        raise ValueError(f"quiet hours must read like 21:00-08:00, not {value!r}")
    return _clock(start), _clock(end)


def quiet_hours(campaign) -> tuple[time, time] | None:
    """The campaign's own quiet hours, else the global HERALD_QUIET_HOURS; None when there are none."""
    if campaign.quiet_start is not None and campaign.quiet_end is not None:
        window = (campaign.quiet_start, campaign.quiet_end)
    else:
        window = parse_quiet_hours(getattr(settings, "HERALD_QUIET_HOURS", ""))
    return window if window and window[0] != window[1] else None


def _inside(moment: time, window) -> bool:
    start, end = window
    return start <= moment < end if start < end else moment >= start or moment < end


def _local(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The instant of ``at`` on ``day`` in ``tz``, in UTC. A time that a clock change skips (02:30 on the
    night clocks go forward) is the same span after the change's start, as the zone's rules read it."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def after_quiet(moment: datetime, tz: ZoneInfo, window) -> datetime:
    """``moment``, or the end of the quiet hours it falls in, in ``tz``."""
    if window is None:
        return moment
    local = moment.astimezone(tz)
    if not _inside(local.time().replace(tzinfo=None), window):
        return moment
    day = local.date() if local.time() < window[1] else local.date() + timedelta(days=1)
    return _local(day, window[1], tz)


@dataclass(frozen=True)
class Plan:
    """What decides release times for one campaign: its start, its local date and time, its quiet hours."""

    start: datetime
    local_date: date | None
    local_time: time | None
    next_day: bool
    window: tuple | None

    @classmethod
    def of(cls, campaign: Campaign, start: datetime | None = None) -> "Plan":
        return cls(start or campaign.started_at, campaign.local_date, campaign.local_time,
                   campaign.passed_zones == PassedZones.NEXT_DAY, quiet_hours(campaign))

    @property
    def active(self) -> bool:
        return self.local_time is not None and self.local_date is not None or self.window is not None

    def release(self, tz: ZoneInfo) -> datetime:
        """When a recipient in ``tz`` may be sent the message (``start`` or later)."""
        at = self.start
        if self.local_time is not None and self.local_date is not None:
            at = _local(self.local_date, self.local_time, tz)
            if at < self.start:
                at = _local(self.local_date + timedelta(days=1), self.local_time, tz) if self.next_day else self.start
        return max(after_quiet(at, tz, self.window), self.start)


def uses_local_time(campaign: Campaign) -> bool:
    return Plan.of(campaign, campaign.started_at or datetime.now(UTC)).active
