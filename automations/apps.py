from django.apps import AppConfig


class AutomationsConfig(AppConfig):
    """Welcome mails and drip sequences, and transactional messages from templates.

    Above audience, segments and tracking: it reads subscriptions, segments and
    events, and its email steps join the delivery ledger as Send rows.
    """

    name = "automations"
    label = "automations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from automations import builder
        from delivery import submitted

        # The engine and the click redirect sit below this app: they build its messages through delivery.submitted.
        submitted.register_composed(build=builder.build_for_send, link_for=builder.link_for)
        from automations import transactional
        from submission import templated

        # Mail submitted over SMTP with X-Herald-Template is rendered from these templates.
        templated.register(transactional.render_submitted)
        from audience.gdpr import erasing

        erasing.connect(forget_person, dispatch_uid="automations-erase")


def forget_person(contact_id, address, send_ids, **kwargs):
    """An erasure: enrolments, messages and custom events go with the contact (cascade), those under way
    counted as having left at their step; transactional sends keep their key and ids, not the address."""
    from automations.models import Enrolment, TransactionalSend
    from automations.sweep import count_exits

    count_exits(Enrolment.objects.filter(contact_id=contact_id, status=Enrolment.Status.ACTIVE)
                .values_list("automation_id", "version", "position"))

    TransactionalSend.objects.filter(to__iexact=address).update(to="")
