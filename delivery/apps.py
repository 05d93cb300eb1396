from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Connects the relay-change receiver in every process that may save a relay.
        from campaigns import audit
        from delivery import checks, routing  # noqa: F401
        from delivery.models import DomainThrottle, Relay, SendingDomain

        audit.watch(Relay)
        audit.watch(DomainThrottle, "throttle")
        audit.watch(SendingDomain)

        # Registers the Celery tasks in every process: dispatch publishes them by name.
        from delivery import tasks  # noqa: F401

        # Registers the deployment checks of keys and proxies (check --deploy).
        from herald import deploy_checks  # noqa: F401
