"""Admin for Events, the suppression list (with CSV import and export) and campaign statistics."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.html import format_html

from campaigns.csvfiles import CsvRejected, size_refusal
from campaigns.models import Suppression
from tracking.models import CampaignStatistics, Event
from tracking.stats import campaign_stats
from tracking.suppressions import export_csv, import_csv


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "type", "email", "campaign", "machine", "status", "source")
    list_filter = ("type", "machine", "source")
    search_fields = ("=email", "=key")
    date_hierarchy = "created_at"
    list_select_related = ("campaign",)
    raw_id_fields = ("send", "contact", "campaign")
    # Counting millions of rows for every page is slower than the page itself.
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # what came back is a record, not something to edit


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV: email, and optionally reason and detail; a header row is optional.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        refusal = size_refusal(upload.size)
        if refusal:
            raise forms.ValidationError(refusal)
        return upload


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ("email", "reason", "created_at", "source_event")
    list_filter = ("reason",)
    search_fields = ("email_key",)
    readonly_fields = ("created_at", "source_event")
    fields = ("email", "reason", "detail", "created_at", "source_event")
    actions = ["export_selected"]
    change_list_template = "admin/tracking/suppression_change_list.html"

    @admin.display(description="source event")
    def source_event(self, obj):
        if not obj.source_event_id:
            return "—"
        url = reverse("admin:tracking_event_change", args=[obj.source_event_id])
        return format_html('<a href="{}">event {}</a>', url, obj.source_event_id)

    def get_urls(self):
        own = [
            path("import/", self.admin_site.admin_view(self.import_view), name="campaigns_suppression_import"),
            path("export/", self.admin_site.admin_view(self.export_view), name="campaigns_suppression_export"),
        ]
        return own + super().get_urls()

    @admin.action(description="Export selected suppressions as CSV")
    def export_selected(self, request, queryset):
        return self._csv(queryset)

    def export_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return self._csv(Suppression.objects.all())

    def _csv(self, queryset):
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="suppressions.csv"'
        export_csv(queryset, response)
        return response

    def import_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                result = import_csv(form.cleaned_data["file"])
            except CsvRejected as exc:
                form.add_error("file", f"{exc} Nothing was imported.")
            else:
                messages.success(request, f"{result.added} address(es) suppressed, {result.existing} already were.")
                if result.invalid:
                    shown = "; ".join(result.errors[:10])
                    more = f" (and {result.invalid - 10} more)" if result.invalid > 10 else ""
                    messages.warning(request, f"{result.invalid} row(s) skipped: {shown}{more}")
                return redirect("admin:campaigns_suppression_changelist")
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
                   "title": "Import suppressions from CSV"}
        return render(request, "admin/tracking/suppression_import.html", context)


@admin.register(CampaignStatistics)
class CampaignStatisticsAdmin(admin.ModelAdmin):
    """Lists campaigns; opening one shows its statistics with charts."""

    list_display = ("name", "status", "total", "started_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("name",)
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        campaign = self.get_object(request, object_id)
        if campaign is None or not self.has_view_permission(request, campaign):
            raise PermissionDenied
        stats = campaign_stats(campaign)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Statistics: {campaign.name}",
            "campaign": campaign,
            "stats": stats,
            "bars": _bars(stats),
            "timeline": _timeline_chart(stats["timeline"]),
            "links": _link_bars(stats["links"]),
        }
        return render(request, "admin/tracking/campaign_stats.html", context)


def _bars(stats):
    """Rows of the summary chart: label, count, rate and bar width in percent."""
    labels = [
        ("sent", "Sent"), ("deferred", "Deferred"), ("hard_bounced", "Hard bounces"), ("soft_bounced", "Soft bounces"),
        ("failed", "Failed"), ("human_opens", "Opened (people)"), ("machine_opens", "Opened (machines)"),
        ("unique_clicks", "Clicked"), ("complaints", "Complaints"), ("unsubscribes", "Unsubscribes"),
    ]
    rows = []
    for key, label in labels:
        metric = stats["metrics"][key]
        rows.append({"label": label, "count": metric["count"], "rate": metric["rate"] * 100, "of": metric["of"],
                     "width": min(100.0, metric["rate"] * 100)})
    return rows


def _link_bars(links):
    top = max((link["clicks"] for link in links), default=0) or 1
    return [{**link, "width": link["clicks"] * 100 / top} for link in links]


def _timeline_chart(timeline, width=720, height=160):
    """Bars per hour for sends, opens and clicks, as coordinates for an inline SVG."""
    if not timeline:
        return None
    series = [("sent", "#79aec8"), ("opens", "#5b9f5b"), ("clicks", "#d98c3a")]
    top = max(max(slot[name] for name, _ in series) for slot in timeline) or 1
    slot_width = width / len(timeline)
    bar_width = max(1.0, slot_width / (len(series) + 1))
    bars = []
    for i, slot in enumerate(timeline):
        for j, (name, colour) in enumerate(series):
            h = slot[name] * (height - 20) / top
            bars.append({"x": round(i * slot_width + j * bar_width, 1), "y": round(height - h, 1), "w": round(bar_width, 1),
                         "h": round(h, 1), "colour": colour, "title": f"{slot['hour']}: {slot[name]} {name}"})
    return {"width": width, "height": height, "bars": bars, "series": series, "top": top,
            "first": timeline[0]["hour"], "last": timeline[-1]["hour"]}
