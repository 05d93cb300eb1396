from django.apps import AppConfig


class TrackingConfig(AppConfig):
    name = "tracking"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Connect the signal receivers: send-time outcomes and ESP webhooks.
        from tracking import receivers, webhooks  # noqa: F401
