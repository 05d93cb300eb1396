"""Admin pages that complete a campaign's workflow: schedule (in the operator's time zone) and duplicate.

Mounted under /admin/herald/ next to delivery.admin_urls (send, pause, resume,
cancel, progress). Scheduling needs campaigns.send_campaign like every other
lifecycle action; duplicating makes a new draft and needs campaigns.add_campaign.
"""

from datetime import datetime

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from campaigns import presend
from campaigns.models import Campaign
from delivery import lifecycle
from delivery.lifecycle import LifecycleError

app_name = "operator-admin"

# What a copy keeps: the content and the audience, never the status or counts.
COPIED_FIELDS = ("subject", "from_name", "from_email", "reply_to", "html_body", "text_body", "template_id",
                 "track_opens", "track_clicks", "test_share", "winner_metric", "winner_wait", "passed_zones",
                 "quiet_start", "quiet_end")


def _change_url(campaign_id):
    return reverse("admin:campaigns_campaign_change", args=[campaign_id])


def parse_local_time(value: str) -> datetime:
    """A ``datetime-local`` value (2030-01-31T09:30) read in the operator's time zone, as an aware datetime."""
    value = (value or "").strip()
    if not value:
        raise ValueError("Choose a date and time to send at.")
    try:
        naive = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"“{value}” is not a date and time like 2030-01-31T09:30.") from None
    if timezone.is_aware(naive):
        return naive
    return timezone.make_aware(naive, timezone.get_current_timezone())


@staff_member_required
@permission_required("campaigns.send_campaign", raise_exception=True)
@require_POST
def campaign_schedule(request, campaign_id):
    get_object_or_404(Campaign, pk=campaign_id)
    try:
        at = parse_local_time(request.POST.get("scheduled_at", ""))
        if at <= timezone.now():
            raise ValueError("That time has passed; use “Send…” to send now.")
        if blocked := presend.refusal(Campaign.objects.get(pk=campaign_id)):
            raise ValueError(blocked)
        campaign = lifecycle.schedule_campaign(campaign_id, at)
    except (ValueError, LifecycleError) as exc:
        messages.error(request, str(exc))
    else:
        local = timezone.localtime(campaign.scheduled_at)
        messages.success(request, f"“{campaign.name}” will be sent at {local:%Y-%m-%d %H:%M} ({local.tzname()}).")
    return redirect(_change_url(campaign_id))


@staff_member_required
@permission_required("campaigns.add_campaign", raise_exception=True)
@require_POST
def campaign_duplicate(request, campaign_id):
    original = get_object_or_404(Campaign, pk=campaign_id)
    copy = Campaign(name=f"Copy of {original.name}"[:200], **{f: getattr(original, f) for f in COPIED_FIELDS})
    copy.save()
    copy.lists.set(original.lists.all())
    for variant in original.variants.all():
        variant.pk, variant.campaign = None, copy
        variant.save()
    messages.success(request, f"“{copy.name}” is a new draft with the content and lists of “{original.name}”.")
    return redirect(_change_url(copy.pk))


urlpatterns = [
    path("campaigns/<int:campaign_id>/schedule/", campaign_schedule, name="campaign-schedule"),
    path("campaigns/<int:campaign_id>/duplicate/", campaign_duplicate, name="campaign-duplicate"),
]
