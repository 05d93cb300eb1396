"""Statistics per step: contacts who reached it, who are at it now, messages sent, opened and clicked, and
contacts who left the automation at it.

For every step, entered = waiting + exited + those who went on to a later step.
Entered and exited are counted as the sweep runs (and as contacts leave
outside it, unsubscribed, suppressed or erased); waiting is read from the
enrolments: an active contact is at the last step before the one it runs next
(in a wait, or due to move on from it).
"""

from django.db.models import Count, Q

from automations.models import Automation, Enrolment, Message
from automations.sweep import plan_of
from tracking.models import Event


def waiting(automation: Automation) -> dict[int, int]:
    """{step id: active contacts at it}, for the current version."""
    plan = plan_of(automation.pk, automation.version)
    out = {}
    for position, n in (Enrolment.objects.filter(automation=automation, version=automation.version, status="active")
                        .values_list("position").annotate(n=Count("id")).order_by()):
        step = plan.holding(position)
        if step is not None:
            out[step.pk] = out.get(step.pk, 0) + n
    return out


def step_statistics(automation: Automation) -> list[dict]:
    steps = list(automation.current_steps())
    messages = Message.objects.filter(automation=automation, step__in=steps)
    # Sent once: a message that bounced later was still sent.
    sent = dict(messages.filter(send__sent_at__isnull=False).values_list("step_id").annotate(n=Count("id")))
    human = Event.objects.filter(machine=False)
    opened = dict(human.filter(type__in=[Event.Type.OPEN, Event.Type.CLICK], send__automation_message__step__in=steps)
                  .values_list("send__automation_message__step_id").annotate(n=Count("send_id", distinct=True)))
    clicked = dict(human.filter(type=Event.Type.CLICK, send__automation_message__step__in=steps)
                   .values_list("send__automation_message__step_id").annotate(n=Count("send_id", distinct=True)))
    at = waiting(automation)
    return [{"step_id": s.pk, "position": s.position, "kind": s.kind, "entered": s.entered, "waiting": at.get(s.pk, 0),
             "exited": s.exited, "sent": sent.get(s.pk, 0), "opened": opened.get(s.pk, 0),
             "clicked": clicked.get(s.pk, 0)}
            for s in steps]


def enrolment_counts(automation: Automation) -> dict:
    return automation.enrolments.aggregate(
        active=Count("id", filter=Q(status="active")), done=Count("id", filter=Q(status="done")),
        exited=Count("id", filter=Q(status="exited")))
