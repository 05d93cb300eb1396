from django.apps import AppConfig


class SubmissionConfig(AppConfig):
    name = "delivery.submission"
    label = "submission"
    verbose_name = "SMTP submission"
    default_auto_field = "django.db.models.BigAutoField"
