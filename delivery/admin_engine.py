"""Admin for relays (with the check button and their health), relay groups, routing rules, domain throttles,
provider rules and the send ledger."""

import re

from django import forms
from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator
from redis.exceptions import RedisError

from delivery import health, providers, rdns, routing
from delivery.models import DomainThrottle, ProviderRule, Relay, RelayGroup, RoutingRule, Send
from delivery.relaycheck import check_relay
from delivery.throttle import throttles
from herald import adminkit
from herald.readonly import ReadOnlyAdminMixin

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")


class RelayForm(forms.ModelForm):
    # Write-only: never rendered back; left blank, the stored password stays.
    password = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(render_value=False),
        help_text="Leave blank to keep the current password.",
    )

    weight = forms.IntegerField(
        required=False, min_value=0, initial=1,
        help_text="This relay's share of its groups' messages, relative to the other relays' weights; "
                  "0 keeps it for failover only. Blank keeps the current weight.")

    class Meta:
        model = Relay
        fields = ["name", "host", "port", "security", "verify_certificate", "username", "password", "helo_name",
                  "max_connections", "messages_per_connection", "idle_timeout", "rate", "rate_period", "weight",
                  "enabled"]

    def clean_host(self):
        host = self.cleaned_data["host"].strip()
        if not _HOST.match(host):
            raise forms.ValidationError("Enter a host name such as smtp.example.com, or an IP address.")
        return host

    def clean_helo_name(self):
        helo = self.cleaned_data.get("helo_name", "").strip()
        if helo and not _HOST.match(helo):
            raise forms.ValidationError("Enter a host name such as mail.example.com, or leave it blank.")
        return helo

    def clean_weight(self):
        weight = self.cleaned_data.get("weight")
        if weight is None:
            return self.instance.weight if self.instance.pk else 1
        return weight

    def clean_password(self):
        value = self.cleaned_data.get("password")
        if not value and self.instance.pk:
            return Relay.objects.get(pk=self.instance.pk).password
        return value or ""


@admin.register(Relay)
class RelayAdmin(adminkit.ModelAdmin):
    form = RelayForm
    list_display = ("name", "host", "port", "security", "weight", "max_connections", "rate_display", "enabled",
                    "health_brief", "sending_display", "connections_display")
    list_filter = ("enabled", "security")
    search_fields = ("name", "host")
    readonly_fields = ("check_button", "health_display", "sending_display", "connections_display", "replies_display")
    actions = ["check_selected"]

    @admin.display(description="Rate")
    def rate_display(self, obj):
        return f"{obj.rate}/{obj.rate_period}" if obj.rate else "unlimited"

    def _status(self, obj):
        """The relay's health and traffic now, read once per relay and page."""
        cache = self.__dict__.setdefault("_statuses", {})
        if obj.pk not in cache:
            try:
                cache[obj.pk] = health.status(obj)
            except RedisError:
                cache[obj.pk] = None
        return cache[obj.pk]

    def changelist_view(self, request, extra_context=None):
        self.__dict__["_statuses"] = {}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self.__dict__["_statuses"] = {}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="Health")
    def health_display(self, obj):
        status = obj.pk and self._status(obj)
        if not status:
            return "unknown"
        failures = f"{status['failures']} failure{'s' if status['failures'] != 1 else ''}"
        if status["state"] == "down":
            return f"down, tried again in {status['retry_in']:.0f} s ({failures} in a row): {status['reason']}"
        if status["state"] == "retrying":
            return f"being tried again after {failures}: {status['reason']}"
        return status["state"]

    @admin.display(description="Health")
    def health_brief(self, obj):
        """The list's column: the state and the reply's code; the relay's page has the whole reason."""
        status = obj.pk and self._status(obj)
        if not status or status["state"] not in ("down", "retrying"):
            return self.health_display(obj)
        reason = status["reason"]
        code = " ".join(reason.split()[:2]) if reason[:1].isdigit() else Truncator(reason).chars(40)
        retry = f", retry in {status['retry_in']:.0f} s" if status["state"] == "down" else ", retrying"
        return format_html('<span title="{}">{}{}{}</span>', reason, status["state"], f" ({code})" if code else "",
                           retry)

    @admin.display(description="Sending now")
    def sending_display(self, obj):
        status = obj.pk and self._status(obj)
        return f"{status['rate']:.1f} messages/s" if status else "unknown"

    @admin.display(description="Connections in use")
    def connections_display(self, obj):
        status = obj.pk and self._status(obj)
        return f"{status['connections']} of {obj.max_connections}" if status else "unknown"

    @admin.display(description="Recent replies")
    def replies_display(self, obj):
        status = obj.pk and self._status(obj)
        if not status or not status["replies"]:
            return "none yet"
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} {}</li>", ((r["code"] or "no reply:", r["text"]) for r in status["replies"])))

    @admin.display(description="Check")
    def check_button(self, obj):
        if not obj.pk:
            return "Save the relay first."
        url = reverse("admin:delivery_relay_check", args=[obj.pk])
        return format_html('<a class="button" href="{}">Check connection, TLS and login</a>', url)

    def get_urls(self):
        urls = [path("<int:relay_id>/check/", self.admin_site.admin_view(self.check_view), name="delivery_relay_check")]
        return urls + super().get_urls()

    def check_view(self, request, relay_id):
        relay = get_object_or_404(Relay, pk=relay_id)
        if not self.has_view_permission(request, relay):
            return redirect("admin:index")
        self._report(request, relay)
        return redirect("admin:delivery_relay_change", relay_id)

    @admin.action(description="Check the selected relays")
    def check_selected(self, request, queryset):
        for relay in queryset:
            self._report(request, relay)

    def _report(self, request, relay):
        result = check_relay(relay)
        level = messages.SUCCESS if result.ok else messages.ERROR
        detail = "; ".join(result.steps)
        self.message_user(request, f"{relay.name}: {result.message}" + (f" ({detail})" if detail else ""), level)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        routing.forget_relay()


class RelayGroupForm(forms.ModelForm):
    class Meta:
        model = RelayGroup
        fields = ["name", "relays", "direct", "sources"]
        widgets = {"relays": forms.CheckboxSelectMultiple, "sources": forms.Textarea(attrs={"rows": 4})}


@admin.register(RelayGroup)
class RelayGroupAdmin(adminkit.ModelAdmin):
    """Where routing rules send mail: relays spread by weight, or direct from a pool of source addresses."""

    form = RelayGroupForm
    list_display = ("name", "members", "direct")
    search_fields = ("name",)

    @admin.display(description="Relays or sources")
    def members(self, obj):
        if obj.direct:
            return ", ".join(a for a, _ in obj.source_list()) or "direct, from this machine's address"
        return ", ".join(f"{r.name} ({r.weight})" for r in obj.relays.all()) or "no relay"

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        routing.forget_relay()
        for problem in rdns.problems(form.instance.source_list()) if form.instance.direct else []:
            self.message_user(request, f"Reverse DNS: {problem}", messages.WARNING)


@admin.register(RoutingRule)
class RoutingRuleAdmin(adminkit.ModelAdmin):
    """Which group each message goes to: the first enabled rule that matches it, by position."""

    list_display = ("position", "__str__", "from_domain", "kind", "provider", "group", "enabled")
    list_display_links = ("__str__",)
    list_editable = ("position", "enabled")
    list_filter = ("enabled", "kind", "group")
    fields = ("position", "from_domain", "kind", "provider", "group", "enabled")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        routing.forget_relay()


class DomainThrottleForm(forms.ModelForm):
    class Meta:
        model = DomainThrottle
        fields = ["name", "domains", "is_default", "rate", "period", "burst", "max_connections"]
        # The token bucket (delivery.throttle) lets a burst go on top of the rate: say so where both are set.
        help_texts = {
            "rate": "Messages per period, on average.",
            "burst": "Messages that may go at once after a quiet spell, on top of the rate: any one period sees "
                     "at most rate + burst (100/s with a burst of 20: at most 120 in any one second). "
                     "0 means a burst as large as the rate.",
        }


@admin.register(DomainThrottle)
class DomainThrottleAdmin(adminkit.ModelAdmin):
    form = DomainThrottleForm
    list_display = ("name", "domains", "is_default", "rate", "period", "burst", "max_connections")
    list_filter = ("is_default", "period")
    search_fields = ("name", "domains")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        throttles.invalidate()


@admin.register(ProviderRule)
class ProviderRuleAdmin(adminkit.ModelAdmin):
    """MX host suffixes of the large providers: their domains share one throttle group in direct mode."""

    list_display = ("name", "mx_suffix", "enabled")
    list_filter = ("enabled", "name")
    search_fields = ("name", "mx_suffix")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        providers.forget()


@admin.register(Send)
class SendAdmin(ReadOnlyAdminMixin, adminkit.ModelAdmin):
    """The ledger, read-only: one row per recipient and campaign (or submitted message)."""

    list_display = ("email", "campaign", "status", "attempts", "smtp_code", "sent_at", "next_attempt_at")
    list_filter = ("status", "campaign", "relay")
    search_fields = ("email", "message_id")
    list_select_related = ("campaign",)
    show_full_result_count = False
    date_hierarchy = None
    raw_id_fields = ("contact",)

