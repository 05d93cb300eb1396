"""Editing an automation that contacts are part-way through.

Contacts mid-way go on with the steps they started on: before the first edit
of a version that has active enrolments, its steps are copied aside under the
old version number (their statistics with them) and the rows being edited
become the next version. ``migrate`` moves the contacts onto the current
version when the operator asks, at the same positions.
"""

from collections import Counter

from django.db import transaction
from django.utils import timezone

from automations.models import Automation, Enrolment, Step
from automations.sweep import count_steps, plan_of


def before_edit(automation: Automation) -> bool:
    """Keep the current version for the contacts on it, if there are any; True when a new version began."""
    with transaction.atomic():
        automation = Automation.objects.select_for_update().get(pk=automation.pk)
        old = automation.version
        if not Enrolment.objects.filter(automation=automation, version=old, status=Enrolment.Status.ACTIVE).exists():
            return False
        current = list(Step.objects.filter(automation=automation, version=old))
        kept = []
        for step in current:
            copy = Step(**{f.attname: getattr(step, f.attname) for f in Step._meta.concrete_fields if f.attname != "id"})
            kept.append(copy)
        Step.objects.bulk_create(kept)
        Step.objects.filter(pk__in=[s.pk for s in current]).update(version=old + 1, entered=0, exited=0)
        Automation.objects.filter(pk=automation.pk).update(version=old + 1, updated_at=timezone.now())
    return True


def migrate(automation: Automation) -> int:
    """Move every active enrolment onto the current version; how many moved.

    Each one enters the current version's step it is now at, so that step's
    figures still add up (entered = waiting + exited + went on).
    """
    with transaction.atomic():
        moving = list(Enrolment.objects.select_for_update().filter(
            automation=automation, status=Enrolment.Status.ACTIVE).exclude(version=automation.version)
            .order_by("id").values_list("id", "position"))
        Enrolment.objects.filter(id__in=[pk for pk, _ in moving]).update(version=automation.version,
                                                                          updated_at=timezone.now())
        plan = plan_of(automation.pk, automation.version)
        entered = Counter(step.pk for step in (plan.holding(position) for _, position in moving) if step is not None)
        count_steps(entered, {})
    return len(moving)
