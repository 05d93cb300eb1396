"""Who a list reaches, as a condition on contacts: shared by the audience snapshot and by segments."""

from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now

from campaigns.models import Contact, MailingList, Subscription, Suppression

# A subscription that receives mail: confirmed, or not unsubscribed on a single opt-in list.
LIVE = Q(status=Subscription.Status.CONFIRMED) | (
    Q(mailing_list__optin=MailingList.OptIn.SINGLE) & ~Q(status=Subscription.Status.UNSUBSCRIBED))


def subscribed_to(list_ids) -> Exists:
    """Contacts (the outer query's rows) with a live subscription to one of ``list_ids``."""
    return Exists(Subscription.objects.filter(LIVE, contact_id=OuterRef("pk"), mailing_list_id__in=list(list_ids)))


def suppressed() -> Exists:
    """Contacts whose address is suppressed."""
    return Exists(Suppression.objects.filter(email_key=OuterRef("email_key")))


def mailable() -> Q:
    """Contacts a campaign may mail at all: active, not suppressed, and not pausing their mail (preference centre)."""
    return (Q(status=Contact.Status.ACTIVE) & ~Q(suppressed())
            & (Q(paused_until__isnull=True) | Q(paused_until__lte=Now())))
