"""The campaign list with each campaign's rates, and a campaign page with only the buttons its state allows.

The campaigns app registers the campaign admin; the figures are tracking's,
so the list's columns are added here, above both.
"""

from django.contrib import admin
from django.utils.html import format_html
from unfold.views import ChangeList

from campaigns.admin_content import EDITABLE, CampaignAdmin
from campaigns.models import Campaign
from tracking.stats import RATES, listed_rates
from tracking.templatetags.herald_dashboard import rate


class RatesChangeList(ChangeList):
    """Fetches the rates of the page's campaigns together, from their tallies in one query whatever the page size
    (tracking.stats.listed_rates)."""

    def get_results(self, request):
        super().get_results(request)
        figures = listed_rates(self.result_list)
        for campaign in self.result_list:
            campaign.rates = figures.get(campaign.pk)


def _rate_column(key, label):
    def column(self, obj):
        figures = getattr(obj, "rates", None)
        return rate(figures[key]) if figures else "—"
    column.short_description = label
    column.__name__ = f"{key}_rate"
    return column


class CampaignRatesAdmin(CampaignAdmin):
    list_display = ("name", "status_badge", "total", *[f"{key}_rate" for key, _, _, _ in RATES], "started_at")
    list_display_links = ("name",)
    show_full_result_count = False

    for _key, _label, _, _ in RATES:
        locals()[f"{_key}_rate"] = _rate_column(_key, _label)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return format_html('<span class="herald-badge {}">{}</span>', obj.status, obj.get_status_display())

    def get_changelist(self, request, **kwargs):
        return RatesChangeList

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        campaign = Campaign.objects.filter(pk=object_id).only("status").first() if str(object_id).isdigit() else None
        if campaign is not None and campaign.status not in EDITABLE:
            # Its content was frozen when it started, and a finished one is a record: nothing here to save.
            extra_context.update(show_save=False, show_save_and_continue=False, show_save_and_add_another=False)
        return super().change_view(request, object_id, form_url, extra_context)


admin.site.unregister(Campaign)
admin.site.register(Campaign, CampaignRatesAdmin)
