from django import template
from django.utils.html import format_html

from tracking.dashboard import dashboard
from tracking.models import BreakerTrip

register = template.Library()


@register.simple_tag
def herald_dashboard():
    """``{% herald_dashboard as dash %}``: the figures of the admin index page."""
    return dashboard()


@register.simple_tag
def breaker_trip(campaign):
    """``{% breaker_trip campaign as trip %}``: the circuit breaker's last trip awaiting acknowledgement, or None."""
    return BreakerTrip.objects.filter(campaign=campaign, acknowledged_at__isnull=True).first()


@register.simple_tag
def rate(figure):
    """``{% rate figure %}``: a rate as a percentage with its count and denominator, e.g. "12.50 % 5 / 40"."""
    return format_html('<span class="herald-rate" data-rate="{}" data-count="{}" data-base="{}" title="{} of {} {}">'
                       '{} %<small>{} / {}</small></span>', figure["rate"], figure["count"], figure["base"],
                       figure["count"], figure["base"], figure["base_label"], f"{figure['rate'] * 100:.2f}",
                       figure["count"], figure["base"])
