"""Statistics per step: contacts who reached it, messages sent, opened and clicked, contacts who left at it."""

from django.db.models import Count, Q

from automations.models import Automation, Message
from delivery.models import Send
from tracking.models import Event


def step_statistics(automation: Automation) -> list[dict]:
    steps = list(automation.current_steps())
    messages = Message.objects.filter(automation=automation, step__in=steps)
    sent = dict(messages.filter(send__status=Send.Status.SENT).values_list("step_id").annotate(n=Count("id")))
    human = Event.objects.filter(machine=False)
    opened = dict(human.filter(type__in=[Event.Type.OPEN, Event.Type.CLICK], send__automation_message__step__in=steps)
                  .values_list("send__automation_message__step_id").annotate(n=Count("send_id", distinct=True)))
    clicked = dict(human.filter(type=Event.Type.CLICK, send__automation_message__step__in=steps)
                   .values_list("send__automation_message__step_id").annotate(n=Count("send_id", distinct=True)))
    return [{"step_id": s.pk, "position": s.position, "kind": s.kind, "entered": s.entered, "exited": s.exited,
             "sent": sent.get(s.pk, 0), "opened": opened.get(s.pk, 0), "clicked": clicked.get(s.pk, 0)}
            for s in steps]


def enrolment_counts(automation: Automation) -> dict:
    return automation.enrolments.aggregate(
        active=Count("id", filter=Q(status="active")), done=Count("id", filter=Q(status="done")),
        exited=Count("id", filter=Q(status="exited")))
