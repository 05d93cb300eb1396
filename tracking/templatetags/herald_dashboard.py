from django import template

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
