"""Outgoing webhooks in the admin: endpoints (secret shown once), their outbox with redelivery, the delivery log."""

from django import forms
from django.contrib import admin, messages

from herald import adminkit
from webhooks_out import deliver
from webhooks_out.models import EVENT_TYPES, DeliveryAttempt, Endpoint, OutboxMessage, new_secret


class EndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(choices=[(t, t.replace("_", " ")) for t in EVENT_TYPES],
                                            widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Endpoint
        fields = ("url", "description", "event_types", "batch_size", "enabled")


@admin.register(Endpoint)
class EndpointAdmin(adminkit.ModelAdmin):
    form = EndpointForm
    list_display = ("url", "description", "enabled", "pending", "consecutive_failures", "disabled_reason")
    readonly_fields = ("disabled_reason", "consecutive_failures", "failing_since", "breaker_until")
    actions = ["rotate_secrets", "redeliver_failed"]

    @admin.display(description="waiting in the outbox")
    def pending(self, obj):
        return obj.outbox.filter(status=OutboxMessage.Status.PENDING).count()

    def save_model(self, request, obj, form, change):
        fresh = not obj.pk
        if fresh:
            obj.secret = new_secret()
        if change and "enabled" in form.changed_data and obj.enabled:
            obj.disabled_reason, obj.consecutive_failures, obj.failing_since, obj.breaker_until = "", 0, None, None
        super().save_model(request, obj, form, change)
        if fresh:
            messages.warning(request, f"Signing secret for {obj.url} (shown once, keep it now): {obj.secret}")

    @admin.action(description="Rotate the signing secret (each new one is shown once)", permissions=["change"])
    def rotate_secrets(self, request, queryset):
        for endpoint in queryset:
            messages.warning(request, f"New signing secret for {endpoint.url} (shown once): {endpoint.rotate_secret()}")

    @admin.action(description="Deliver failed events again", permissions=["change"])
    def redeliver_failed(self, request, queryset):
        ids = OutboxMessage.objects.filter(endpoint__in=queryset, status=OutboxMessage.Status.FAILED).values_list("id", flat=True)
        self.message_user(request, f"{deliver.redeliver(ids)} event(s) will be delivered again.")


@admin.register(OutboxMessage)
class OutboxMessageAdmin(adminkit.ModelAdmin):
    list_display = ("msg_id", "endpoint", "event_type", "status", "attempts", "next_attempt_at", "last_error")
    list_filter = ("status", "event_type", "endpoint")
    readonly_fields = [f.name for f in OutboxMessage._meta.fields]
    actions = ["redeliver"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Deliver again now", permissions=["change"])
    def redeliver(self, request, queryset):
        self.message_user(request, f"{deliver.redeliver(queryset.values_list('id', flat=True))} event(s) queued.")


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(adminkit.ModelAdmin):
    list_display = ("created_at", "endpoint", "webhook_id", "ok", "status_code", "latency_ms")
    list_filter = ("ok", "endpoint")
    readonly_fields = [f.name for f in DeliveryAttempt._meta.fields]

    def has_add_permission(self, request):
        return False
