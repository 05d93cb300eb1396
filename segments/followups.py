"""Follow-ups: a new draft for some of a sent campaign's recipients, chosen by what they did with it.

Only people the original reached (a send that was accepted) can be in it, and
only those still mailable: anyone who unsubscribed, bounced or complained since
it started stays out. Opens and clicks by machines (privacy proxies, link
scanners) count only when the operator says so.
"""

import datetime

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from campaigns import audit
from campaigns.audience import mailable
from campaigns.models import Campaign, CampaignVariant, Contact, FollowUp, Template, variant_letter
from delivery.models import Send
from tracking.models import Event

SENT_STATES = (Campaign.Status.SENDING, Campaign.Status.PAUSED, Campaign.Status.FINISHED, Campaign.Status.CANCELLED)
GONE = (Event.Type.UNSUBSCRIBE, Event.Type.BOUNCE, Event.Type.COMPLAINT)
OPENS = (Event.Type.OPEN, Event.Type.CLICK)


class FollowUpError(Exception):
    """The follow-up cannot be made; the message says why."""


def _engaged(original_id, audience, machine):
    """Recipients who did what the audience turns on: opened (or clicked), or clicked."""
    types = [Event.Type.CLICK] if audience != FollowUp.NOT_OPENED else list(OPENS)
    rows = Event.objects.filter(contact_id=OuterRef("pk"), campaign_id=original_id, type__in=types)
    return rows if machine else rows.filter(machine=False)


def _received(campaign):
    """The original's accepted sends of a contact (``OuterRef("pk")``), of the chosen variant when there is one."""
    sends = Send.objects.filter(campaign_id=campaign.follow_up_of_id, contact_id=OuterRef("pk"), status=Send.Status.SENT)
    if campaign.follow_up_variant is not None:
        sends = sends.filter(variant=campaign.follow_up_variant)
    return sends


def audience(campaign, now=None) -> Q:
    original = campaign.follow_up_of
    received = _received(campaign)
    since = original.started_at or original.created_at
    left = Event.objects.filter(contact_id=OuterRef("pk"), type__in=GONE, created_at__gte=since)
    engaged = Exists(_engaged(original.pk, campaign.follow_up_audience, campaign.follow_up_machine_opens))
    wanted = Q(engaged) if campaign.follow_up_audience == FollowUp.CLICKED else ~Q(engaged)
    return Q(Exists(received)) & ~Q(Exists(left)) & wanted


def machine_only(campaign) -> int:
    """Recipients whom only a machine opened (or, for clicks, clicked): what counting machines changes.

    With machine opens not counted they are in a "did not open" follow-up, and out of a
    "clicked" one; counted, the other way round. Only mailable recipients count.
    """
    original = campaign.follow_up_of
    human = _engaged(original.pk, campaign.follow_up_audience, machine=False)
    machines = _engaged(original.pk, campaign.follow_up_audience, machine=True).filter(machine=True)
    received = _received(campaign)
    return Contact.objects.filter(mailable(), Exists(received), Exists(machines), ~Exists(human)).count()


def left_out_by_machines(campaign) -> tuple[int, str]:
    """(count, sentence) for the confirmation: who machine activity leaves out or lets in."""
    n = machine_only(campaign)
    verb = "clicked" if campaign.follow_up_audience != FollowUp.NOT_OPENED else "opened"
    counted = campaign.follow_up_machine_opens
    left_out = (campaign.follow_up_audience == FollowUp.CLICKED) != counted
    if left_out:
        return n, f"{n} recipient(s) left out because only a machine {verb} (privacy proxy or link scanner)"
    return n, f"{n} recipient(s) included although a machine {verb}, since machine activity does not count"


def create(original, audience, subject="", delay=datetime.timedelta(0), machine_opens=False,
           variant=None) -> Campaign:
    """A draft follow-up of ``original``: its content copied, aimed at the chosen recipients, not before ``delay``.

    ``variant``: only those who got that variant of an A/B-tested original, with its content.
    """
    if original.status not in SENT_STATES or original.started_at is None:
        raise FollowUpError(f"campaign {original.pk} is {original.status}: only a campaign that was sent can be followed up")
    if audience not in FollowUp.values:
        raise FollowUpError(f"audience must be one of {', '.join(FollowUp.values)}")
    if variant is not None and variant not in original.variant_numbers():
        letters = ", ".join(f"{n} ({variant_letter(n)})" for n in original.variant_numbers()) or "none: it was no A/B test"
        raise FollowUpError(f"campaign {original.pk} has no variant {variant}; its variants: {letters}")
    sent = _as_written(original, variant)
    with transaction.atomic():
        follow = Campaign.objects.create(
            name=f"Follow-up of {original.name}"[:200], subject=(subject or sent.subject)[:998],
            from_name=sent.from_name, from_email=sent.from_email, reply_to=sent.reply_to,
            html_body=sent.html_body, text_body=sent.text_body, template_id=original.template_id,
            track_opens=sent.track_opens, track_clicks=sent.track_clicks,
            follow_up_of=original, follow_up_audience=audience, follow_up_machine_opens=machine_opens,
            follow_up_variant=variant,
            not_before=(original.finished_at or timezone.now()) + delay if delay else None,
        )
        follow.exclude_lists.set(original.exclude_lists.all())
        follow.exclude_segments.set(original.exclude_segments.all())
        audit.record("campaign.follow_up", follow, original=original.pk, audience=audience, variant=variant)
    return follow


def _as_written(original, variant):
    """The original's content (of ``variant``) as its author wrote it, for a new draft that uses its template.

    Content started from a Markdown or MJML template was frozen compiled; a
    draft needs the source, which cannot have changed since the start.
    """
    template = original.template if original.template_id else None
    if template is None or template.format == Template.Format.HTML:
        return original.as_sent(variant)
    copy = Campaign(**{f.attname: getattr(original, f.attname) for f in Campaign._meta.concrete_fields})
    if variant is not None:
        chosen = original.variants.filter(number=variant).first()
        if chosen is not None:
            CampaignVariant.apply(copy, chosen.frozen())
    return copy
