"""The audit log in the admin: readable by whoever holds view_auditentry, changeable by nobody."""

from django.contrib import admin

from campaigns.models import AuditEntry
from herald import adminkit
from herald.readonly import ReadOnlyAdminMixin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdminMixin, adminkit.ModelAdmin):
    list_display = ("at", "actor_or_system", "via", "action", "object_repr", "address")
    list_filter = ("action", "via")
    search_fields = ("actor", "object_repr", "action", "object_id")
    date_hierarchy = "at"
    fields = ("at", "actor", "via", "address", "action", "object_type", "object_id", "object_repr", "detail")
    readonly_fields = fields

    @admin.display(description="who", ordering="actor")
    def actor_or_system(self, obj):
        return obj.actor or "system"

