from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from campaigns import audit
        from campaigns.models import Campaign, Import, Suppression, Template

        # What people change by hand that the audit log keeps; lifecycle actions,
        # imports, exports and tokens are recorded where they happen.
        audit.watch(Campaign)
        audit.watch(Template)
        audit.watch(Suppression)
        audit.watch(Import)  # an upload in the admin or the API: import.create
        # The operator's time zone, read into the session at sign-in.
        import herald.timezones  # noqa: F401
