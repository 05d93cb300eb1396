"""The daily step of warm-up schedules: grow, hold or step back, from what came back since the last step.

Once a day (beat runs ``step`` every minute; it acts on each schedule at most
once per day), each running schedule (delivery.warmup) is judged on the
sends of its identity's campaigns answered since its last step, with the
circuit breaker's figures (tracking.breaker.figures):

- hard bounces over HERALD_BREAKER_HARD_BOUNCE_PERCENT of the attempts,
  complaints over HERALD_BREAKER_COMPLAINT_PERCENT of the deliveries, or one
  provider's policy blocks over HERALD_BREAKER_POLICY_PERCENT of the attempts to
  it: the schedule steps back a stage (the same limits pause a campaign);
- hard bounces over HERALD_WARMUP_HARD_BOUNCE_PERCENT or complaints over
  HERALD_WARMUP_COMPLAINT_PERCENT: it holds;
- the busiest provider received less than half its allowance on the last day:
  it holds, since a day of little mail says little about a larger one;
- otherwise it advances, and completes once the next volume reaches
  delivery.warmup.COMPLETE_AT.

Rates are judged from MIN_SAMPLE attempts up: two bounces in three messages
hold nothing back. Each step is a WarmupStep row with its figures and reason.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from campaigns.models import Campaign
from delivery import warmup
from delivery.models import Warmup, WarmupStep
from tracking import breaker

log = logging.getLogger(__name__)

MIN_SAMPLE = 20
A = WarmupStep.Action


def _pct(count, base):
    return count * 100 / base if base else 0.0


def campaigns_of(identity: str) -> list:
    """The campaigns sent from a sending identity: those whose From address is at the domain."""
    return list(Campaign.objects.filter(from_email__iendswith="@" + identity).values_list("id", flat=True))


def busiest_usage(identity: str, stepped_on, today) -> int:
    """The most messages one provider received on a day since the last step (the days Redis still holds)."""
    first = max(stepped_on or today - timedelta(days=1), today - timedelta(days=2))
    best, day = 0, first
    while day < today:
        best = max([best, *warmup.usage(identity, day).values()])
        day += timedelta(days=1)
    return best


def judge(f: breaker.Figures, volume: int, busiest: int) -> tuple[str, str]:
    """(action, reason) for a schedule at daily ``volume`` whose busiest provider received ``busiest``."""
    limits = breaker.thresholds()
    M = breaker.M
    hard, complaints = _pct(f.hard, f.attempts), _pct(f.complaints, f.delivered)
    if f.attempts >= MIN_SAMPLE:
        if hard > limits[M.HARD_BOUNCE]:
            return A.BACK, f"hard bounces {f.hard} of {f.attempts} attempts ({hard:.2f} %), over {limits[M.HARD_BOUNCE]:g} %"
        if complaints > limits[M.COMPLAINT]:
            return A.BACK, (f"complaints {f.complaints} of {f.delivered} deliveries ({complaints:.2f} %), "
                            f"over {limits[M.COMPLAINT]:g} %")
    for name, (blocks, tried) in sorted(f.policy.items()):
        if tried >= MIN_SAMPLE and _pct(blocks, tried) > limits[M.POLICY]:
            return A.BACK, (f"policy blocks by {name} {blocks} of {tried} attempts ({_pct(blocks, tried):.2f} %), "
                            f"over {limits[M.POLICY]:g} %")
    if f.attempts >= MIN_SAMPLE:
        if hard > settings.HERALD_WARMUP_HARD_BOUNCE_PERCENT:
            return A.HOLD, (f"hard bounces {f.hard} of {f.attempts} attempts ({hard:.2f} %), "
                            f"over {settings.HERALD_WARMUP_HARD_BOUNCE_PERCENT:g} %")
        if complaints > settings.HERALD_WARMUP_COMPLAINT_PERCENT:
            return A.HOLD, (f"complaints {f.complaints} of {f.delivered} deliveries ({complaints:.2f} %), "
                            f"over {settings.HERALD_WARMUP_COMPLAINT_PERCENT:g} %")
    if busiest * 2 < volume:
        return A.HOLD, f"the busiest provider received {busiest} of its {volume}: growth waits for a day that uses half"
    return A.ADVANCE, (f"hard bounces {hard:.2f} %, complaints {complaints:.2f} % "
                       f"of {f.attempts} attempts; the busiest provider received {busiest} of {volume}")


def step_one(w: Warmup, now, today) -> WarmupStep | None:
    """Take today's step of one schedule (None when it has no step to take)."""
    volume = warmup.allowance(w)
    if volume is None:
        return None  # off or complete
    if w.stepped_on is None:
        # The first day: it starts at stage 0 and is judged tomorrow.
        Warmup.objects.filter(pk=w.pk, stepped_on__isnull=True).update(stepped_on=today)
        return None
    since = w.steps.aggregate(at=Max("created_at"))["at"] or w.created_at
    ids = campaigns_of(w.identity)
    f = breaker.figures(ids, since) if ids else breaker.Figures()
    action, why = judge(f, volume, busiest_usage(w.identity, w.stepped_on, today))
    stage = {A.ADVANCE: w.stage + 1, A.BACK: max(0, w.stage - 1)}.get(action, w.stage)
    preset = warmup.PRESETS[w.preset]
    after = preset.volume(stage)
    if after is None:
        action, reason = A.COMPLETE, f"{why}. Warm-up complete: no daily limit from now on."
    else:
        reason = f"{why}. {A(action).label} to {after} messages a day per provider."
    try:
        with transaction.atomic():
            # Once per schedule and day, however many beats run it at once.
            if not Warmup.objects.filter(pk=w.pk, stepped_on__lt=today).update(
                    stage=stage, stepped_on=today, reason=reason, updated_at=now):
                return None
            done = WarmupStep.objects.create(
                warmup=w, day=today, action=action, from_stage=w.stage, to_stage=stage, attempts=f.attempts,
                hard_bounces=f.hard, complaints=f.complaints, reason=reason, created_at=now)
    except IntegrityError:
        return None
    warmup.schedules.invalidate()
    if action in (A.ADVANCE, A.COMPLETE):
        warmup.release_held(w.identity, now)
    log.info("warm-up of %s: %s", w.identity, reason)
    return done


def step(now=None) -> list:
    """Take the day's step of every running schedule that has not taken it yet."""
    now = now or timezone.now()
    today = warmup.day_of(now)
    due = Warmup.objects.exclude(preset=Warmup.Preset.OFF).filter(Q(stepped_on__isnull=True) | Q(stepped_on__lt=today))
    return [s for s in (step_one(w, now, today) for w in due) if s is not None]
