from django.apps import AppConfig


class SegmentsConfig(AppConfig):
    name = "segments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from campaigns import audit
        from campaigns.models import Segment
        from delivery import audiences
        from segments.audience import notes, targeted

        audit.watch(Segment)
        # The snapshot and the confirmation's count (in delivery) reach segments and follow-ups through this hook.
        audiences.register(targeted, notes=notes)
