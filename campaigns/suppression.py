"""Who may never be mailed: the one place that adds suppressions."""

from django.db import transaction

from campaigns.models import Contact, Suppression, email_key


def suppress(email: str, reason: str, detail: str = "", source_event_id=None) -> Suppression:
    """Suppress an address for every later campaign. Idempotent: the first reason stays."""
    key = email_key(email)
    with transaction.atomic():
        row, _ = Suppression.objects.get_or_create(
            email_key=key,
            defaults={"email": email.strip(), "reason": reason, "detail": detail[:2000], "source_event_id": source_event_id},
        )
        if reason in (Suppression.Reason.COMPLAINT, Suppression.Reason.HARD_BOUNCE):
            Contact.objects.filter(email_key=key, status=Contact.Status.ACTIVE).update(status=Contact.Status.BLOCKLISTED)
    return row


def is_suppressed(email: str) -> bool:
    return Suppression.objects.filter(email_key=email_key(email)).exists()
