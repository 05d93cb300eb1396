"""The engine's build of an automation step's Send, and where its clicks lead.

The sweep only writes ledger rows (so it advances thousands of contacts a
second); the message is rendered here, when a worker sends it, from the
contact as they are then and the trigger's payload. Tracking, the VERP sender
and DKIM are the submission app's, applied to the rendered bytes as for any
stored message.
"""

from jinja2 import TemplateError

from automations.compose import compiled_for, render_message
from automations.models import Message
from campaigns import rendering
from campaigns.models import Contact, Suppression, email_key
from delivery import tokens
from delivery.message import BuiltMessage
from submission.build import add_tracking, dkim_sign, tracked_links


class NotMailable(Exception):
    """The contact unsubscribed, was blocklisted, deleted or suppressed after the step was queued."""


def _message_of(send):
    return Message.objects.select_related("template", "template__layout", "contact").filter(send_id=send.pk).first()


def build_for_send(send) -> BuiltMessage:
    """The engine's build of an automation step's Send: rendered now, from the contact as they are now."""
    message = _message_of(send)
    if message is None:
        raise LookupError(f"send {send.pk} has no automation message")
    contact = message.contact
    if contact is None or contact.status != Contact.Status.ACTIVE:
        raise NotMailable("the contact is no longer mailable")
    if Suppression.objects.filter(email_key=email_key(send.email)).exists():
        raise NotMailable("the address is suppressed")
    template = message.template
    raw, message_id = render_message(template, send.email, contact, message.payload,
                                     unsubscribe=(tokens.unsubscribe_url(send.pk), tokens.unsubscribe_mailto(send.pk)))
    if template.track:
        raw = add_tracking(raw, send.pk)
    data = dkim_sign(raw, template.from_email.rpartition("@")[2].lower())
    return BuiltMessage(tokens.verp_address(send.pk), send.email, data, message_id.strip("<>"))


def link_for(send, index: int) -> str | None:
    """Where click ``index`` of an automation step's message leads: its links, rendered again for the click."""
    message = _message_of(send)
    if message is None or not message.template.track:
        return None
    _, _, html, _ = compiled_for(message.template)
    if html is None:
        return None
    ctx = {"contact": rendering.ContactData.of(message.contact), "data": message.payload,
           "unsubscribe_url": tokens.unsubscribe_url(send.pk)}
    try:
        links = tracked_links(html.render(ctx))
    except TemplateError:
        return None
    return links[index] if 0 <= index < len(links) else None
