"""Forgetting signups nobody confirmed: an address typed into a form by someone else is not kept for ever."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from campaigns.models import Contact, Subscription
from delivery.models import Send


def purge_unconfirmed(now=None) -> int:
    """Delete form signups still unconfirmed after the set number of days, and contacts left with nothing.

    Only subscriptions that came from a form: an import's unconfirmed rows are
    the operator's to keep. A contact is deleted only when no subscription and
    no campaign send of theirs remains. Returns how many subscriptions were purged.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.HERALD_UNCONFIRMED_PURGE_DAYS)
    stale = Subscription.objects.filter(status=Subscription.Status.UNCONFIRMED, source=Subscription.Source.FORM,
                                        created_at__lt=cutoff)
    with transaction.atomic():
        contact_ids = list(stale.values_list("contact_id", flat=True).distinct())
        purged, _ = stale.delete()
        orphans = list(Contact.objects.filter(pk__in=contact_ids).exclude(
            Exists(Subscription.objects.filter(contact_id=OuterRef("pk")))).exclude(
            Exists(Send.objects.filter(contact_id=OuterRef("pk"), campaign__isnull=False))).values_list("pk", flat=True))
        # Their confirmation mails stay counted, without the address nobody confirmed.
        Send.objects.filter(contact_id__in=orphans, campaign=None).update(email="", smtp_reply="")
        Contact.objects.filter(pk__in=orphans).delete()
    return purged
