"""An A/B campaign made in the admin, in headless Chromium: two variants, sent, compared, a winner chosen by hand.

The sending runs in the test's process (the engine against a loopback SMTP
sink); the browser sees what the operator sees. Screenshots go to var/artifacts.
"""

from collections import Counter
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from campaigns.models import Campaign, Contact, MailingList, Subscription
from delivery import engine, lifecycle, routing
from delivery.models import Relay, Send
from tests.operator.test_browser import browser, page  # noqa: F401 (fixtures)
from tracking import events
from tracking.models import Event

pytestmark = pytest.mark.django_db(transaction=True)

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "artifacts"


def shot(tab, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"ab-{name}.png"), full_page=True)


def test_an_operator_tests_two_subjects_and_picks_the_winner(page, live_server, sink, redis_client):  # noqa: F811
    User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42")
    Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    readers = MailingList.objects.create(name="Readers")
    for i in range(40):
        contact = Contact.objects.create(email=f"reader{i:02d}@example.com", first_name=f"R{i}")
        Subscription.objects.create(contact=contact, mailing_list=readers)

    page.goto("/admin/login/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "a long passphrase 42")
    page.click("input[type=submit]")

    page.goto("/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Autumn sale")
    page.select_option("#id_lists_from", label="Readers")
    page.click("#id_lists_add")
    page.fill("#id_subject", "Autumn sale")
    page.fill("#id_from_email", "news@herald.example")
    page.fill("#id_html_body", "<p>Hello {{ contact.first_name }}</p>")
    page.fill("#id_test_share", "50")
    page.select_option("#id_winner_metric", "manual")
    for n, subject in ((1, "Autumn sale: 20 % off"), (2, "Your autumn discount inside")):
        page.locator("a.add-row:visible").first.click()  # the theme's "add another" link
        page.fill(f"#id_variants-{n - 1}-number", str(n))
        page.fill(f"#id_variants-{n - 1}-subject", subject)
    shot(page, "1-campaign-form")
    page.click("[name=_save]")
    page.wait_for_selector(".messagelist .success")
    campaign = Campaign.objects.get(name="Autumn sale")
    assert sorted(campaign.variants.values_list("number", "subject")) == [
        (1, "Autumn sale: 20 % off"), (2, "Your autumn discount inside")]

    page.goto(reverse("delivery-admin:campaign-send", args=[campaign.pk]))
    assert "split evenly between variants A, B" in page.inner_text("#send-variants")
    lifecycle.start_campaign(campaign.pk)  # what "Yes, send now" hands to a worker
    engine.send_batch(list(Send.objects.filter(campaign=campaign, parked=False).values_list("id", flat=True)))
    tested = list(Send.objects.filter(campaign=campaign, variant__isnull=False))
    assert len(sink.recipients()) == len(tested) and 10 <= len(tested) <= 30
    for number, opened in ((1, 2), (2, 3)):
        for send in [s for s in tested if s.variant == number][:opened]:
            events.record(Event.Type.OPEN, send, machine=False)

    page.goto(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/")
    table = page.locator("#stats-variants")
    assert table.locator("tr[data-variant=A]").count() == 1 and table.locator("tr[data-variant=B]").count() == 1
    assert "not significant" in page.inner_text("#stats-variants-summary")
    shot(page, "2-statistics")

    page.select_option("#choose-winner select[name=variant]", "2")
    page.click("#choose-winner input[type=submit]")
    page.wait_for_selector("#stats-variants-winner")
    assert "variant B" in page.inner_text("#stats-variants-winner")
    shot(page, "3-winner")
    engine.send_batch(list(Send.objects.filter(campaign=campaign, status="queued", parked=False)
                           .values_list("id", flat=True)))
    assert Counter(sink.recipients()) == Counter(Contact.objects.values_list("email", flat=True))
