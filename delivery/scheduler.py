"""Starting scheduled campaigns when their time comes (run by beat every few seconds).

Each due campaign is claimed with a conditional UPDATE (``scheduled`` →
``sending``) in the same transaction as its audience snapshot. Two dispatcher
ticks racing (a duplicate tick, a second beat by mistake) both try the UPDATE;
PostgreSQL makes the second wait for the first's row lock and then re-checks
the WHERE clause, which no longer matches: one tick starts the campaign, the
other does nothing. The claim and the snapshot commit together, so the sweeper
never sees a "sending" campaign without its Send rows and never finishes it
early.

A campaign whose time passed more than ``HERALD_SCHEDULE_CUTOFF`` seconds ago
(beat was down, the machine was off) is not started silently: it goes to
``missed``, which the admin shows, to be started or rescheduled by hand.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.models import Campaign
from delivery import dispatch, engine, planner

log = logging.getLogger(__name__)


@dataclass
class Tick:
    """What one dispatcher tick did: campaign ids started, marked missed, or left to another tick."""

    started: list = field(default_factory=list)
    missed: list = field(default_factory=list)
    lost_race: list = field(default_factory=list)


def cutoff_seconds() -> int:
    return getattr(settings, "HERALD_SCHEDULE_CUTOFF", 6 * 3600)


def mark_missed(now) -> list[int]:
    """Scheduled campaigns older than the cutoff go to ``missed``; returns their ids."""
    limit = now - timedelta(seconds=cutoff_seconds())
    ids = list(
        Campaign.objects.filter(status=Campaign.Status.SCHEDULED, scheduled_at__lt=limit).values_list("id", flat=True)
    )
    missed = []
    for campaign_id in ids:
        campaign = Campaign.objects.filter(pk=campaign_id).only("scheduled_at").first()
        if campaign is None:
            continue
        late = _hours(now - campaign.scheduled_at)
        reason = (
            f"Scheduled for {campaign.scheduled_at:%Y-%m-%d %H:%M} UTC, {late} ago, more than the "
            f"{_hours(timedelta(seconds=cutoff_seconds()))} cutoff (HERALD_SCHEDULE_CUTOFF): the scheduler was not "
            "running then. Start it now or schedule it again."
        )
        # Conditional too: an operator may have started or rescheduled it meanwhile.
        if Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SCHEDULED, scheduled_at__lt=limit).update(
            status=Campaign.Status.MISSED, status_reason=reason, updated_at=now
        ):
            log.warning("campaign %s missed its schedule: %s", campaign_id, reason)
            missed.append(campaign_id)
    return missed


def claim_and_start(campaign_id, now) -> bool:
    """Start one due campaign if this caller wins the claim; False when another tick (or an operator) did."""
    with transaction.atomic():
        claimed = Campaign.objects.filter(
            pk=campaign_id, status=Campaign.Status.SCHEDULED, scheduled_at__lte=now
        ).update(status=Campaign.Status.SENDING, started_at=now, status_reason="", updated_at=now)
        if not claimed:
            return False
        campaign = Campaign.objects.get(pk=campaign_id)
        if not campaign.lists.exists():
            # Nothing to snapshot: leave it for the operator rather than finish it empty.
            Campaign.objects.filter(pk=campaign_id).update(
                status=Campaign.Status.MISSED, started_at=None,
                status_reason="It has no target lists, so the scheduler could not start it. Add a list and start it.",
            )
            log.warning("campaign %s is due but has no target lists", campaign_id)
            return False
        total = planner.snapshot(campaign)
        Campaign.objects.filter(pk=campaign_id).update(total=total)
    # After the commit, so workers see the rows they are handed.
    if total:
        dispatch.enqueue_campaign(campaign_id)
    engine.settle_campaigns([campaign_id])
    log.info("started scheduled campaign %s with %d recipient(s)", campaign_id, total)
    return True


def dispatch_due(now=None) -> Tick:
    """One dispatcher tick: mark what is too late as missed, then start what is due."""
    now = now or timezone.now()
    tick = Tick(missed=mark_missed(now))
    due = Campaign.objects.filter(status=Campaign.Status.SCHEDULED, scheduled_at__lte=now).order_by("scheduled_at", "id")
    for campaign_id in due.values_list("id", flat=True):
        (tick.started if claim_and_start(campaign_id, now) else tick.lost_race).append(campaign_id)
    return tick


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
