"""Admin for warm-up schedules: the preset, the schedule's volumes, today's usage per provider, and every daily step."""

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from delivery import warmup
from delivery.models import Warmup, WarmupStep
from herald import adminkit


class WarmupStepInline(adminkit.TabularInline):
    model = WarmupStep
    verbose_name_plural = "Daily steps"
    fields = ("day", "action", "from_stage", "to_stage", "attempts", "hard_bounces", "complaints", "reason")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-day",)

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Warmup)
class WarmupAdmin(adminkit.ModelAdmin):
    list_display = ("identity", "preset", "stage", "daily_allowance", "today", "stepped_on", "reason")
    list_filter = ("preset",)
    search_fields = ("identity",)
    readonly_fields = ("stepped_on", "schedule", "today", "reason")
    fields = ("identity", "preset", "stage", "schedule", "today", "stepped_on", "reason")
    inlines = [WarmupStepInline]

    @admin.display(description="Per provider per day")
    def daily_allowance(self, obj):
        value = warmup.allowance(obj)
        if value is not None:
            return value
        return "no limit (off)" if obj.preset == Warmup.Preset.OFF else "no limit (complete)"

    @admin.display(description="Sent today")
    def today(self, obj):
        if not obj.pk:
            return "—"
        state = warmup.status(obj)
        if not state.usage:
            return "nothing yet"
        cap = f" of {state.allowance}" if state.allowance is not None else ""
        return format_html_join(", ", "{}: {}{}", ((name, n, cap) for name, n in sorted(state.usage.items())))

    @admin.display(description="Schedule")
    def schedule(self, obj):
        preset = warmup.PRESETS.get(obj.preset)
        if preset is None:
            return "Off: no daily limit."
        days = format_html_join(
            "", "<li{}>day {}: {} a day per provider</li>",
            ((' style="font-weight: bold"' if stage == obj.stage else "", stage + 1, volume)
             for stage, volume in enumerate(preset.schedule())))
        return format_html("<ol style='list-style: none; padding: 0'>{}<li>then no limit</li></ol>"
                           "<p>Each day grows only if the last day's bounce and complaint rates stayed low.</p>", days)
