"""In headless Chromium: build a two-group segment with the rule builder (watching its count), aim a campaign at
it, confirm the count on the send page and send it through a real worker to the SMTP sink."""

import pytest
from django.contrib.auth.models import User

from campaigns.models import Contact, MailingList, Segment, Subscription
from delivery import routing
from delivery.models import Relay
from tests.operator.test_browser import browser, page, worker  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def set_condition(row, key, value):
    row.locator(".seg-type").select_option("attribute")
    row.locator(".seg-key").fill(key)
    row.locator(".seg-value").fill(value)


def test_a_two_group_segment_built_in_the_admin_gets_the_campaign(page, live_server, worker, sink, redis_client):  # noqa: F811
    User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42")
    Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    readers = MailingList.objects.create(name="Readers")
    for name, country, plan in [("ann", "DE", "gold"), ("bob", "DE", "free"), ("cy", "FR", "gold"), ("dee", "US", "free")]:
        contact = Contact.objects.create(email=f"{name}@example.com", first_name=name.title(),
                                         attributes={"country": country, "plan": plan})
        Subscription.objects.create(contact=contact, mailing_list=readers)

    page.goto("/admin/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "a long passphrase 42")
    page.click("input[type=submit]")
    page.wait_for_selector("#herald-dashboard")

    # Germans or gold customers (any of two), and none of those on the free plan.
    page.goto("/admin/campaigns/segment/add/")
    # The form fits the window: nothing to scroll sideways for (a fixed-width description box once made it so).
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.fill("#id_name", "German or gold, paying")
    add_group = page.locator("#segment-builder > .seg-group > div > button.seg-add-group")
    add_group.click()
    first = page.locator("#segment-builder > .seg-group > .seg-group").nth(0)
    first.locator(":scope > div > button.seg-add-condition").click()
    first.locator(":scope > div > button.seg-add-condition").click()
    set_condition(first.locator(".seg-condition").nth(0), "country", "DE")
    set_condition(first.locator(".seg-condition").nth(1), "plan", "gold")
    page.wait_for_function("document.getElementById('segment-count').textContent === '3 matching contacts'")
    add_group.click()
    second = page.locator("#segment-builder > .seg-group > .seg-group").nth(1)
    second.locator(":scope > div > select.seg-match").select_option("none")
    second.locator(":scope > div > button.seg-add-condition").click()
    set_condition(second.locator(".seg-condition").nth(0), "plan", "free")
    page.wait_for_function("document.getElementById('segment-count').textContent === '2 matching contacts'")
    assert page.inner_text("#segment-sample").split("\n") == ["ann@example.com — Ann", "cy@example.com — Cy"]
    page.click("[name=_save]")
    page.wait_for_selector(".messagelist .success")
    segment = Segment.objects.get(name="German or gold, paying")
    assert [g["match"] for g in segment.rules["rules"]] == ["any", "none"]

    # A campaign aimed at it, sent from the confirmation page.
    page.goto("/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Paying news")
    page.fill("#id_subject", "Hello {{ contact.first_name }}")
    page.fill("#id_from_email", "news@herald.example")
    page.fill("#id_html_body", "<p>Hi {{ contact.first_name }}</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>")
    page.select_option("#id_segments_from", label="German or gold, paying")
    page.click("#id_segments_add")
    page.click("[name=_continue]")
    page.wait_for_selector("#herald-operator")
    page.click("#herald-send")
    page.wait_for_url("**/send/")
    assert page.inner_text("#content strong") == "2"
    page.click("input[type=submit].default")
    sink.wait_for(2, timeout=60)
    page.wait_for_function("""() => {
        const status = document.getElementById('herald-status'), percent = document.getElementById('herald-percent');
        return status && percent && status.textContent === 'finished' && percent.textContent === '100%';
    }""", timeout=60_000)
    assert sorted(sink.recipients()) == ["ann@example.com", "cy@example.com"]
