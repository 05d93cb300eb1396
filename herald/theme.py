"""The admin's look and navigation (django-unfold): Herald's name and logo, and a sidebar by task.

The sidebar groups pages by what a marketer does (send a campaign, grow an
audience, write content, read a report) rather than by app. Each entry shows
only to operators who may view its page; the scheduler's and the sign-in
lockout's tables sit under Settings › Advanced, for superusers alone.
"""

from django.templatetags.static import static
from django.urls import reverse_lazy
from django.utils.translation import gettext_lazy as _


def _can_view(app, model):
    def allowed(request):
        return request.user.has_perm(f"{app}.view_{model}")
    return allowed


def _superuser(request):
    return request.user.is_superuser


def _page(title, icon, app, model, view="changelist", permission=None):
    return {"title": title, "icon": icon, "link": reverse_lazy(f"admin:{app}_{model}_{view}"),
            "permission": permission or _can_view(app, model)}


def _advanced(title, icon, app, model):
    return _page(title, icon, app, model, permission=_superuser)


def _logo(name):
    """A file of Herald's static/herald/, as the theme's settings take it (a function of the request)."""
    def url(request):
        return static(f"herald/{name}")
    return url


NAVIGATION = [
    {"title": _("Campaigns"), "items": [
        {"title": _("Dashboard"), "icon": "dashboard", "link": reverse_lazy("admin:index")},
        _page(_("Campaigns"), "campaign", "campaigns", "campaign"),
    ]},
    {"title": _("Audience"), "items": [
        _page(_("Contacts"), "person", "campaigns", "contact"),
        _page(_("Lists"), "lists", "campaigns", "mailinglist"),
        _page(_("Segments"), "filter_alt", "campaigns", "segment"),
        _page(_("Signup forms"), "edit_note", "audience", "signupform"),
        _page(_("Imports"), "upload_file", "campaigns", "import"),
        _page(_("Suppressions"), "block", "campaigns", "suppression"),
        _page(_("Bulk jobs"), "checklist", "campaigns", "bulkjob"),
        _page(_("Subscriptions"), "how_to_reg", "campaigns", "subscription"),
    ]},
    {"title": _("Content"), "items": [
        _page(_("Templates"), "article", "campaigns", "template"),
    ]},
    {"title": _("Reports"), "items": [
        _page(_("Campaign reports"), "monitoring", "tracking", "campaignstatistics"),
        {"title": _("Compare campaigns"), "icon": "compare_arrows", "link": reverse_lazy("reports-admin:compare"),
         "permission": _can_view("tracking", "campaignstatistics")},
        _page(_("Events"), "bolt", "tracking", "event"),
        _page(_("Sends"), "outbox", "delivery", "send"),
        _page(_("Breaker trips"), "warning", "tracking", "breakertrip"),
        _page(_("Submitted messages"), "forward_to_inbox", "submission", "outboundmessage"),
        _page(_("Audit log"), "history", "campaigns", "auditentry"),
    ]},
    {"title": _("Settings"), "items": [
        _page(_("Relays"), "dns", "delivery", "relay"),
        _page(_("Relay groups"), "hub", "delivery", "relaygroup"),
        _page(_("Routing rules"), "alt_route", "delivery", "routingrule"),
        _page(_("Sending domains"), "domain", "delivery", "sendingdomain"),
        _page(_("Throttles"), "speed", "delivery", "domainthrottle"),
        _page(_("Provider rules"), "rule", "delivery", "providerrule"),
        _page(_("Warm-ups"), "trending_up", "delivery", "warmup"),
        _page(_("SMTP credentials"), "key", "submission", "smtpcredential"),
        _page(_("API tokens"), "token", "campaigns", "apitoken"),
        _page(_("Users"), "group", "auth", "user"),
        _page(_("Groups"), "groups", "auth", "group"),
        {"title": _("My time zone"), "icon": "schedule", "link": reverse_lazy("herald-time-zone")},
    ]},
    {"title": _("Settings › Advanced"), "collapsible": True, "items": [
        _advanced(_("Periodic tasks"), "event_repeat", "django_celery_beat", "periodictask"),
        _advanced(_("Intervals"), "timer", "django_celery_beat", "intervalschedule"),
        _advanced(_("Crontabs"), "calendar_month", "django_celery_beat", "crontabschedule"),
        _advanced(_("Clocked"), "alarm", "django_celery_beat", "clockedschedule"),
        _advanced(_("Solar events"), "wb_sunny", "django_celery_beat", "solarschedule"),
        _advanced(_("Authenticator apps"), "phonelink_lock", "otp_totp", "totpdevice"),
        _advanced(_("Sign-in attempts"), "login", "axes", "accessattempt"),
        _advanced(_("Sign-in failures"), "gpp_bad", "axes", "accessfailurelog"),
        _advanced(_("Sign-in log"), "receipt_long", "axes", "accesslog"),
    ]},
]

UNFOLD = {
    "SITE_TITLE": "Herald",
    "SITE_HEADER": "Herald",
    "SITE_SUBHEADER": _("Email campaigns"),
    # "View site" led nowhere: Herald's public pages are only what recipients reach from their mail.
    "SITE_URL": None,
    "SHOW_VIEW_ON_SITE": False,
    "SITE_LOGO": {"light": _logo("logo-light.svg"), "dark": _logo("logo-dark.svg")},
    "SITE_ICON": {"light": _logo("icon.svg"), "dark": _logo("icon.svg")},
    "SITE_FAVICONS": [{"rel": "icon", "type": "image/svg+xml", "href": _logo("icon.svg")}],
    "SHOW_HISTORY": False,
    # Herald's own pages (dashboard, reports, campaign panel) on the theme's colours.
    "STYLES": [_logo("admin.css")],
    "DASHBOARD_CALLBACK": None,
    "COLORS": {
        # Herald's blue, from the logo.
        "primary": {
            "50": "oklch(97.1% .013 236.62)", "100": "oklch(95.1% .026 236.824)", "200": "oklch(90.1% .058 230.902)",
            "300": "oklch(82.8% .111 230.318)", "400": "oklch(74.6% .16 232.661)", "500": "oklch(68.5% .169 237.323)",
            "600": "oklch(58.8% .158 241.966)", "700": "oklch(50% .134 242.749)", "800": "oklch(44.3% .11 240.79)",
            "900": "oklch(39.1% .09 240.876)", "950": "oklch(29.3% .066 243.157)",
        },
    },
    "ACCOUNT": {"navigation": [
        {"title": _("My time zone"), "link": reverse_lazy("herald-time-zone")},
        {"title": _("Two-factor authentication"), "link": reverse_lazy("herald-two-factor")},
        {"title": _("Change password"), "link": reverse_lazy("admin:password_change")},
    ]},
    "SIDEBAR": {"show_search": True, "show_all_applications": False, "navigation": NAVIGATION},
}
