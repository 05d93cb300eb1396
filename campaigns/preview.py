"""Previews of content being edited: a template or a draft campaign, unsaved, as a contact would receive it.

The message is the real one (built by the delivery layer, reached by dotted
path: campaigns never imports delivery), with click and open tracking off so
that links show where they lead and nothing is registered for a campaign that
does not exist yet. Markdown and MJML are compiled here as they are when a
campaign starts (Campaign.freeze_content).
"""

from django.utils.module_loading import import_string

from campaigns import gallery, rendering
from campaigns.models import Campaign, Contact, Template

PREVIEW_FROM = "preview@example.com"


def compiled_copy(campaign):
    """An unsaved copy of ``campaign`` whose layout and body are compiled to HTML, tracking off."""
    layout = campaign.template  # a saved one, or an unsaved one being edited
    copy = Campaign(subject=campaign.subject, from_name=campaign.from_name, from_email=campaign.from_email,
                    reply_to=campaign.reply_to, html_body=campaign.html_body or "", text_body=campaign.text_body or "",
                    track_opens=False, track_clicks=False)
    if layout is not None:
        copy.html_body = rendering.html_source_of(layout, campaign.html_body or "")
        copy.template = Template(pk=0, name=layout.name or "layout", html="{{ content }}", text=layout.text or "")
    return copy


def contact_for(choice):
    """(contact, address) for what the operator typed: a contact's id or address, or any address."""
    choice = (choice or "").strip()
    if not choice:
        return Contact.objects.order_by("pk").first(), ""
    if choice.isdigit():
        return Contact.objects.filter(pk=int(choice)).first(), ""
    return Contact.objects.filter(email_key=choice.lower()).first(), choice


def sample_contact(campaign):
    """A contact of the campaign's lists to preview and check it for, or None."""
    if campaign.pk is None:
        return None
    return Contact.objects.filter(subscriptions__mailing_list__in=campaign.lists.all()).order_by("pk").first()


def render(campaign, contact=None, address=""):
    """The preview dict of delivery.testsend.preview for an unsaved campaign. Raises ContentError."""
    return import_string("delivery.testsend.preview")(compiled_copy(campaign), contact, address)


def template_campaign(template, subject=""):
    """A campaign that shows ``template`` with the sample body of its format."""
    return Campaign(subject=subject or f"Preview of {template.name or 'a template'}", from_email=PREVIEW_FROM,
                    html_body=gallery.sample_body(template.format), template=template)
