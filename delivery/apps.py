from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Connects the relay-change receiver in every process that may save a relay.
        from delivery import routing  # noqa: F401

        # Registers the deployment checks of keys and proxies (check --deploy).
        from herald import deploy_checks  # noqa: F401
