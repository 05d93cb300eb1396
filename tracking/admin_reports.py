"""Campaign reports beyond the statistics page: who clicked a link, several campaigns side by side,
the DNS re-check, and a CSV export of every report.

Every figure comes from tracking/stats.py, the same functions the page, the
API and the dashboard use, so a CSV says what the page says.
"""

import csv

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, Min
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone
from django.views.decorators.http import require_POST

from campaigns.models import Campaign, CampaignLink
from delivery.throttle import throttles
from tracking import dnshealth
from tracking.models import Event
from tracking.stats import (
    OUTCOMES,
    RATES,
    SERIES,
    UNITS,
    by_provider,
    campaign_rates,
    campaign_stats,
    campaign_timeline,
    link_figures,
)

app_name = "reports-admin"
CLICKERS_PER_PAGE = 100
COMPARE_CHOICES = 50


def _may_view(request):
    if not request.user.has_perm("tracking.view_campaignstatistics"):
        raise PermissionDenied


def provider_group(domain):
    """The group a recipient domain is throttled in (a provider's domains share one where a throttle says so)."""
    key = throttles.for_domain(domain).key
    return key.removeprefix("domain:")


def csv_response(filename, header, rows):
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    writer.writerows(rows)
    return response


def _rate_columns():
    header = []
    for key, _, _, _ in RATES:
        header += [f"{key}_count", f"{key}_base", f"{key}_rate"]
    return header


def _rate_cells(figures):
    cells = []
    for key, _, _, _ in RATES:
        cells += [figures[key]["count"], figures[key]["base"], f"{figures[key]['rate']:.4f}"]
    return cells


# --- who clicked a link ---------------------------------------------------------

def clickers(campaign, index):
    """The people who clicked link ``index`` (machine clicks apart): email, clicks, first and last click."""
    return (Event.objects.filter(campaign=campaign, type=Event.Type.CLICK, machine=False, link_index=index)
            .values("send_id", "email").annotate(clicks=Count("id"), first=Min("created_at"))
            .order_by("first", "send_id"))


# A person's first click on the link, read in the order of the campaign's events (its (campaign, time) index):
# a page of the first clickers reads about a page of clicks, where grouping would read every click of the link.
_FIRST_CLICKS = """
    SELECT e.send_id, e.email, e.created_at,
           (SELECT count(*) FROM tracking_event c WHERE c.send_id = e.send_id AND c.campaign_id = e.campaign_id
              AND c.type = 'click' AND NOT c.machine AND c.link_index = e.link_index)
    FROM tracking_event e
    WHERE e.campaign_id = %s AND e.type = 'click' AND NOT e.machine AND e.link_index = %s AND e.send_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM tracking_event p WHERE p.send_id = e.send_id AND p.campaign_id = e.campaign_id
              AND p.type = 'click' AND NOT p.machine AND p.link_index = e.link_index
              AND (p.created_at < e.created_at OR (p.created_at = e.created_at AND p.id < e.id)))
    ORDER BY e.created_at, e.id
    LIMIT %s OFFSET %s"""


class FirstClicks:
    """The people who clicked a link, in the order of their first click, a page at a time (for the Paginator)."""

    def __init__(self, campaign, index, count):
        self.campaign, self.index, self.total = campaign, index, count

    def count(self):
        return self.total

    def __len__(self):
        return self.total

    def __getitem__(self, window):
        start, stop = window.start or 0, window.stop if window.stop is not None else self.total
        with connection.cursor() as cursor:
            cursor.execute(_FIRST_CLICKS, [self.campaign.pk, self.index, max(stop - start, 0), start])
            return [{"send_id": send, "email": email, "first": first, "clicks": clicks}
                    for send, email, first, clicks in cursor.fetchall()]


@staff_member_required(login_url="admin:login")
def link_clickers(request, campaign_id, index):
    _may_view(request)
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    link = CampaignLink.objects.filter(campaign=campaign, index=index).first()
    if link is None:
        raise Http404("No such link in this campaign.")
    rows = clickers(campaign, index)
    if request.GET.get("format") == "csv":
        return csv_response(f"campaign-{campaign.pk}-link-{index}-clickers.csv", ["email", "clicks", "first_click"],
                            ([r["email"], r["clicks"], timezone.localtime(r["first"]).isoformat()] for r in rows.iterator()))
    figures = link_figures(campaign, index)[0]
    # One row per person who clicked: counted already, no second pass.
    paginator = Paginator(FirstClicks(campaign, index, figures["unique_clicks"]), CLICKERS_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    context = {**admin.site.each_context(request), "title": f"Who clicked: {link.url}", "campaign": campaign, "link": link,
               "page": page, "figures": figures}
    return render(request, "admin/tracking/link_clickers.html", context)


# --- CSV of each part of a campaign's report -------------------------------------------

def _summary_rows(stats):
    rows = [["recipients", "", stats["recipients"], "", "1.0000"]]
    rows += [["outcome", key, stats["outcomes"][key]["count"], "recipients", f"{stats['outcomes'][key]['rate']:.4f}"]
             for key, _, _ in OUTCOMES]
    rows.append(["outcome", "deferred_at_least_once", stats["deferred_at_least_once"]["count"], "recipients",
                 f"{stats['deferred_at_least_once']['rate']:.4f}"])
    rows += [["engagement", key, figure["count"], "delivered", f"{figure['rate']:.4f}"]
             for key, figure in stats["engagement"].items()]
    rows += [["rate", key, figure["count"], figure["base_label"], f"{figure['rate']:.4f}"]
             for key, figure in stats["rates"].items()]
    return ["kind", "key", "count", "of", "rate"], rows


def _links_rows(stats):
    return (["index", "url", "clicks", "unique_clicks", "machine_clicks"],
            [[link["index"], link["url"], link["clicks"], link["unique_clicks"], link["machine_clicks"]]
             for link in stats["links"]])


def _domains_rows(stats):
    keys = [key for key, _, _ in OUTCOMES]
    return (["domain", "recipients", *keys, "deferred_at_least_once", "avg_latency_seconds"],
            [[d["domain"], d["recipients"], *[d[k] for k in keys], d["deferred_at_least_once"], d["avg_latency_seconds"]]
             for d in stats["domains"]])


def _providers_rows(stats):
    return (["group", "domains", "recipients", "delivered", "deferred_at_least_once", "bounced", "avg_latency_seconds"],
            [[g["group"], g["domains"], g["recipients"], g["delivered"], g["deferred_at_least_once"], g["bounced"],
              g["avg_latency_seconds"]] for g in by_provider(stats["domains"], provider_group)])


REPORTS = {"summary": _summary_rows, "links": _links_rows, "domains": _domains_rows, "providers": _providers_rows}


@staff_member_required(login_url="admin:login")
def report_csv(request, campaign_id, report):
    _may_view(request)
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if report == "timeline":
        unit = request.GET.get("unit", "hour")
        if unit not in UNITS:
            raise Http404("No such unit.")
        timeline = campaign_timeline(campaign, unit)
        return csv_response(f"campaign-{campaign.pk}-timeline-{unit}.csv", ["start", *SERIES],
                            ([b["start"], *[b[s] for s in SERIES]] for b in timeline["buckets"]))
    if report not in REPORTS:
        raise Http404("No such report.")
    header, rows = REPORTS[report](campaign_stats(campaign))
    return csv_response(f"campaign-{campaign.pk}-{report}.csv", header, rows)


# --- several campaigns side by side -------------------------------------------------------

@staff_member_required(login_url="admin:login")
def compare(request):
    _may_view(request)
    chosen = [int(pk) for pk in request.GET.getlist("campaign") if pk.isdigit()]
    choices = list(Campaign.objects.filter(started_at__isnull=False).order_by("-started_at")[:COMPARE_CHOICES])
    campaigns = {c.pk: c for c in Campaign.objects.filter(pk__in=chosen)}
    rows = [{"campaign": campaigns[pk], "rates": figures}
            for pk, figures in campaign_rates(pk for pk in chosen if pk in campaigns).items()]
    if request.GET.get("format") == "csv":
        return csv_response("campaigns-compared.csv", ["campaign_id", "name", "status", "started_at", *_rate_columns()],
                            ([r["campaign"].pk, r["campaign"].name, r["campaign"].status,
                              timezone.localtime(r["campaign"].started_at).isoformat() if r["campaign"].started_at else "",
                              *_rate_cells(r["rates"])] for r in rows))
    context = {**admin.site.each_context(request), "title": "Compare campaigns", "choices": choices, "chosen": set(chosen),
               "rows": rows, "rate_labels": [label for _, label, _, _ in RATES], "query": request.GET.urlencode()}
    return render(request, "admin/tracking/compare.html", context)


@require_POST
@staff_member_required(login_url="admin:login")
def recheck_dns(request):
    rows = dnshealth.domain_health(recheck=True)
    problems = sum(len(r["problems"]) for r in rows)
    if problems:
        messages.warning(request, f"DNS checked again: {problems} record(s) missing or wrong.")
    else:
        messages.success(request, "DNS checked again: every sending domain's SPF, DKIM and DMARC records are in order.")
    return redirect("admin:index")


urlpatterns = [
    path("compare/", compare, name="compare"),
    path("dns/recheck/", recheck_dns, name="recheck-dns"),
    path("campaigns/<int:campaign_id>/links/<int:index>/", link_clickers, name="link-clickers"),
    path("campaigns/<int:campaign_id>/<slug:report>.csv", report_csv, name="report-csv"),
]
