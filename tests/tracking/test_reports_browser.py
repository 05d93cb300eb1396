"""Reading a campaign's results in headless Chromium: dashboard, campaign list, report, who clicked a link, CSV.

Each page is saved as a screenshot under HERALD_ARTIFACTS (default
var/artifacts/, which git ignores), light and dark, for people to look at.
"""

import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User

from tests.delivery.conftest import fresh_engine_state  # noqa: F401 (fixture)
from tests.operator.test_browser import browser, page  # noqa: F401 (fixtures)
from tests.tracking.test_stats import every_outcome  # noqa: F401 (fixture)

pytestmark = [pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(os.environ.get("HERALD_ARTIFACTS") or django_settings.BASE_DIR / "var" / "artifacts") / "reports"


def shot(tab, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def test_an_operator_reads_a_campaigns_results_down_to_who_clicked(page, every_outcome):  # noqa: F811 (fixtures)
    campaign = every_outcome
    User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/admin/")
    shot(page, "0-sign-in")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "a long passphrase 42")
    page.click("input[type=submit]")

    page.wait_for_selector("#herald-dashboard")
    assert page.locator(f'[data-last="{campaign.pk}"] [data-column="open"]').inner_text().startswith("25.00 %")
    # Navigation by task; the scheduler's tables folded away under Settings › Advanced.
    sidebar = page.inner_text("#nav-sidebar-apps")
    assert [group for group in ("Campaigns", "Audience", "Content", "Reports", "Settings") if group in sidebar]
    assert "Crontabs" not in sidebar and "Crontabs" in page.text_content("#nav-sidebar-apps")
    shot(page, "1-dashboard")

    page.click("#nav-sidebar-apps >> text=Campaigns >> nth=1")
    page.wait_for_selector("#result_list")
    assert page.locator("td.field-click_rate").first.inner_text().startswith("25.00 %")
    shot(page, "2-campaign-list")

    page.click(f"#result_list a[href$='/campaign/{campaign.pk}/change/']")
    page.wait_for_selector("#herald-operator")
    shot(page, "3-campaign")
    page.click("#herald-stats")
    page.wait_for_selector("#stats-rates")
    assert page.locator('[data-rate-key="click"] .herald-rate').inner_text().startswith("25.00 %")
    shot(page, "4-report")

    page.click("#stats-links .stats-clickers")
    page.wait_for_selector("#clickers")
    assert "ann@example.com" in page.inner_text("#clickers")
    shot(page, "5-clickers")
    with page.expect_download() as download:
        page.click("#clickers-csv")
    exported = Path(download.value.path()).read_text()
    assert exported.splitlines()[0] == "email,clicks,first_click" and "ann@example.com,1," in exported

    page.emulate_media(color_scheme="dark")
    page.evaluate("localStorage.setItem('adminTheme', JSON.stringify('dark'))")
    page.goto("/admin/")
    page.wait_for_selector("#herald-dashboard")
    shot(page, "6-dashboard-dark")
    page.set_viewport_size({"width": 800, "height": 1100})  # a tablet
    page.goto(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/")
    page.wait_for_selector("#stats-rates")
    shot(page, "7-report-tablet-dark")
