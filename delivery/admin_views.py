"""Staff-only pages for a campaign's lifecycle: the send confirmation, pause/resume/cancel, progress."""

from datetime import datetime

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_POST

from campaigns import presend
from campaigns.models import Campaign
from delivery import audiences, lifecycle, placement, planner
from delivery.lifecycle import LifecycleError

SEND_PERMISSION = "campaigns.send_campaign"


def _campaign_url(campaign_id):
    """The campaign's admin page, or its progress when the campaign admin is not installed."""
    try:
        return reverse("admin:campaigns_campaign_change", args=[campaign_id])
    except NoReverseMatch:
        return reverse("delivery-admin:campaign-progress", args=[campaign_id])


def _back(campaign_id):
    return redirect(_campaign_url(campaign_id))


@staff_member_required
@permission_required(SEND_PERMISSION, raise_exception=True)
def campaign_send(request, campaign_id):
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    error = ""
    # The pre-send check, links included; a missing unsubscribe link blocks the send.
    findings = presend.check(campaign, presend.preview.sample_contact(campaign)) if campaign.status in \
        lifecycle.STARTABLE else []
    blocked = " ".join(f.message for f in presend.blocking(findings))
    if request.method == "POST":
        try:
            if blocked:
                raise LifecycleError(blocked)
            started = lifecycle.start_in_background(campaign.pk)
        except LifecycleError as exc:
            error = str(exc)
        else:
            messages.success(request, f"“{started.name}” is starting: its recipients are being gathered, "
                                      "then sending begins. Its content is now fixed.")
            return _back(campaign.pk)
    context = {
        "campaign": campaign,
        "back_url": _campaign_url(campaign.pk),
        "recipients": planner.count_audience(campaign),
        "lists": [str(lst) for lst in campaign.lists.all()],
        "segments": [str(s) for s in campaign.segments.all()],
        "exclude_lists": [str(lst) for lst in campaign.exclude_lists.all()],
        "exclude_segments": [str(s) for s in campaign.exclude_segments.all()],
        "follow_up_of": campaign.follow_up_of,
        "notes": audiences.notes(campaign),
        "waves": [{**w, "at": datetime.fromisoformat(w["at"]),
                   "zones": ", ".join(sorted(w["zones"])[:8]) + (" …" if len(w["zones"]) > 8 else "")}
                  for w in placement.preview_waves(campaign)],
        "variants": [v.letter for v in campaign.variants.all()] if campaign.variants.count() >= 2 else [],
        "startable": campaign.status in lifecycle.STARTABLE and not blocked,
        "presend": findings,
        "error": error or ("" if campaign.status in lifecycle.STARTABLE else f"This campaign is {campaign.status}."),
        "title": f"Send {campaign.name}",
        "opts": Campaign._meta,
    }
    return TemplateResponse(request, "delivery/admin/campaign_send.html", context, status=409 if error else 200)


def _action(action, done, *fields):
    """A POST that runs ``action``; ``fields`` name checkboxes of the form passed on as keywords."""
    @staff_member_required
    @permission_required(SEND_PERMISSION, raise_exception=True)
    @require_POST
    def view(request, campaign_id):
        try:
            campaign = action(campaign_id, **{name: bool(request.POST.get(name)) for name in fields})
        except LifecycleError as exc:
            if "does not exist" in str(exc):
                raise Http404(str(exc)) from None
            messages.error(request, str(exc))
        else:
            messages.success(request, f"“{campaign.name}” {done}.")
        return _back(campaign_id)

    return view


campaign_pause = _action(lifecycle.pause_campaign, "paused")
# A campaign the circuit breaker paused needs the "acknowledge" box ticked.
campaign_resume = _action(lifecycle.resume_campaign, "resumed", "acknowledge")
campaign_cancel = _action(lifecycle.cancel_campaign, "cancelled")


@staff_member_required
@require_GET
def campaign_progress(request, campaign_id):
    try:
        data = lifecycle.progress(campaign_id)
    except LifecycleError as exc:
        raise Http404(str(exc)) from None
    for key in ("started_at", "finished_at"):
        data[key] = data[key].isoformat() if data[key] else None
    return JsonResponse(data)
