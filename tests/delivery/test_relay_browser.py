"""A pool of relays as an operator sees it in headless Chromium: adding a relay, each relay's health,
connections and recent replies after a campaign, and which relay carried how much.

Each page is saved as a screenshot under HERALD_ARTIFACTS (default var/artifacts/, which git ignores).
"""

import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from campaigns.models import Campaign
from delivery import lifecycle, routing
from delivery.models import Relay, RelayGroup, RoutingRule
from tests.delivery.conftest import SENDABLE_HTML, drain, fresh_engine_state, make_campaign  # noqa: F401 (fixtures)
from tests.delivery.servers import PipeliningSink
from tests.delivery.test_relay_pool import RefusingMailHandler
from tests.operator.test_browser import browser, page, sign_in  # noqa: F401 (fixtures)
from tests.support.smtp import Sink

pytestmark = [pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(os.environ.get("HERALD_ARTIFACTS") or django_settings.BASE_DIR / "var" / "artifacts") / "relays"
PASSWORD = "relay secret 7f3a"


def shot(tab, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def row_of(tab, name):
    return " ".join(tab.locator("#result_list tbody tr", has_text=name).inner_text().split())


def test_an_operator_adds_a_relay_and_reads_the_pool_s_health(page, make_campaign):  # noqa: F811 (fixtures)
    refusing = Sink()
    refusing.controller.handler = RefusingMailHandler(refusing)
    with refusing, PipeliningSink() as good:
        sign_in(page)

        # A relay added in the admin, with a login: the password is never shown back.
        page.goto("/admin/delivery/relay/add/")
        page.fill("#id_name", "primary")
        page.fill("#id_host", "127.0.0.1")
        page.fill("#id_port", str(good.port))
        page.select_option("#id_security", Relay.Security.NONE)
        page.fill("#id_username", "news")
        page.fill("#id_password", PASSWORD)
        page.click("[name=_save]")
        page.wait_for_selector(".messagelist .success")
        primary = Relay.objects.get(name="primary")
        assert primary.password != "" and PASSWORD not in page.content()
        # Saved with a login, it is kept without one: the sink asks for none, so clear it for the send.
        Relay.objects.filter(pk=primary.pk).update(username="", password="")

        # A second relay that refuses every session, and a group spreading the campaigns over both.
        bad = Relay.objects.create(name="refusing", host="127.0.0.1", port=refusing.port, security=Relay.Security.NONE)
        group = RelayGroup.objects.create(name="pool")
        group.relays.set([primary, bad])
        RoutingRule.objects.create(group=group, position=100)
        routing.forget_relay()

        addresses = [f"r{i}@example.com" for i in range(30)]
        campaign = make_campaign(addresses, html_body=SENDABLE_HTML)
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.FINISHED
        assert sorted(good.recipients()) == sorted(addresses)

        # The relay list: the refusing relay is down with its reply, the other up.
        page.goto("/admin/delivery/relay/")
        shot(page, "1-relays")
        assert "down (451 4.3.0), retry in" in row_of(page, "refusing")
        assert " up " in row_of(page, "primary")
        assert PASSWORD not in page.content()

        # The refusing relay's page says why it is down.
        page.goto(f"/admin/delivery/relay/{bad.pk}/change/")
        page.wait_for_selector("text=Recent replies")
        assert "in a row): 451 4.3.0" in page.inner_text("#content-main")

        # The relay's page: its recent replies, and nothing of its password.
        page.goto(f"/admin/delivery/relay/{primary.pk}/change/")
        page.wait_for_selector("text=Recent replies")
        shot(page, "2-relay")
        assert "250" in page.inner_text("#content-main")
        assert page.input_value("#id_password") == ""

        # The campaign's statistics: which relay carried how much.
        page.goto(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/")
        page.wait_for_selector("#stats-relays")
        shot(page, "3-statistics")
        assert page.locator(f'#stats-relays tr[data-relay="{primary.pk}"]').inner_text().split() == ["primary", "30", "0"]
        assert page.locator("#stats-relays tbody tr").count() == 1  # the refusing relay carried nothing
