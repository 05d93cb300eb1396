"""The operator's time zone: chosen per user, used for every time the admin shows or reads.

A user who has not chosen one works in settings.TIME_ZONE. The zone is read
into the session at sign-in, so a page costs no query for it.
"""

import zoneinfo

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

SESSION_KEY = "herald_time_zone"


def zone_names():
    return sorted(zoneinfo.available_timezones())


def chosen_zone(user):
    """The zone name the user chose, or "" for the server's."""
    from campaigns.models import OperatorProfile

    return OperatorProfile.objects.filter(user=user).values_list("time_zone", flat=True).first() or ""


def user_zone(user):
    """The user's chosen zone name, or the server's."""
    return chosen_zone(user) or settings.TIME_ZONE


@receiver(user_logged_in, dispatch_uid="herald-time-zone")
def _remember_zone(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_KEY] = chosen_zone(user)


class OperatorTimeZoneMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and user.is_staff and hasattr(request, "session"):
            chosen = request.session.get(SESSION_KEY)
            if chosen is None:
                chosen = request.session[SESSION_KEY] = chosen_zone(user)
            try:
                timezone.activate(zoneinfo.ZoneInfo(chosen or settings.TIME_ZONE))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.deactivate()
        else:
            timezone.deactivate()
        try:
            return self.get_response(request)
        finally:
            # The zone is this request's: the thread's next work (another request, a task) starts from the default.
            timezone.deactivate()


class TimeZoneForm(forms.Form):
    time_zone = forms.ChoiceField(label=_("Time zone"),
                                  help_text=_("Times on Herald's pages are shown in this zone, and times you enter "
                                              "are read in it."))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["time_zone"].choices = [(name, name) for name in zone_names()]


@staff_member_required(login_url="admin:login")
def time_zone_view(request):
    from django.contrib import admin

    from campaigns.models import OperatorProfile

    form = TimeZoneForm(request.POST or None, initial={"time_zone": user_zone(request.user)})
    if request.method == "POST" and form.is_valid():
        name = form.cleaned_data["time_zone"]
        OperatorProfile.objects.update_or_create(user=request.user, defaults={"time_zone": name})
        request.session[SESSION_KEY] = name
        messages.success(request, _("Times are now shown in %(zone)s.") % {"zone": name})
        return redirect("herald-time-zone")
    context = {**admin.site.each_context(request), "title": _("My time zone"), "form": form,
               "server_zone": settings.TIME_ZONE}
    return render(request, "admin/herald/time_zone.html", context)


urlpatterns = [path("time-zone/", time_zone_view, name="herald-time-zone")]
