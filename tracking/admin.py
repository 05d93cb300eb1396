"""Admin for Events, the suppression list (with CSV import and export) and campaign statistics."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.html import format_html

from campaigns.csvfiles import CsvRejected, size_refusal
from campaigns.models import Suppression, variant_letter
from herald import adminkit
from herald.readonly import ReadOnlyAdminMixin
from tracking import (
    admin_campaigns,  # noqa: F401  (the campaign list's rate columns)
    winner,
)
from tracking.admin_reports import provider_group
from tracking.models import BreakerTrip, CampaignStatistics, Event
from tracking.stats import OUTCOMES, UNITS, by_provider, campaign_stats, campaign_timeline
from tracking.suppressions import export_csv, import_csv


@admin.register(Event)
class EventAdmin(adminkit.ModelAdmin):
    list_display = ("created_at", "type", "email", "campaign", "machine", "status", "source")
    # No date hierarchy and no filter by source: each would read every event for its choices.
    list_filter = ("type", "machine", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=email", "=key")
    list_select_related = ("campaign",)
    raw_id_fields = ("send", "contact", "campaign")
    # Counting millions of rows for every page is slower than the page itself.
    show_full_result_count = False
    paginator = adminkit.LargeTablePaginator
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # what came back is a record, not something to edit


@admin.register(BreakerTrip)
class BreakerTripAdmin(adminkit.ModelAdmin):
    """Every time the circuit breaker paused a campaign: the figures, and who acknowledged them."""

    list_display = ("created_at", "campaign", "scope", "domain", "metric", "provider", "count", "base", "acknowledged_at",
                    "acknowledged_by")
    list_filter = ("scope", "metric", ("acknowledged_at", admin.EmptyFieldListFilter))
    list_select_related = ("campaign",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # acknowledged by resuming the campaign, never edited

    def has_delete_permission(self, request, obj=None):
        return False


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV: email, and optionally reason and detail; a header row is optional.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        refusal = size_refusal(upload.size)
        if refusal:
            raise forms.ValidationError(refusal)
        return upload


@admin.register(Suppression)
class SuppressionAdmin(adminkit.ModelAdmin):
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
class CampaignStatisticsAdmin(ReadOnlyAdminMixin, adminkit.ModelAdmin):
    """Lists campaigns; opening one shows its statistics with charts."""

    list_display = ("name", "status", "total", "started_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("name",)
    show_full_result_count = False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        campaign = self.get_object(request, object_id)
        if campaign is None or not self.has_view_permission(request, campaign):
            raise PermissionDenied
        stats = campaign_stats(campaign)
        outcomes = _outcome_rows(stats)
        unit = request.GET.get("unit")
        timeline = campaign_timeline(campaign, unit) if unit in UNITS else stats["timeline"]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Statistics: {campaign.name}",
            "campaign": campaign,
            "stats": stats,
            "outcomes": outcomes,
            "engagement": _engagement_rows(stats),
            "deferred_once": {"count": stats["deferred_at_least_once"]["count"],
                              "percent": stats["deferred_at_least_once"]["rate"] * 100},
            **_domain_table(stats, outcomes),
            "timeline": _timeline_chart(timeline),
            "units": UNITS,
            "links": _link_bars(stats["links"]),
            "variants": _variant_rows(stats["variants"]),
            "can_choose_winner": (request.user.has_perm("campaigns.send_campaign") and stats["variants"] is not None
                                  and campaign.test_share < 100 and campaign.status in winner.OPEN),
            "winner_url": reverse("admin:tracking_campaignstatistics_winner", args=[campaign.pk]),
            "providers": by_provider(stats["domains"], provider_group),
        }
        return render(request, "admin/tracking/campaign_stats.html", context)

    def get_urls(self):
        own = [path("<int:campaign_id>/winner/", self.admin_site.admin_view(self.winner_view),
                    name="tracking_campaignstatistics_winner")]
        return own + super().get_urls()

    def winner_view(self, request, campaign_id):
        """Choose an A/B test's winner by hand, before its wait ends: the rest of the audience gets it."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm("campaigns.send_campaign"):
            raise PermissionDenied
        try:
            chosen = winner.choose_by_hand(campaign_id, int(request.POST.get("variant") or 0), user=request.user)
        except (winner.WinnerError, ValueError) as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Variant {variant_letter(chosen.winner)} goes to the rest of the audience.")
        return redirect("admin:tracking_campaignstatistics_change", campaign_id)


def _variant_rows(figures):
    if figures is None:
        return None
    rows = [{**v, **{f"{key}_percent": v[key] * 100 for key in ("open_rate", "click_rate", "click_to_open")}}
            for v in figures["variants"]]
    return {**figures, "variants": rows}


OUTCOME_COLOURS = {"delivered": "#5b9f5b", "bounced_after_delivery": "#b35c9e", "bounced": "#ba2121", "failed": "#7a4b2a",
                   "deferred": "#d98c3a", "queued": "#9aa7b0", "sending": "#79aec8", "skipped": "#c9c26b",
                   "cancelled": "#555555"}


# Where a campaign's recipients end up, shown even at zero; the other outcomes only when some are there.
ALWAYS_SHOWN = {"delivered", "bounced_after_delivery", "bounced", "failed", "deferred"}


def _outcome_rows(stats):
    """The partition: one row per outcome, each with its slice of the stacked bar (widths add up to 100)."""
    rows = []
    for key, label, help_text in OUTCOMES:
        figure = stats["outcomes"][key]
        if not figure["count"] and key not in ALWAYS_SHOWN:
            continue
        rows.append({"key": key, "label": label, "help": help_text, "count": figure["count"],
                     "percent": figure["rate"] * 100, "colour": OUTCOME_COLOURS[key]})
    return rows


def _domain_table(stats, outcomes):
    """The outcomes per domain, with a column only for the outcomes the campaign has."""
    columns = [row for row in outcomes if row["count"]]
    rows = [{**d, "cells": [(row["key"], d[row["key"]]) for row in columns]} for d in stats["domains"]]
    return {"domain_columns": columns, "domain_rows": rows}


def _engagement_rows(stats):
    return [{"key": key, "label": figure["label"], "count": figure["count"], "percent": figure["rate"] * 100,
             "width": min(100.0, figure["rate"] * 100)} for key, figure in stats["engagement"].items()]


def _link_bars(links):
    top = max((link["clicks"] for link in links), default=0) or 1
    return [{**link, "width": link["clicks"] * 100 / top} for link in links]


TIMELINE_SERIES = [("sent", "#7dd3fc"), ("opens", "#16a34a"), ("clicks", "#f59e0b")]


def _timeline_chart(timeline, width=720, height=160, axis=22, margin=24, ticks=8):
    """Bars per time bucket for sends, opens and clicks, as coordinates for an inline SVG, with labelled ticks.

    The margins leave room for the first and last labels, centred under their bars.
    """
    buckets = timeline["buckets"]
    if not buckets:
        return None
    top = max(max(slot[name] for name, _ in TIMELINE_SERIES) for slot in buckets) or 1
    plot = height - axis
    slot_width = (width - 2 * margin) / len(buckets)
    bar_width = max(0.5, slot_width / (len(TIMELINE_SERIES) + 1))
    bars = []
    for i, slot in enumerate(buckets):
        for j, (name, colour) in enumerate(TIMELINE_SERIES):
            h = slot[name] * (plot - 10) / top
            bars.append({"x": round(margin + i * slot_width + j * bar_width, 1), "y": round(plot - h, 1),
                         "w": round(bar_width, 1), "h": round(h, 1), "colour": colour,
                         "title": f"{slot['label']}: {slot[name]} {name}"})
    every = max(1, -(-len(buckets) // ticks))
    labels = [{"x": round(margin + (i + 0.5) * slot_width, 1), "text": slot["label"]}
              for i, slot in enumerate(buckets) if i % every == 0]
    return {"width": width, "height": height, "plot": plot, "label_y": height - 6, "bars": bars,
            "series": TIMELINE_SERIES, "top": top, "ticks": labels, "unit": timeline["unit"],
            "time_zone": timeline["time_zone"], "first": buckets[0]["label"], "last": buckets[-1]["label"]}
