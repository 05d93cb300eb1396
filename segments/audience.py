"""A campaign's audience as one condition on contacts: lists and segments, minus exclusions; or a follow-up's.

Registered with delivery.audiences when Django starts, so that the snapshot and
the confirmation's count (in delivery, below this app) reach it.
"""

from django.db.models import Exists, OuterRef, Q

from campaigns.audience import live, subscribed_to
from campaigns.models import Subscription
from segments import followups
from segments.compiler import NOTHING, Compiler, _any


def targeted(campaign, now=None) -> Q:
    """Everyone a campaign is aimed at, before the contact's status and suppressions (the snapshot adds those)."""
    compiler = Compiler(now)
    if campaign.follow_up_of_id is not None:
        wanted = followups.audience(campaign, compiler.now)
    else:
        lists = list(campaign.lists.values_list("pk", flat=True))
        parts = [Q(subscribed_to(lists))] if lists else []
        segments = list(campaign.segments.all())
        if segments:
            # A segment reaches only people who receive some list's mail: someone who unsubscribed from
            # every list they were on stays out, whatever else they match.
            anywhere = Q(Exists(Subscription.objects.filter(live(), contact_id=OuterRef("pk"))))
            parts.append(anywhere & _any([_segment(compiler, s) for s in segments]))
        wanted = _any(parts) if parts else NOTHING
    excluded_lists = list(campaign.exclude_lists.values_list("pk", flat=True))
    if excluded_lists:
        wanted &= ~Q(subscribed_to(excluded_lists))
    for segment in campaign.exclude_segments.all():
        wanted &= ~_segment(compiler, segment)
    return wanted


def _segment(compiler, segment):
    compiler.inside.append(segment.pk)
    try:
        return compiler.compile(segment.rules or {"match": "all", "rules": []})
    finally:
        compiler.inside.pop()


def notes(campaign) -> list[str]:
    """For the send confirmation: how many recipients machine activity leaves out of (or lets into) a follow-up."""
    if campaign.follow_up_of_id is None:
        return []
    return [followups.left_out_by_machines(campaign)[1]]
