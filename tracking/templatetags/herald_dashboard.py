from django import template

from tracking.dashboard import dashboard

register = template.Library()


@register.simple_tag
def herald_dashboard():
    """``{% herald_dashboard as dash %}``: the figures of the admin index page."""
    return dashboard()
