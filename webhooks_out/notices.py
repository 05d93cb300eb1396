"""The notice Herald mails when it switches an endpoint off, so nobody learns of it from a missing integration.

It goes to every active staff member with an address who may change
endpoints, through the engine like any other message of Herald's own
(``audience.mail``), once the switch-off has committed.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse

from audience import mail
from webhooks_out.models import OutboxMessage

TAG = "herald-notice"


def recipients() -> list[str]:
    users = get_user_model().objects.filter(is_active=True, is_staff=True).exclude(email="").order_by("pk")
    return sorted({user.email for user in users if user.has_perm("webhooks_out.change_endpoint")})


def _events(n: int) -> str:
    return f"{n:,} event{'' if n == 1 else 's'}"


def _text(endpoint, reason: str, undelivered: dict[str, int]) -> str:
    page = settings.HERALD_BASE_URL + reverse("admin:webhooks_out_endpoint_change", args=[endpoint.pk])
    waiting, given_up = undelivered.get(OutboxMessage.Status.PENDING, 0), undelivered.get(OutboxMessage.Status.FAILED, 0)
    return (
        f"Herald switched off the webhook endpoint {endpoint.url}"
        f"{f' ({endpoint.description})' if endpoint.description else ''}.\n\n"
        f"{reason}\n\n"
        f"Nothing is posted to it until it is enabled again. {_events(waiting)} wait for it and are delivered then; "
        f"{_events(given_up)} went past the retry window and are kept for redelivery from the endpoint's page.\n\n"
        f"The endpoint, its delivery log and its Enable switch:\n{page}\n"
    )


def switched_off(endpoint, reason: str, undelivered: dict[str, int]) -> None:
    """Mail the notice to each of ``recipients()`` once the current transaction commits."""
    to = recipients()
    if not to:
        return
    subject = f"Webhook endpoint switched off: {endpoint.url}"[:200]
    text = _text(endpoint, reason, undelivered)

    def send():
        for address in to:
            mail.send(settings.DEFAULT_FROM_EMAIL, "Herald", address, subject, text, TAG)

    transaction.on_commit(send)
