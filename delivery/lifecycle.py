"""A campaign's life: draft → scheduled → starting → sending → finished, with pause, resume and cancel.

Every change is a conditional UPDATE on the current status, so two operators
(or an operator and a worker) racing on one campaign cannot both win.

Starting is two steps, so that no web request ever waits for an audience
snapshot (a million contacts take half a minute). ``begin_start`` freezes the
content and moves the campaign to ``starting``, at once; ``prepare``, run by a
worker (the ``delivery.start_campaign`` task), snapshots the audience into
Send rows one committed chunk of contacts at a time, then moves the campaign
to ``sending`` and enqueues it. Each chunk commits together with the cursor
that records it, and only while the campaign is still starting, so a pause
or a cancel stops the snapshot between two chunks, a resume continues from
the cursor, and a worker lost in the middle is simply run again: nobody is
left out and nobody is added twice.
"""

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from campaigns import audit
from campaigns.models import Campaign
from delivery import dispatch, ledger, placement, planner
from delivery.models import Send
from delivery.signals import resuming

log = logging.getLogger(__name__)

STARTABLE = (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.MISSED)
COUNT_KEYS = [s.value for s in Send.Status]
START_TASK = "delivery.start_campaign"
# A start whose snapshot committed no chunk for this long lost its worker (or
# its task): the scheduler's tick hands it to a worker again.
STALLED_START_SECONDS = 60


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


def snapshot_chunk() -> int:
    return getattr(settings, "HERALD_START_CHUNK", 20000)


def start_campaign(campaign_id, now=None) -> Campaign:
    """Start and snapshot the audience here, then enqueue: for the command line, scripts and tests.

    Web requests and the scheduler use ``start_in_background``. ``now``: the
    start time, from which local-time waves and an A/B test's wait are counted.
    """
    begin_start(campaign_id, now)
    prepare(campaign_id)
    return _get(campaign_id)


def start_in_background(campaign_id) -> Campaign:
    """Freeze the content, show the campaign as starting and leave the snapshot to a worker; returns at once."""
    campaign = begin_start(campaign_id)
    hand_off(campaign_id)
    return campaign


def begin_start(campaign_id, now=None) -> Campaign:
    now = now or timezone.now()
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
        if campaign is None:
            raise LifecycleError(f"campaign {campaign_id} does not exist")
        if campaign.status not in STARTABLE:
            _refuse(campaign, "start", STARTABLE)
        if not campaign.has_audience():
            raise LifecycleError(f"campaign {campaign.pk} has no target lists or segments")
        if campaign.not_before is not None and campaign.not_before > now:
            raise LifecycleError(f"campaign {campaign.pk} may not start before {campaign.not_before.isoformat()}")
        enter_starting(campaign, now)
    return _recorded("campaign.start", campaign_id)


def enter_starting(campaign, now):
    """Freeze what the campaign sends and mark its whole audience as still to snapshot.

    The caller holds the campaign (a lock or a conditional UPDATE to
    ``starting`` in the same transaction). The audience ends at the highest
    contact id now: contacts added while the snapshot runs wait for the next campaign.
    """
    campaign.freeze_content()
    Campaign.objects.filter(pk=campaign.pk).update(
        status=Campaign.Status.STARTING, started_at=now, total=0, status_reason="",
        snapshot_upto=planner.highest_contact_id(), snapshot_cursor=0, updated_at=now,
    )


def hand_off(campaign_id):
    """Have a worker run ``prepare`` once the current transaction commits.

    Published by task name: delivery.tasks imports this module, not the
    reverse. In eager mode (development) the work runs here, as an eager task
    would. A broker that refuses the message leaves the campaign starting; the
    scheduler's tick hands it on once it has stalled.
    """
    from herald.celery import app

    def publish():
        if app.conf.task_always_eager:
            prepare(campaign_id)
            return
        try:
            app.send_task(START_TASK, args=[campaign_id])
        except Exception as exc:
            log.warning("could not hand campaign %s to a worker (%s); the scheduler will retry", campaign_id, exc)

    transaction.on_commit(publish)


class _Overtaken(Exception):
    """The campaign stopped starting, or another run took this chunk, while the chunk was written."""


def prepare(campaign_id, on_chunk=None) -> Campaign | None:
    """Snapshot what is left of a starting campaign's audience, then start sending it.

    Idempotent and resumable: it does nothing for a campaign that is not
    starting, and continues from the cursor where a lost run stopped.
    ``on_chunk(cursor, upto)`` is called after each committed chunk.
    """
    while True:
        campaign = Campaign.objects.filter(pk=campaign_id).first()
        if campaign is None or campaign.status != Campaign.Status.STARTING:
            return campaign  # paused or cancelled meanwhile, or another run started it
        after, upto = campaign.snapshot_cursor or 0, campaign.snapshot_upto or 0
        if after >= upto:
            return _start_sending(campaign_id)
        step = planner.next_chunk(after, upto, snapshot_chunk())
        placed = placement.needed(campaign)
        try:
            with transaction.atomic():
                added = planner.snapshot_range(campaign, after, step)
                # Variants and local-time holds go with the rows, in the chunk's transaction.
                waves = placement.place_chunk(campaign, after, step) if placed else {}
                # Committed only if the campaign is still starting from this very cursor:
                # a pause, a cancel or a second run meanwhile rolls the chunk back.
                if not Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.STARTING,
                                               snapshot_cursor=after).update(
                        snapshot_cursor=step, total=F("total") + added, updated_at=timezone.now()):
                    raise _Overtaken
                if waves:
                    # The row is ours since the UPDATE above: no other run writes its waves meanwhile.
                    Campaign.objects.filter(pk=campaign_id).update(
                        waves=placement.merge_waves(Campaign.objects.get(pk=campaign_id).waves, waves))
        except _Overtaken:
            continue
        if on_chunk is not None:
            on_chunk(step, upto)


def _start_sending(campaign_id) -> Campaign:
    now = timezone.now()
    with transaction.atomic():
        total = Send.objects.filter(campaign_id=campaign_id).count()
        started = Campaign.objects.filter(
            pk=campaign_id, status=Campaign.Status.STARTING, snapshot_cursor__gte=F("snapshot_upto")
        ).update(status=Campaign.Status.SENDING, total=total, updated_at=now)
    # After the commit, so workers see the rows they are handed. A worker lost
    # in the middle of this leaves queued rows without a task: the sweeper
    # enqueues them again.
    if started and total:
        dispatch.enqueue_campaign(campaign_id)  # rows held for their local time or the winner wait parked
    if started:
        ledger.settle_campaigns([campaign_id])
        log.info("campaign %s is sending to %d recipient(s)", campaign_id, total)
    return _get(campaign_id)


def schedule_campaign(campaign_id, at) -> Campaign:
    if at is None:
        raise LifecycleError("a schedule needs a time (scheduled_at)")
    if timezone.is_naive(at):
        raise LifecycleError("scheduled_at needs a time zone, e.g. 2030-01-01T09:00:00Z")
    not_before = Campaign.objects.filter(pk=campaign_id).values_list("not_before", flat=True).first()
    if not_before is not None and at < not_before:
        raise LifecycleError(f"scheduled_at: campaign {campaign_id} may not start before {not_before.isoformat()}")
    updated = Campaign.objects.filter(pk=campaign_id, status__in=STARTABLE).update(
        status=Campaign.Status.SCHEDULED, scheduled_at=at, updated_at=timezone.now()
    )
    if not updated:
        _refuse(_get(campaign_id), "be scheduled", STARTABLE)
    return _recorded("campaign.schedule", campaign_id, at=at.isoformat())


def pause_campaign(campaign_id, reason="") -> Campaign:
    """Workers claim nothing more for a paused campaign and stop within a second; messages on the wire finish.

    A campaign paused while starting stops its snapshot after the chunk in hand.
    """
    pausable = [Campaign.Status.STARTING, Campaign.Status.SENDING]
    updated = Campaign.objects.filter(pk=campaign_id, status__in=pausable).update(
        status=Campaign.Status.PAUSED, status_reason=reason, updated_at=timezone.now()
    )
    if not updated:
        _refuse(_get(campaign_id), "pause", pausable)
    # Batches already claimed stop between two messages, not at their end.
    ledger.flag_stop([campaign_id])
    return _recorded("campaign.pause", campaign_id, reason=reason)


def resume_campaign(campaign_id, acknowledge=False) -> Campaign:
    """Continue with the rows still queued; sent rows are never touched again.

    A campaign paused before its snapshot was done goes back to starting, and
    a worker continues the snapshot where it stopped. A campaign the circuit
    breaker paused resumes only with ``acknowledge`` (the receivers of
    ``resuming`` decide; see tracking.breaker).
    """
    campaign = _get(campaign_id)
    if campaign.status != Campaign.Status.PAUSED:
        _refuse(campaign, "resume", [Campaign.Status.PAUSED])
    resuming.send(sender=Campaign, campaign=campaign, acknowledge=bool(acknowledge))
    if not campaign.snapshot_pending and not Send.objects.filter(campaign_id=campaign_id, attempts__gt=0).exists():
        # Paused before its content reached anyone (a template that failed to
        # render, say): what it sends is frozen again as it is now, so the fix
        # applies; once anyone got it, everyone gets the same.
        campaign.freeze_content()
    if campaign.snapshot_pending:
        # The cursor moves only while starting, so it cannot change between this read and the UPDATE.
        if not Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.PAUSED).update(
                status=Campaign.Status.STARTING, status_reason="", updated_at=timezone.now()):
            _refuse(_get(campaign_id), "resume", [Campaign.Status.PAUSED])
        ledger.clear_stop([campaign_id])
        hand_off(campaign_id)
        return _recorded("campaign.resume", campaign_id)
    updated = Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.PAUSED).update(
        status=Campaign.Status.SENDING, status_reason="", updated_at=timezone.now()
    )
    if not updated:
        _refuse(_get(campaign_id), "resume", [Campaign.Status.PAUSED])
    ledger.clear_stop([campaign_id])
    dispatch.enqueue_campaign(campaign_id)
    dispatch.enqueue_sends(ledger.due_waves(campaign_ids=[campaign_id]))
    ledger.settle_campaigns([campaign_id])
    return _recorded("campaign.resume", campaign_id)


def cancel_campaign(campaign_id) -> Campaign:
    """Unsent rows become cancelled; rows on the wire finish and keep their outcome."""
    allowed = [Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.MISSED,
               Campaign.Status.STARTING, Campaign.Status.SENDING, Campaign.Status.PAUSED]
    now = timezone.now()
    updated = Campaign.objects.filter(pk=campaign_id, status__in=allowed).update(
        status=Campaign.Status.CANCELLED, finished_at=now, updated_at=now
    )
    if not updated:
        _refuse(_get(campaign_id), "be cancelled", allowed)
    ledger.flag_stop([campaign_id])
    ledger.settle_campaigns([campaign_id])
    return _recorded("campaign.cancel", campaign_id)


def counts(campaign_id) -> dict:
    """Rows by status, and their total: at every moment total is the sum of the others."""
    rows = Send.objects.filter(campaign_id=campaign_id).values("status").annotate(n=Count("id"))
    found = {row["status"]: row["n"] for row in rows}
    out = {key: found.get(key, 0) for key in COUNT_KEYS}
    out["total"] = sum(out.values())
    return out


def snapshot_share(campaign) -> float:
    """How much of the audience snapshot is done, 0 to 1 (1 once the campaign sends; 0 before it starts)."""
    if campaign.snapshot_upto is None:
        return 0.0 if campaign.status in STARTABLE else 1.0
    # Contact ids are near-contiguous; ids deleted since are a gap the bar jumps over.
    return 1.0 if campaign.snapshot_upto <= 0 else min(1.0, (campaign.snapshot_cursor or 0) / campaign.snapshot_upto)


def progress(campaign_id) -> dict:
    campaign = _get(campaign_id)
    waves = placement.wave_progress(campaign) if campaign.waves else []
    return {
        "waves": {"done": sum(w["done"] for w in waves), "pending": sum(not w["done"] for w in waves),
                  "list": [{"at": w["at"], "recipients": w["recipients"], "held": w["held"], "done": w["done"]}
                           for w in waves]},
        "winner": campaign.winner,
        "id": campaign.pk,
        "status": campaign.status,
        "status_reason": campaign.status_reason,
        "started_at": campaign.started_at,
        "finished_at": campaign.finished_at,
        # While starting: the recipients snapshotted so far, and the share of contacts looked at.
        "recipients": campaign.total,
        "snapshot": round(snapshot_share(campaign), 4),
        "counts": counts(campaign_id),
    }
