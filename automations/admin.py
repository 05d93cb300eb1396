"""Automations in the admin: a trigger and its list of steps (add, reorder by position, edit inline)."""

from django.contrib import admin, messages
from django.forms.models import BaseInlineFormSet
from django.utils import timezone
from django.utils.html import format_html_join

from automations import stats, versions
from automations.models import Automation, ContactEvent, Enrolment, MessageTemplate, Step
from herald import adminkit


@admin.register(MessageTemplate)
class MessageTemplateAdmin(adminkit.ModelAdmin):
    list_display = ("name", "slug", "subject", "from_email", "track", "updated_at")
    search_fields = ("name", "slug", "subject")
    prepopulated_fields = {"slug": ("name",)}


class CurrentSteps(BaseInlineFormSet):
    """Only the steps of the automation's current version: older ones stay with the contacts still on them."""

    def get_queryset(self):
        return super().get_queryset().filter(version=self.instance.version if self.instance.pk else 1)


class StepInline(adminkit.TabularInline):
    model = Step
    formset = CurrentSteps
    extra = 1
    ordering = ("position", "pk")
    fields = ("position", "kind", "template", "wait_seconds", "wait_weekday", "wait_time", "condition", "rules",
              "else_position", "update", "entered", "exited")
    readonly_fields = ("entered", "exited")


@admin.register(Automation)
class AutomationAdmin(adminkit.ModelAdmin):
    list_display = ("name", "trigger", "status", "version", "active_enrolments", "updated_at")
    list_filter = ("status", "trigger")
    search_fields = ("name",)
    inlines = [StepInline]
    readonly_fields = ("version", "statistics")
    fieldsets = [
        (None, {"fields": ("name", "status", "version")}),
        ("Trigger", {"fields": ("trigger", "mailing_list", "segment", "date_attribute", "date_yearly", "date_hour",
                                "link_url", "event_name")}),
        ("Re-entry", {"fields": ("reentry", "reentry_days")}),
        ("Statistics", {"fields": ("statistics",)}),
    ]
    actions = ["activate", "pause", "migrate_enrolments"]

    @admin.display(description="active")
    def active_enrolments(self, obj):
        return obj.enrolments.filter(status=Enrolment.Status.ACTIVE).count()

    @admin.display(description="per step")
    def statistics(self, obj):
        if not obj.pk:
            return "-"
        rows = stats.step_statistics(obj)
        return format_html_join(
            "\n", "<div>{}. {}: {} entered, {} here now, {} sent, {} opened, {} clicked, {} left here</div>",
            ((r["position"], r["kind"], r["entered"], r["waiting"], r["sent"], r["opened"], r["clicked"], r["exited"])
             for r in rows))

    def save_related(self, request, form, formsets, change):
        if change and any(f.has_changed() for f in formsets) and versions.before_edit(form.instance):
            form.instance.refresh_from_db(fields=["version"])
            messages.info(request, "Contacts already on the way continue with the steps they started; "
                                   "use “Move contacts to the current steps” to change that.")
        super().save_related(request, form, formsets, change)

    def save_formset(self, request, form, formset, change):
        steps = formset.save(commit=False)
        for step in steps:
            step.version = form.instance.version
            step.save()
        for step in formset.deleted_objects:
            if step.messages.exists():
                messages.warning(request, f"Step {step.position} has sent messages and is kept.")
            else:
                step.delete()

    @admin.action(description="Activate (or resume) the selected automations", permissions=["change"])
    def activate(self, request, queryset):
        queryset.filter(watermark=None).update(watermark=timezone.now())
        n = queryset.update(status=Automation.Status.ACTIVE, updated_at=timezone.now())
        self.message_user(request, f"{n} automation(s) active.")

    @admin.action(description="Pause the selected automations (contacts wait where they are)", permissions=["change"])
    def pause(self, request, queryset):
        n = queryset.filter(status=Automation.Status.ACTIVE).update(status=Automation.Status.PAUSED,
                                                                  updated_at=timezone.now())
        self.message_user(request, f"{n} automation(s) paused.")

    @admin.action(description="Move contacts to the current steps", permissions=["change"])
    def migrate_enrolments(self, request, queryset):
        moved = sum(versions.migrate(a) for a in queryset)
        self.message_user(request, f"{moved} contact(s) moved to the current steps.")


@admin.register(Enrolment)
class EnrolmentAdmin(adminkit.ModelAdmin):
    list_display = ("contact", "automation", "occurrence", "version", "position", "status", "due_at", "reason")
    list_filter = ("status", "automation")
    raw_id_fields = ("contact",)
    readonly_fields = [f.name for f in Enrolment._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(ContactEvent)
class ContactEventAdmin(adminkit.ModelAdmin):
    list_display = ("name", "contact", "created_at")
    search_fields = ("name",)
    raw_id_fields = ("contact",)
    readonly_fields = ("contact", "name", "payload", "created_at")

    def has_add_permission(self, request):
        return False
