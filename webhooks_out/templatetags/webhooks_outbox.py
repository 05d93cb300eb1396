"""``{% outbox_growth as outbox %}``: the outbox's growth for the admin dashboard (see webhooks_out.growth)."""

from django import template

from webhooks_out.growth import growth

register = template.Library()


@register.simple_tag(takes_context=True)
def outbox_growth(context):
    request = context.get("request")
    if request is None or not request.user.has_perm("webhooks_out.view_endpoint"):
        return {"endpoints": []}
    return growth()
