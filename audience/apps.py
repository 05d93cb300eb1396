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
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from audience.views import forget_forms

        for signal in (post_save, post_delete):
            signal.connect(forget_forms, sender=SignupForm, dispatch_uid=f"forget-forms-{signal}")
        m2m_changed.connect(forget_forms, sender=SignupForm.lists.through, dispatch_uid="forget-forms-lists")
