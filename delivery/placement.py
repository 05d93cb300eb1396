"""Where each snapshotted recipient stands: which A/B variant it gets, and when it may be sent.

Run on each snapshot chunk, in the chunk's transaction, for campaigns with
variants, a local delivery time or quiet hours (others skip it: their rows
are sent as they are). The variant comes from a seeded hash of the campaign
and the contact, so a chunk done twice, or the snapshot run again, splits
the audience the same way: a share of the hash range (the test share) is
split evenly between the variants, and the rest is held for the winner.
Release times come from each contact's zone (delivery.localtime). Statements
on the rows are the ledger's (ledger.place).
"""

import hashlib
from collections import defaultdict
from datetime import UTC, datetime

from django.db.models import Count, OuterRef, Subquery
from django.db.models.fields.json import KeyTextTransform

from campaigns.audience import LIVE
from campaigns.models import Campaign, MailingList, Subscription
from delivery import ledger, localtime, planner
from delivery.models import Send

HASH_SPACE = 2 ** 64


def share_point(campaign_id: int, contact_id: int) -> float:
    """A contact's fixed place in [0, 1) for a campaign: the seeded hash both the test share and the split read."""
    digest = hashlib.blake2b(f"{campaign_id}:{contact_id}".encode(), digest_size=8, person=b"herald-ab").digest()
    return int.from_bytes(digest, "big") / HASH_SPACE


def assign(campaign_id: int, contact_id: int, numbers: list[int], share: int) -> int | None:
    """The variant a contact gets; None when it is in the remainder that waits for the winner."""
    point = share_point(campaign_id, contact_id)
    fraction = min(share, 100) / 100
    if point >= fraction:
        return None
    return numbers[min(int(point / fraction * len(numbers)), len(numbers) - 1)]


def needed(campaign: Campaign) -> bool:
    return len(campaign.variant_numbers()) >= 2 or localtime.Plan.of(campaign, campaign.started_at).active


def _list_default(campaign, outer):
    """A subquery: the default zone of the first of the campaign's lists (for others: of any list) the contact
    (``outer``, a reference to it) is on."""
    lists = list(campaign.lists.values_list("id", flat=True))
    subs = Subscription.objects.filter(LIVE, contact_id=OuterRef(outer)).exclude(mailing_list__default_timezone="")
    if lists:
        subs = subs.filter(mailing_list_id__in=lists)
    return Subquery(subs.order_by("mailing_list_id").values("mailing_list__default_timezone")[:1])


def _zoned(rows, campaign, contact_field):
    """``rows`` annotated with the zone attributes of their contact (``contact_field``: "contact__" for sends,
    "" for contacts), and whether a list default is among them."""
    defaults = MailingList.objects.exclude(default_timezone="").exists()
    rows = rows.annotate(
        tz=KeyTextTransform("timezone", f"{contact_field}attributes"),
        country=KeyTextTransform("country", f"{contact_field}attributes"),
    )
    if defaults:
        rows = rows.annotate(list_tz=_list_default(campaign, "contact_id" if contact_field else "pk"))
    return rows, defaults


class _Zones:
    """Zone look-ups and release times, once per distinct (timezone, country, list default)."""

    def __init__(self, plan):
        self.plan = plan
        self.seen = {}

    def __call__(self, tz, country, list_tz):
        key = (tz, country, list_tz)
        hit = self.seen.get(key)
        if hit is None:
            zone = localtime.zone_for(tz, country, list_tz)
            hit = self.seen[key] = (zone.key, self.plan.release(zone) if self.plan.active else self.plan.start)
        return hit


def zones_of_sends(campaign: Campaign, send_ids) -> dict:
    """{send id: the recipient's time zone} for sends of ``campaign``, in one query."""
    rows, defaults = _zoned(Send.objects.filter(id__in=list(send_ids)), campaign, "contact__")
    fields = ["id", "tz", "country"] + (["list_tz"] if defaults else [])
    found = {}
    for values in rows.order_by().values_list(*fields):
        found[values[0]] = localtime.zone_for(values[1], values[2], values[3] if defaults else None)
    return found


def place_chunk(campaign: Campaign, after: int, upto: int) -> dict:
    """Set the variant and release of the rows of contacts ``after < id <= upto``; returns the waves they add:
    {release ISO time: {"recipients": n, "zones": {name: n}}}."""
    plan = localtime.Plan.of(campaign, campaign.started_at or datetime.now(UTC))
    numbers = campaign.variant_numbers()
    numbers = numbers if len(numbers) >= 2 else []
    rows = Send.objects.filter(campaign_id=campaign.pk, contact_id__gt=after, contact_id__lte=upto,
                               status=Send.Status.QUEUED, hold=0)
    fields = ["id", "contact_id"]
    if plan.active:
        rows, defaults = _zoned(rows, campaign, "contact__")
        fields += ["tz", "country"] + (["list_tz"] if defaults else [])
    zones = _Zones(plan)
    groups, waves = defaultdict(list), {}
    for values in rows.order_by().values_list(*fields).iterator(chunk_size=5000):
        send_id, contact_id = values[:2]
        name, release = zones(*values[2:5], *([None] * (5 - len(values)))) if plan.active else ("", plan.start)
        variant = assign(campaign.pk, contact_id, numbers, campaign.test_share) if numbers else None
        hold = Send.HOLD_WINNER if numbers and variant is None else 0
        groups[variant, hold, None if release <= plan.start and not hold else release].append(send_id)
        if plan.active:
            wave = waves.setdefault(release.isoformat(), {"recipients": 0, "zones": {}})
            wave["recipients"] += 1
            wave["zones"][name] = wave["zones"].get(name, 0) + 1
    ledger.place(groups)
    return waves


def merge_waves(stored: list, added: dict) -> list:
    """The campaign's wave list with a chunk's waves added, in time order."""
    by_time = {w["at"]: {"at": w["at"], "recipients": w["recipients"], "zones": dict(w["zones"])} for w in stored}
    for at, wave in added.items():
        entry = by_time.setdefault(at, {"at": at, "recipients": 0, "zones": {}})
        entry["recipients"] += wave["recipients"]
        for name, n in wave["zones"].items():
            entry["zones"][name] = entry["zones"].get(name, 0) + n
    return [by_time[at] for at in sorted(by_time)]


def preview_waves(campaign: Campaign, now: datetime | None = None) -> list[dict]:
    """The waves a start now would make, from the audience as it is: [{"at", "recipients", "zones"}] in time order.

    One aggregate query (recipients by zone attributes), for the send confirmation.
    """
    plan = localtime.Plan.of(campaign, now or datetime.now(UTC))
    if not plan.active:
        return []
    contacts, defaults = _zoned(planner.targeted_contacts(campaign), campaign, "")
    keys = ["tz", "country"] + (["list_tz"] if defaults else [])
    zones = _Zones(plan)
    waves = {}
    for row in contacts.order_by().values(*keys).annotate(n=Count("id")):
        name, release = zones(row["tz"], row["country"], row.get("list_tz"))
        wave = waves.setdefault(release.isoformat(), {"recipients": 0, "zones": {}})
        wave["recipients"] += row["n"]
        wave["zones"][name] = wave["zones"].get(name, 0) + row["n"]
    return merge_waves([], waves)


def wave_progress(campaign: Campaign) -> list[dict]:
    """The campaign's waves with what is still held of each: [{"at", "recipients", "zones", "held", "done"}]."""
    held = {release.astimezone(UTC): n for release, n in ledger.held_counts(campaign.pk).items() if release}
    out = []
    for wave in campaign.waves:
        at = datetime.fromisoformat(wave["at"]).astimezone(UTC)
        waiting = held.get(at, {"local_time": 0, "winner": 0})
        total_held = waiting["local_time"] + waiting["winner"]
        out.append({**wave, "held": total_held, "done": total_held == 0})
    return out


def requiet_held(campaign: Campaign, now: datetime) -> None:
    """Before the winner is released: rows held for it whose zone is in quiet hours now wait for their end."""
    plan = localtime.Plan.of(campaign, now)
    if plan.window is None:
        return
    rows, defaults = _zoned(Send.objects.filter(campaign_id=campaign.pk, hold=Send.HOLD_WINNER), campaign, "contact__")
    fields = ["id", "next_attempt_at", "tz", "country"] + (["list_tz"] if defaults else [])
    moves = defaultdict(list)
    for send_id, release, *zone_fields in rows.order_by().values_list(*fields).iterator(chunk_size=5000):
        zone = localtime.zone_for(*zone_fields, *([None] * (3 - len(zone_fields))))
        base = max(release or now, now)
        later = localtime.after_quiet(base, zone, plan.window)
        if later != release and later > now:
            moves[later].append(send_id)
    ledger.move_held(campaign.pk, moves, now)
