from django.apps import AppConfig


class WebhooksOutConfig(AppConfig):
    """Outgoing webhooks: Herald telling other systems what happened (inbound ESP webhooks live in tracking)."""

    name = "webhooks_out"
    label = "webhooks_out"
    verbose_name = "Outgoing webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from audience.gdpr import erasing

        erasing.connect(forget_person, dispatch_uid="webhooks-out-erase")


def forget_person(contact_id, address, send_ids, **kwargs):
    """An erasure: outbox messages about the person (sent or still waiting) lose their payload."""
    from django.db.models import TextField
    from django.db.models.functions import Cast

    from webhooks_out.models import OutboxMessage

    (OutboxMessage.objects.annotate(text=Cast("payload", TextField())).filter(text__icontains=address)
     .update(payload={"erased": True}))
