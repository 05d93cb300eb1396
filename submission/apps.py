from django.apps import AppConfig


class SubmissionConfig(AppConfig):
    name = "submission"
    label = "submission"
    verbose_name = "SMTP submission"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from campaigns import audit
        from delivery import submitted
        from submission.build import build_for_send, link_for
        from submission.models import SmtpCredential

        audit.watch(SmtpCredential, "smtp_credential")
        # The engine and the click redirect sit below this app: they reach its messages through delivery.submitted.
        submitted.register(build=build_for_send, link_for=link_for)
