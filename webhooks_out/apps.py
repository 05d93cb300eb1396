from django.apps import AppConfig


class WebhooksOutConfig(AppConfig):
    """Outgoing webhooks: Herald telling other systems what happened (inbound ESP webhooks live in tracking)."""

    name = "webhooks_out"
    label = "webhooks_out"
    verbose_name = "Outgoing webhooks"
    default_auto_field = "django.db.models.BigAutoField"
