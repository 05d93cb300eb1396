"""Admin pages that show records nobody may add, change or delete by hand (ledgers, logs, reports)."""


class ReadOnlyAdminMixin:
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
