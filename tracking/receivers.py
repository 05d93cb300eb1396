"""Events for what the send engine learned at send time (delivery.signals.send_outcome)."""

import re

from django.dispatch import receiver

from delivery.signals import send_outcome
from tracking import bounces
from tracking.events import record
from tracking.feedback import apply_policy
from tracking.models import Event


@receiver(send_outcome, dispatch_uid="tracking.send_outcome")
def record_send_outcome(sender, send, outcome, code=None, reply="", **kwargs):
    """A 5xx at send time is a bounce Event, or a rejected one when it refuses the sender (a
    policy block); giving up on a send is a failed Event; a recipient skipped because it is
    suppressed is a rejected Event.

    The engine has already suppressed a hard bounce through campaigns; applying
    the policy again is idempotent and covers a 5.2.2 (mailbox full) answered at
    RCPT, which counts as soft.
    """
    reply = reply or ""
    if outcome == "bounced":
        kind = bounces.classify("failed", "", f"{code or ''} {reply}")
        type = {bounces.SOFT: Event.Type.SOFT_BOUNCE, bounces.POLICY: Event.Type.REJECTED}.get(kind, Event.Type.BOUNCE)
        status = bounces.best_status("", reply) or (str(code) if code else "")
        event, created = record(type, send, key=f"{type}:{send.pk}:smtp", status=status[:16], diagnostic=reply[:2000],
                                source="smtp", reason=f"reply {code or ''} {status} at send time: {kind}"[:255])
        if created:
            apply_policy(event)
    elif outcome == "skipped":
        # A suppressed recipient of a submitted message: never sent, and the
        # sender should see why (the reply names the suppression reason).
        record(Event.Type.REJECTED, send, key=f"skipped:{send.pk}", diagnostic=reply[:2000] or "Not sent: suppressed",
               source="suppression")
    elif outcome == "failed" and _policy_block(code, reply):
        # Refused for the sender's reputation, authentication or content: a
        # policy block, which says nothing about the address (not suppressed)
        # and is counted per provider by the circuit breaker.
        status = bounces.best_status("", reply) or str(code)
        event, created = record(Event.Type.REJECTED, send, key=f"rejected:{send.pk}:smtp", status=status[:16],
                                diagnostic=reply[:2000], source="smtp",
                                reason=f"reply {code} {status} at send time: policy"[:255])
        if created:
            apply_policy(event)
    elif outcome == "failed":
        record(Event.Type.FAILED, send, key=f"failed:{send.pk}", status=str(code or "")[:16], diagnostic=reply[:2000],
               source="smtp")


def _policy_block(code, reply):
    """A refusal of the sender (5.7.x: reputation, blocklists, authentication), not of what the message needs
    (5.6.7: no SMTPUTF8, 5.3.4: too big), which stays a failure of its own."""
    if not code or not 500 <= code < 600:
        return False
    enhanced = _ENHANCED.search(reply or "")
    if enhanced and enhanced.group(1) != "7":
        return False
    return bounces.classify("failed", "", f"{code} {reply}") == bounces.POLICY


_ENHANCED = re.compile(r"\b5\.(\d{1,3})\.\d{1,3}\b")
