"""Who a list reaches, as a condition on contacts: shared by the audience snapshot and by segments."""

from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now

from campaigns.models import Contact, MailingList, Subscription, Suppression

# A subscription that receives mail: confirmed, or not unsubscribed on a single opt-in list.
LIVE = Q(status=Subscription.Status.CONFIRMED) | (
    Q(mailing_list__optin=MailingList.OptIn.SINGLE) & ~Q(status=Subscription.Status.UNSUBSCRIBED))


def live(list_ids=None) -> Q:
    """LIVE with each list's opt-in read now rather than joined: the same subscriptions, of ``list_ids`` (or any list).

    Without the join to the lists, a million subscriptions are read from their own
    indexes alone, which made a segment's count on a list several times faster.
    """
    lists = MailingList.objects.all() if list_ids is None else MailingList.objects.filter(pk__in=list(list_ids))
    optins = dict(lists.values_list("pk", "optin"))
    single = sorted(pk for pk, optin in optins.items() if optin == MailingList.OptIn.SINGLE)
    double = sorted(pk for pk, optin in optins.items() if optin != MailingList.OptIn.SINGLE)
    unsubscribed = Q(status=Subscription.Status.UNSUBSCRIBED)
    if list_ids is None:
        return Q(status=Subscription.Status.CONFIRMED) | (Q(mailing_list_id__in=single) & ~unsubscribed)
    return ((Q(mailing_list_id__in=double) & Q(status=Subscription.Status.CONFIRMED))
            | (Q(mailing_list_id__in=single) & ~unsubscribed))


def subscribed_to(list_ids) -> Exists:
    """Contacts (the outer query's rows) with a live subscription to one of ``list_ids``."""
    return Exists(Subscription.objects.filter(live(list_ids), contact_id=OuterRef("pk")))


def suppressed() -> Exists:
    """Contacts whose address is suppressed."""
    return Exists(Suppression.objects.filter(email_key=OuterRef("email_key")))


def mailable() -> Q:
    """Contacts a campaign may mail at all: active, not suppressed, and not pausing their mail (preference centre)."""
    return (Q(status=Contact.Status.ACTIVE) & ~Q(suppressed())
            & (Q(paused_until__isnull=True) | Q(paused_until__lte=Now())))
