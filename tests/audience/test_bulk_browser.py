"""Adding every contact a filter matches to a list, in headless Chromium: 100,000 contacts, "select all",
a confirmation that counts them, and a background job whose page follows its progress until it is done.

Each page is saved as a screenshot under HERALD_ARTIFACTS (default var/artifacts/, which git ignores).
"""

import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from campaigns.models import BulkJob, Contact, MailingList, Subscription
from tests.audience.test_bulk_jobs import MANY, insert_contacts
from tests.delivery.workers import Worker
from tests.operator.test_browser import browser, page, sign_in  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(os.environ.get("HERALD_ARTIFACTS") or django_settings.BASE_DIR / "var" / "artifacts") / "bulk"


def shot(tab, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest.fixture
def many_contacts(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("generates its contacts with PostgreSQL's generate_series")
    return insert_contacts(MANY)


def test_an_operator_adds_all_100000_matching_contacts_to_a_list(page, live_server, many_contacts, tmp_path):  # noqa: F811
    weekly = MailingList.objects.create(name="Weekly")
    worker = Worker("bulk", tmp_path).wait_ready()
    try:
        sign_in(page)

        # The active contacts, every one of them: tick the page, then "select all".
        page.goto("/admin/campaigns/contact/?status__exact=active")
        page.check("#action-toggle")
        page.click(".question a")
        page.select_option("select[name=action]", "bulk_add_to_list")
        shot(page, "1-select-all")
        page.click("button[name=index]")

        # The confirmation counts what the filter matches, not the page.
        page.wait_for_selector("text=Confirm bulk action")
        assert "90000" in page.inner_text("#content").replace(",", "").replace("\u202f", "").replace(" ", "")
        page.select_option("select[name=mailing_list]", label="Weekly")
        shot(page, "2-confirm")
        page.click("#content [type=submit]")

        # The job's page follows it until it is done.
        page.wait_for_url("**/bulkjob/*/change/")
        page.wait_for_function("() => document.body && document.body.innerText.includes('Done')", timeout=120_000)
        shot(page, "3-done")
    finally:
        worker.stop()

    job = BulkJob.objects.get()
    assert (job.status, job.total, job.processed) == ("done", MANY * 9 // 10, MANY * 9 // 10)
    added = set(Subscription.objects.filter(mailing_list=weekly).values_list("contact_id", flat=True))
    assert len(added) == MANY * 9 // 10
    assert added.isdisjoint(Contact.objects.filter(status="blocklisted").values_list("id", flat=True))
