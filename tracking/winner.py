"""The A/B test's winner: chosen by its metric once the test's wait is over, or by an operator before.

The figures are people's (tracking.stats.variant_stats: machine opens and
clicks left out). Choosing is the ledger's one statement (ledger.choose_winner),
guarded by the campaign's own "no winner yet", so beat's tick and an
operator racing choose once; the remainder is then released in its waves.
"""

import logging
from datetime import timedelta

from django.utils import timezone

from campaigns import audit
from campaigns.models import Campaign, WinnerMetric, variant_letter
from delivery import dispatch, ledger, placement
from tracking.stats import variant_stats

log = logging.getLogger(__name__)

DEFAULT_WAIT = timedelta(hours=4)
OPEN = (Campaign.Status.SENDING, Campaign.Status.PAUSED)


class WinnerError(Exception):
    """The winner cannot be chosen (no test, a finished campaign, an unknown variant); the message says why."""


def _release(campaign, variant, reason, now) -> int:
    placement.requiet_held(campaign, now)
    winner = ledger.choose_winner(campaign.pk, variant, reason, now)
    if winner == variant:
        dispatch.enqueue_sends(ledger.due_waves(now, campaign_ids=[campaign.pk]))
        log.info("campaign %s: variant %s wins (%s)", campaign.pk, variant_letter(variant), reason)
    return winner


def choose_by_hand(campaign_id, variant, user=None, now=None) -> Campaign:
    now = now or timezone.now()
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        raise WinnerError(f"campaign {campaign_id} does not exist")
    numbers = campaign.variant_numbers()
    if len(numbers) < 2:
        raise WinnerError(f"campaign {campaign_id} has no variants to choose from")
    if campaign.splits_everyone:
        raise WinnerError(f"campaign {campaign_id} splits everyone between its variants: there is no winner phase")
    if variant not in numbers:
        raise WinnerError(f"variant: {variant} is not one of the campaign's ({', '.join(map(str, numbers))})")
    if campaign.winner is not None:
        raise WinnerError(f"variant {variant_letter(campaign.winner)} was already chosen as the winner")
    if campaign.status not in OPEN:
        raise WinnerError(f"campaign {campaign_id} is {campaign.status}; a winner is chosen while it sends or is paused")
    who = user.get_username() if user is not None else "API"
    winner = _release(campaign, variant, f"chosen by hand by {who}", now)
    if winner != variant:
        raise WinnerError(f"variant {variant_letter(winner)} was chosen as the winner meanwhile")
    audit.record("campaign.winner", campaign, variant=variant_letter(variant))
    return Campaign.objects.get(pk=campaign_id)


def due(now) -> list[Campaign]:
    """Tests whose wait is over and whose winner is the metric's to choose."""
    candidates = (Campaign.objects.filter(status__in=OPEN, winner__isnull=True, test_share__lt=100,
                                          started_at__isnull=False)
                  .exclude(winner_metric=WinnerMetric.MANUAL).select_related("frozen_content"))
    return [c for c in candidates
            if c.started_at + (c.winner_wait or DEFAULT_WAIT) <= now and len(c.variant_numbers()) >= 2]


def choose_due(now=None) -> dict:
    """Beat's tick: every test whose wait is over gets its winner by its metric; {campaign id: winner}."""
    now = now or timezone.now()
    chosen = {}
    for campaign in due(now):
        stats = variant_stats(campaign)
        leader = next(v for v in stats["variants"] if v["leader"])
        reason = (f"{stats['metric_label']} after {campaign.winner_wait or DEFAULT_WAIT}: "
                  f"{leader['rate'] * 100:.1f} % ({leader['metric_count']} of {leader['metric_base']}). "
                  + stats["summary"])
        chosen[campaign.pk] = _release(campaign, leader["number"], reason, now)
    return chosen
