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
        from submission.models import OutboundMessage, SmtpCredential

        audit.watch(SmtpCredential, "smtp_credential")
        # The engine and the click redirect sit below this app: they reach its messages through delivery.submitted.
        def senders(ids):
            return {pk: (domain, tag) for pk, domain, tag in
                    OutboundMessage.objects.filter(id__in=ids).values_list("id", "from_domain", "tag")}

        submitted.register(build=build_for_send, link_for=link_for, senders=senders)
