from django.apps import AppConfig


class AudienceConfig(AppConfig):
    """Public pages for people joining the audience: signup forms, confirmation, preference centre.

    The top layer: it sends confirmation mail through the submission app's
    ledger rows, so it sits above submission and nothing imports it.
    """

    name = "audience"
    label = "audience"
    verbose_name = "Signup and consent"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from audience.models import SignupForm
        from campaigns import audit

        audit.watch(SignupForm, "signup_form")
