"""A campaign's life: draft → scheduled → sending → finished, with pause, resume and cancel.

Every change is a conditional UPDATE on the current status, so two operators
(or an operator and a worker) racing on one campaign cannot both win.
"""

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from campaigns import audit
from campaigns.models import Campaign
from delivery import dispatch, engine, planner
from delivery.models import Send
from delivery.signals import resuming

STARTABLE = (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.MISSED)
COUNT_KEYS = [s.value for s in Send.Status]


class LifecycleError(Exception):
    """The campaign is not in a state that allows the action; the message says why."""


class AcknowledgementRequired(LifecycleError):
    """The campaign paused itself for a reason an operator must confirm having read before it resumes."""


def _get(campaign_id):
    try:
        return Campaign.objects.get(pk=campaign_id)
    except Campaign.DoesNotExist:
        raise LifecycleError(f"campaign {campaign_id} does not exist") from None


def _refuse(campaign, action, allowed):
    raise LifecycleError(
        f"campaign {campaign.pk} is {campaign.status}; it can {action} only when {' or '.join(str(a) for a in allowed)}"
    )


def _recorded(action, campaign_id, **detail) -> Campaign:
    """The campaign as it is now, with the action in the audit log."""
    campaign = _get(campaign_id)
    audit.record(action, campaign, **detail)
    return campaign


def start_campaign(campaign_id) -> Campaign:
    """Snapshot the audience into Send rows and enqueue them. Called by the scheduler, API, admin and CLI."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
        if campaign is None:
            raise LifecycleError(f"campaign {campaign_id} does not exist")
        if campaign.status not in STARTABLE:
            _refuse(campaign, "start", STARTABLE)
        if not campaign.lists.exists():
            raise LifecycleError(f"campaign {campaign.pk} has no target lists")
        total = planner.snapshot(campaign)
        now = timezone.now()
        Campaign.objects.filter(pk=campaign.pk).update(
            status=Campaign.Status.SENDING, total=total, started_at=now, status_reason="", updated_at=now
        )
    if total:
        dispatch.enqueue_campaign(campaign.pk)
    engine.settle_campaigns([campaign.pk])
    return _recorded("campaign.start", campaign.pk, recipients=total)


def schedule_campaign(campaign_id, at) -> Campaign:
    if at is None:
        raise LifecycleError("a schedule needs a time (scheduled_at)")
    if timezone.is_naive(at):
        raise LifecycleError("scheduled_at needs a time zone, e.g. 2030-01-01T09:00:00Z")
    updated = Campaign.objects.filter(pk=campaign_id, status__in=STARTABLE).update(
        status=Campaign.Status.SCHEDULED, scheduled_at=at, updated_at=timezone.now()
    )
    if not updated:
        _refuse(_get(campaign_id), "be scheduled", STARTABLE)
    return _recorded("campaign.schedule", campaign_id, at=at.isoformat())


def pause_campaign(campaign_id, reason="") -> Campaign:
    """Workers claim nothing more for a paused campaign and stop within a second; messages on the wire finish."""
    updated = Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING).update(
        status=Campaign.Status.PAUSED, status_reason=reason, updated_at=timezone.now()
    )
    if not updated:
        _refuse(_get(campaign_id), "pause", [Campaign.Status.SENDING])
    # Batches already claimed stop between two messages, not at their end.
    engine.flag_stop([campaign_id])
    return _recorded("campaign.pause", campaign_id, reason=reason)


def resume_campaign(campaign_id, acknowledge=False) -> Campaign:
    """Continue with the rows still queued; sent rows are never touched again.

    A campaign the circuit breaker paused resumes only with ``acknowledge``
    (the receivers of ``resuming`` decide; see tracking.breaker).
    """
    campaign = _get(campaign_id)
    if campaign.status != Campaign.Status.PAUSED:
        _refuse(campaign, "resume", [Campaign.Status.PAUSED])
    resuming.send(sender=Campaign, campaign=campaign, acknowledge=bool(acknowledge))
    updated = Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.PAUSED).update(
        status=Campaign.Status.SENDING, status_reason="", updated_at=timezone.now()
    )
    if not updated:
        _refuse(_get(campaign_id), "resume", [Campaign.Status.PAUSED])
    engine.clear_stop([campaign_id])
    dispatch.enqueue_campaign(campaign_id)
    engine.settle_campaigns([campaign_id])
    return _recorded("campaign.resume", campaign_id)


def cancel_campaign(campaign_id) -> Campaign:
    """Unsent rows become cancelled; rows on the wire finish and keep their outcome."""
    allowed = [Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.MISSED,
               Campaign.Status.SENDING, Campaign.Status.PAUSED]
    now = timezone.now()
    updated = Campaign.objects.filter(pk=campaign_id, status__in=allowed).update(
        status=Campaign.Status.CANCELLED, finished_at=now, updated_at=now
    )
    if not updated:
        _refuse(_get(campaign_id), "be cancelled", allowed)
    engine.flag_stop([campaign_id])
    engine.settle_campaigns([campaign_id])
    return _recorded("campaign.cancel", campaign_id)


def counts(campaign_id) -> dict:
    """Rows by status, and their total: at every moment total is the sum of the others."""
    rows = Send.objects.filter(campaign_id=campaign_id).values("status").annotate(n=Count("id"))
    found = {row["status"]: row["n"] for row in rows}
    out = {key: found.get(key, 0) for key in COUNT_KEYS}
    out["total"] = sum(out.values())
    return out


def progress(campaign_id) -> dict:
    campaign = _get(campaign_id)
    return {
        "id": campaign.pk,
        "status": campaign.status,
        "status_reason": campaign.status_reason,
        "started_at": campaign.started_at,
        "finished_at": campaign.finished_at,
        "counts": counts(campaign_id),
    }
