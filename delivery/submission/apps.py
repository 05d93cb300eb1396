from django.apps import AppConfig


class SubmissionConfig(AppConfig):
    name = "delivery.submission"
    label = "submission"
    verbose_name = "SMTP submission"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from campaigns import audit
        from delivery.submission.models import SmtpCredential

        audit.watch(SmtpCredential, "smtp_credential")
