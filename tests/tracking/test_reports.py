"""Reports people can trust: the same rates on the campaign list, the dashboard, the report, the API and every
CSV, counted from the ledger; who clicked a link; campaigns side by side; the sending domains' DNS."""

import csv
import io
import re
from datetime import UTC, datetime

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns.models import ApiToken, Campaign, CampaignLink
from delivery.models import SendingDomain
from tests.delivery.servers import DNSServer
from tests.tracking.test_stats import every_outcome  # noqa: F401 (fixture)
from tracking.models import Event
from tracking.stats import campaign_rates, campaign_stats

pytestmark = pytest.mark.django_db

# every_outcome, counted by hand from its Send rows and events: 11 recipients; 4 delivered; one refused (550)
# and one accepted then reported undeliverable; of the delivered, one person opened (and a proxy), one clicked,
# one unsubscribed and one complained.
LEDGER = {"delivery": (4, 11), "open": (1, 4), "click": (1, 4), "bounce": (2, 11), "complaint": (1, 4),
          "unsubscribe": (1, 4)}


def shown_rates(html):
    """{column: (count, base)} from the rate cells of one table row."""
    cells = re.findall(r'(?:data-column="(\w+)"|class="field-(\w+)_rate[^"]*"[^>]*)>\s*<span class="herald-rate" '
                       r'data-rate="[\d.]+" data-count="(\d+)" data-base="(\d+)"', html)
    return {column or field: (int(count), int(base)) for column, field, count, base in cells}


def row_of(html, marker):
    start = html.index(marker)
    return html[start:html.index("</tr>", start)]


def rows_of(response):
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_the_list_dashboard_report_api_and_csv_show_the_ledgers_rates(every_outcome, admin_client, admin_user, client):  # noqa: F811 (the fixture imported above)
    campaign = every_outcome
    stats = campaign_stats(campaign)
    assert {key: (f["count"], f["base"]) for key, f in stats["rates"].items()} == LEDGER
    assert campaign_rates([campaign.pk])[campaign.pk] == stats["rates"]

    _, token = ApiToken.issue(admin_user)
    api = client.get(f"/api/v1/campaigns/{campaign.pk}/stats", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert api["rates"] == stats["rates"]

    listed = admin_client.get("/admin/campaigns/campaign/").content.decode()
    assert shown_rates(row_of(listed, f'/admin/campaigns/campaign/{campaign.pk}/change/')) == LEDGER
    dashboard = admin_client.get("/admin/").content.decode()
    assert shown_rates(row_of(dashboard, f'data-last="{campaign.pk}"')) == LEDGER
    assert "25.00 %" in row_of(dashboard, f'data-last="{campaign.pk}"')  # 1 of 4 delivered opened
    report = admin_client.get(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/").content.decode()
    tiles = dict(re.findall(r'data-rate-key="(\w+)".*?data-count="(\d+)"', report, re.S))
    assert {key: int(n) for key, n in tiles.items()} == {key: count for key, (count, _) in LEDGER.items()}

    summary = rows_of(admin_client.get(f"/admin/herald/reports/campaigns/{campaign.pk}/summary.csv"))
    assert summary[0] == ["kind", "key", "count", "of", "rate"]
    from_csv = {row[1]: (int(row[2]), row[4]) for row in summary if row[0] == "rate"}
    assert from_csv == {key: (count, f"{count / base:.4f}") for key, (count, base) in LEDGER.items()}
    outcomes = {row[1]: int(row[2]) for row in summary if row[0] == "outcome"}
    assert outcomes["delivered"] == 4 and outcomes["bounced_after_delivery"] == 1 and outcomes["deferred"] == 1

    domains = {row[0]: row for row in rows_of(admin_client.get(f"/admin/herald/reports/campaigns/{campaign.pk}/domains.csv"))}
    assert domains["example.org"][1] == "3"  # recipients at example.org: the late bounce, greylisted, busy
    providers = rows_of(admin_client.get(f"/admin/herald/reports/campaigns/{campaign.pk}/providers.csv"))
    assert sum(int(row[2]) for row in providers[1:]) == 11
    timeline = rows_of(admin_client.get(f"/admin/herald/reports/campaigns/{campaign.pk}/timeline.csv?unit=minute"))
    assert timeline[0][:4] == ["start", "sent", "opens", "clicks"]
    assert sum(int(row[1]) for row in timeline[1:]) == 5  # accepted with a 250


def test_who_clicked_a_link_on_the_page_and_in_the_csv(every_outcome, admin_client):  # noqa: F811 (the fixture imported above)
    campaign = every_outcome
    link = CampaignLink.objects.get(campaign=campaign, index=0)
    page = admin_client.get(f"/admin/herald/reports/campaigns/{campaign.pk}/links/0/").content.decode()
    assert link.url in page and "ann@example.com" in page and "1 person clicked" in page
    assert 'data-figure="unique_clicks">1<' in page
    exported = rows_of(admin_client.get(f"/admin/herald/reports/campaigns/{campaign.pk}/links/0/?format=csv"))
    clicked = Event.objects.filter(campaign=campaign, type="click", machine=False, link_index=0)
    assert exported[0] == ["email", "clicks", "first_click"]
    assert [row[:2] for row in exported[1:]] == [["ann@example.com", str(clicked.count())]]
    assert admin_client.get(f"/admin/herald/reports/campaigns/{campaign.pk}/links/9/").status_code == 404


def test_campaigns_side_by_side_and_as_csv(every_outcome, admin_client):  # noqa: F811 (the fixture imported above)
    campaign = every_outcome
    other = Campaign.objects.create(name="Autumn", subject="Autumn", from_email="news@herald.example",
                                    status="finished", started_at=timezone.now())
    url = f"/admin/herald/reports/compare/?campaign={campaign.pk}&campaign={other.pk}"
    page = admin_client.get(url).content.decode()
    assert shown_rates(row_of(page, f'data-campaign="{campaign.pk}"')) == LEDGER
    assert shown_rates(row_of(page, f'data-campaign="{other.pk}"'))["delivery"] == (0, 0)
    rows = rows_of(admin_client.get(url + "&format=csv"))
    by_name = {row[1]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert (by_name["Spring"]["click_count"], by_name["Spring"]["click_base"], by_name["Spring"]["click_rate"]) == \
        ("1", "4", "0.2500")


def test_the_campaign_list_runs_the_same_queries_for_three_campaigns_or_thirty(admin_client):
    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get("/admin/campaigns/campaign/").status_code == 200
        return len(captured)

    def make(n):
        Campaign.objects.bulk_create(Campaign(name=f"c{i}", subject="s", from_email="a@herald.example", status="finished",
                                              started_at=timezone.now()) for i in range(n))

    make(3)
    few = queries()
    make(27)
    assert queries() == few


def test_a_campaign_shows_only_the_actions_its_state_allows(admin_client):
    draft = Campaign.objects.create(name="Draft", subject="s", from_email="a@herald.example")
    page = admin_client.get(f"/admin/campaigns/campaign/{draft.pk}/change/").content.decode()
    assert 'id="herald-send"' in page and 'name="_save"' in page and 'id="herald-cancel"' not in page
    done = Campaign.objects.create(name="Done", subject="s", from_email="a@herald.example", status="finished",
                                   started_at=timezone.now(), finished_at=timezone.now())
    page = admin_client.get(f"/admin/campaigns/campaign/{done.pk}/change/").content.decode()
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert 'id="herald-cancel"' not in page and 'id="herald-send"' not in page and 'id="herald-stats"' in page


@pytest.fixture
def dns(settings):
    records = {
        ("good.example", "TXT"): ['"v=spf1 ip4:192.0.2.1 -all"'],
        ("herald._domainkey.good.example", "TXT"): ['"v=DKIM1; k=rsa; p=KEYONE"'],
        ("_dmarc.good.example", "TXT"): ['"v=DMARC1; p=quarantine"'],
        ("bad.example", "TXT"): ['"v=spf1 +all"'],
        ("herald._domainkey.bad.example", "TXT"): ['"v=DKIM1; k=rsa; p=SOMEONEELSE"'],
        # no DMARC record at all
    }
    with DNSServer(records) as server:
        settings.HERALD_DNS_NAMESERVERS = [server.address]
        settings.HERALD_DNS_TIMEOUT = 2
        cache.clear()
        yield server
    cache.clear()


def test_the_dashboard_warns_of_missing_or_wrong_dns_records_and_checks_again_on_demand(dns, admin_client):
    SendingDomain.objects.create(domain="good.example", public_key="KEYONE")
    SendingDomain.objects.create(domain="bad.example", public_key="KEYTWO")
    page = admin_client.get("/admin/").content.decode()
    good, bad = row_of_div(page, "good.example"), row_of_div(page, "bad.example")
    assert good.count('data-state="ok"') == 3 and "data-problem" not in good
    assert re.search(r'data-record="spf" data-state="wrong"', bad) and re.search(r'data-record="dkim" data-state="wrong"', bad)
    assert re.search(r'data-record="dmarc" data-state="missing"', bad) and "+all" in bad

    asked = len(dns.queries)
    admin_client.get("/admin/")
    assert len(dns.queries) == asked  # cached
    dns.records[("_dmarc.bad.example", "TXT")] = ['"v=DMARC1; p=none"']
    response = admin_client.post("/admin/herald/reports/dns/recheck/", follow=True)
    assert len(dns.queries) > asked
    assert re.search(r'data-record="dmarc" data-state="ok"', row_of_div(response.content.decode(), "bad.example"))


def row_of_div(html, domain):
    start = html.index(f'data-domain="{domain}"')
    return html[start:html.index('data-domain=', start + 10) if 'data-domain=' in html[start + 10:] else None]


def test_deliverability_health_against_the_providers_limits(every_outcome, admin_client):  # noqa: F811 (the fixture imported above)
    page = admin_client.get("/admin/").content.decode()
    health = page[page.index('id="dash-health"'):page.index('id="dash-dns"')]
    # 1 complaint of 4 delivered (limit 0.3 %), 2 bounces of 11 recipients (limit 2 %): both over.
    assert 'data-ok="0"' in health and 'data-warning="complaint"' in health and 'data-warning="bounce"' in health
    assert "1 / 4 delivered" in health and "2 / 11 recipients" in health


def test_times_are_shown_and_entered_in_the_operators_time_zone(admin_client, settings):
    settings.TIME_ZONE = "UTC"
    later = Campaign.objects.create(name="Later", subject="s", from_email="a@herald.example", status="scheduled",
                                    scheduled_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    response = admin_client.post("/admin/herald/time-zone/", {"time_zone": "Asia/Tokyo"}, follow=True)
    assert "Times are now shown in Asia/Tokyo" in response.content.decode()
    page = admin_client.get(f"/admin/campaigns/campaign/{later.pk}/change/").content.decode()
    assert "2030-01-01 21:00 (Asia/Tokyo)" in page
    # Entered in Tokyo: nine in the morning there is midnight UTC.
    admin_client.post(f"/admin/herald/campaigns/{later.pk}/schedule/", {"scheduled_at": "2030-01-02T09:00"})
    later.refresh_from_db()
    assert later.scheduled_at == datetime(2030, 1, 2, 0, 0, tzinfo=UTC)
    # Every date field of the admin's forms names the zone beside it.
    form = admin_client.get("/admin/campaigns/apitoken/add/").content.decode()  # its expiry time
    assert "(time zone: Asia/Tokyo)" in form
