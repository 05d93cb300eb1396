"""Starting scheduled campaigns when their time comes (run by beat every few seconds).

Each due campaign is claimed with a conditional UPDATE (``scheduled`` →
``starting``) in the same transaction that freezes its content. Two dispatcher
ticks racing (a duplicate tick, a second beat by mistake) both try the UPDATE;
PostgreSQL makes the second wait for the first's row lock and then re-checks
the WHERE clause, which no longer matches: one tick starts the campaign, the
other does nothing. The audience snapshot is then a worker's task, exactly as
when an operator presses Send (delivery.lifecycle): the tick never waits for it.

A start whose snapshot stopped making progress (its worker was killed, its
task was lost with the broker) is handed to a worker again by the next tick;
the snapshot resumes where it stopped.

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
from delivery import lifecycle

log = logging.getLogger(__name__)


@dataclass
class Tick:
    """What one tick did: campaign ids started, marked missed, left to another tick, or whose stalled start it handed on."""

    started: list = field(default_factory=list)
    missed: list = field(default_factory=list)
    lost_race: list = field(default_factory=list)
    restarted: list = field(default_factory=list)


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
        ).update(status=Campaign.Status.STARTING, started_at=now, status_reason="", updated_at=now)
        if not claimed:
            return False
        campaign = Campaign.objects.get(pk=campaign_id)
        if not campaign.has_audience():
            # Nothing to snapshot: leave it for the operator rather than finish it empty.
            Campaign.objects.filter(pk=campaign_id).update(
                status=Campaign.Status.MISSED, started_at=None,
                status_reason=("It has no target lists or segments, so the scheduler could not start it. "
                               "Add a list or a segment and start it."),
            )
            log.warning("campaign %s is due but has no target lists or segments", campaign_id)
            return False
        lifecycle.enter_starting(campaign, now)
        lifecycle.hand_off(campaign_id)
    log.info("started scheduled campaign %s; a worker snapshots its audience", campaign_id)
    return True


def restart_stalled(now) -> list[int]:
    """Hand starts that committed no snapshot chunk for a while to a worker again; returns their ids.

    Each is claimed by moving its ``updated_at``, so racing ticks hand it on
    once, and a start waiting behind busy workers is handed on at most once
    per stall period. A second run beside a live one is harmless: a chunk
    commits only from the cursor it began at.
    """
    limit = now - timedelta(seconds=lifecycle.STALLED_START_SECONDS)
    stalled = Campaign.objects.filter(status=Campaign.Status.STARTING, updated_at__lt=limit)
    restarted = []
    for campaign_id in stalled.values_list("id", flat=True):
        with transaction.atomic():
            if Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.STARTING, updated_at__lt=limit).update(
                    updated_at=now):
                lifecycle.hand_off(campaign_id)
                restarted.append(campaign_id)
    if restarted:
        log.warning("campaigns %s made no progress starting; handed to a worker again", restarted)
    return restarted


def dispatch_due(now=None) -> Tick:
    """One dispatcher tick: mark what is too late as missed, start what is due, and hand on stalled starts."""
    now = now or timezone.now()
    tick = Tick(missed=mark_missed(now), restarted=restart_stalled(now))
    due = Campaign.objects.filter(status=Campaign.Status.SCHEDULED, scheduled_at__lte=now).order_by("scheduled_at", "id")
    for campaign_id in due.values_list("id", flat=True):
        (tick.started if claim_and_start(campaign_id, now) else tick.lost_race).append(campaign_id)
    return tick


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
