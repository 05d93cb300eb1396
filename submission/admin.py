"""Admin: SMTP credentials (secret shown once, statistics per credential) and submitted messages."""

from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils.html import format_html, format_html_join

from delivery.models import Send
from herald import adminkit
from submission.models import OutboundMessage, SmtpCredential
from tracking.models import Event

STAT_STATUSES = ("sent", "bounced", "deferred", "failed", "skipped")


def _send_count(status):
    own_messages = OutboundMessage.objects.filter(credential_id=OuterRef(OuterRef("pk"))).values("pk")
    counted = (
        Send.objects.filter(outbound_id__in=own_messages, status=status)
        .order_by().values("status").annotate(n=Count("*")).values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def _show_secret(request, row, secret):
    messages.warning(
        request,
        format_html(
            "SMTP secret for <b>{}</b>: <code>{}</code> — copy it now; Herald keeps only a hash and cannot show it again.",
            row.username, secret,
        ),
    )


@admin.register(SmtpCredential)
class SmtpCredentialAdmin(adminkit.ModelAdmin):
    list_display = ("username", "domains", "enabled", "tracking", "rate", "default_tag", "message_count",
                    *[f"{s}_count" for s in STAT_STATUSES])
    list_filter = ("enabled", "tracking")
    search_fields = ("username", "allowed_domains")
    fields = ("username", "allowed_domains", "rate_limit", "rate_period", "tracking", "default_tag", "enabled",
              "created_at", "updated_at")
    readonly_fields = ("created_at", "updated_at")
    actions = ["rotate_secret"]

    def get_queryset(self, request):
        qs = super().get_queryset(request).annotate(messages_total=Count("messages", distinct=True))
        return qs.annotate(**{f"stat_{s}": _send_count(s) for s in STAT_STATUSES})

    def get_readonly_fields(self, request, obj=None):
        # The username is what clients log in with: fixed once created.
        return (*self.readonly_fields, "username") if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        secret = None if change else obj.set_new_secret()
        super().save_model(request, obj, form, change)
        if secret:
            _show_secret(request, obj, secret)

    @admin.action(description="Rotate the secret (the old one stops working at once)")
    def rotate_secret(self, request, queryset):
        for row in queryset:
            secret = row.set_new_secret()
            row.save(update_fields=["secret_hash", "updated_at"])
            _show_secret(request, row, secret)

    @admin.display(description="Sender domains")
    def domains(self, obj):
        return ", ".join(obj.domain_list())

    @admin.display(description="Rate")
    def rate(self, obj):
        return f"{obj.rate_limit}/{obj.rate_period}" if obj.rate_limit else "unlimited"

    @admin.display(description="Messages", ordering="messages_total")
    def message_count(self, obj):
        return obj.messages_total


for _status in STAT_STATUSES:
    def _stat(self, obj, status=_status):
        return getattr(obj, f"stat_{status}", 0)

    _stat.short_description = f"Recipients {_status}"
    _stat.admin_order_field = f"stat_{_status}"
    setattr(SmtpCredentialAdmin, f"{_status}_count", _stat)


@admin.register(OutboundMessage)
class OutboundMessageAdmin(adminkit.ModelAdmin):
    list_display = ("id", "created_at", "credential", "mail_from", "subject", "tag", "recipients", "size")
    list_filter = ("credential", "tag")
    search_fields = ("mail_from", "subject", "message_id", "from_header")
    date_hierarchy = "created_at"
    list_select_related = ("credential",)
    exclude = ("raw",)
    readonly_fields = ("credential", "mail_from", "from_header", "from_domain", "subject", "message_id", "size",
                       "recipients", "tag", "peer", "created_at", "headers", "deliveries")

    def get_queryset(self, request):
        return super().get_queryset(request).defer("raw")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Headers as received")
    def headers(self, obj):
        raw = bytes(obj.raw)
        end = raw.find(b"\r\n\r\n")
        return format_html("<pre>{}</pre>", raw[: end if end >= 0 else 8000].decode("utf-8", "replace"))

    @admin.display(description="Recipients")
    def deliveries(self, obj):
        sends = list(Send.objects.filter(outbound_id=obj.pk).order_by("id"))
        events = {}
        for e in Event.objects.filter(send__in=sends).order_by("created_at"):
            events.setdefault(e.send_id, []).append(f"{e.type} {e.created_at:%Y-%m-%d %H:%M:%S}")
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((s.email, s.status, s.attempts, s.smtp_reply[:200], "; ".join(events.get(s.pk, []))) for s in sends),
        )
        return format_html(
            "<table><tr><th>Recipient</th><th>Status</th><th>Attempts</th><th>Last reply</th><th>Events</th></tr>{}</table>",
            rows,
        )
