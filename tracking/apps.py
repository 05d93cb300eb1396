from django.apps import AppConfig


class TrackingConfig(AppConfig):
    name = "tracking"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.conf import settings

        # Connect the signal receivers: send-time outcomes and ESP webhooks.
        from tracking import receivers, webhooks  # noqa: F401
        from tracking.tasks import schedule

        if settings.HERALD_BOUNCE_MAILBOX:
            from herald.celery import app

            schedule(app, settings)
