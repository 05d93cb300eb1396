"""Unsubscribing the recipient of a Send, from its campaign's lists or from everything."""

from django.db import transaction

from campaigns.models import Contact, Subscription, Suppression
from campaigns.suppression import suppress
from tracking.events import record
from tracking.models import Event

LISTS = "lists"
ALL = "all"


def unsubscribe(send, scope=LISTS, source="page", user_agent="", raw=""):
    """Unsubscribe a send's recipient; returns (event, created). Repeats change nothing.

    ``lists`` ends the subscriptions to the campaign's lists, the way listmonk's
    one-click link does; the contact stays reachable through other lists.
    ``all`` marks the contact unsubscribed and suppresses the address, so no
    later campaign (nor a send made through the API) reaches it. A send with no
    contact or no lists (a single message) can only be unsubscribed from all.
    """
    with transaction.atomic():
        event, created = record(
            Event.Type.UNSUBSCRIBE, send, key=f"unsubscribe:{send.pk}:{scope}", source=source,
            user_agent=user_agent[:1000], raw=raw[:10000], diagnostic=f"scope: {scope}",
        )
        list_ids = send.campaign.unsubscribe_list_ids() if send.campaign_id else []
        if scope == ALL or not list_ids or send.contact_id is None:
            if send.contact_id is not None:
                Contact.objects.filter(pk=send.contact_id).exclude(status=Contact.Status.BLOCKLISTED).update(
                    status=Contact.Status.UNSUBSCRIBED
                )
                Subscription.objects.filter(contact_id=send.contact_id).update(status=Subscription.Status.UNSUBSCRIBED)
            suppress(send.email, Suppression.Reason.UNSUBSCRIBE, f"unsubscribed via {source}", event.pk)
        else:
            Subscription.objects.filter(contact_id=send.contact_id, mailing_list_id__in=list_ids).update(
                status=Subscription.Status.UNSUBSCRIBED
            )
    return event, created
