"""Authoring in headless Chromium: a template from the gallery in MJML, previewed live at both widths.

Screenshots go to var/artifacts/browser/ (gitignored; HERALD_TEST_ARTIFACTS moves it).
"""

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from campaigns.models import Contact, Template
from tests.operator.test_browser import browser, page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ARTIFACTS = Path(os.environ.get("HERALD_TEST_ARTIFACTS") or Path(settings.BASE_DIR) / "var" / "artifacts" / "browser")


def shot(page, name):  # noqa: F811 - the fixture's value
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def test_a_template_from_the_gallery_in_mjml_previews_live_at_both_widths(page, live_server):  # noqa: F811
    User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42")
    Contact.objects.create(email="ann@example.com", first_name="Ann")
    page.set_viewport_size({"width": 1680, "height": 1050})
    page.goto("/admin/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "a long passphrase 42")
    page.click("input[type=submit]")
    page.wait_for_selector("#herald-dashboard")

    # The gallery shows each starter rendered; the newsletter is MJML.
    page.goto("/admin/campaigns/template/add/")
    page.click("text=the gallery, with previews")
    page.wait_for_selector("#starter-letter")
    assert page.locator(".herald-starter iframe").count() == 4
    shot(page, "authoring-1-gallery")
    page.click("#starter-newsletter a.button")
    assert page.input_value("#id_format") == "mjml"
    assert "<mj-body" in page.input_value("#id_html")

    # The preview renders beside the editor, for the contact picked.
    desktop = page.frame_locator("#herald-live-desktop")
    page.fill("#herald-live-contact", "ann@example.com")
    page.dispatch_event("#herald-live-contact", "change")
    desktop.get_by_text("News and notes for Ann").wait_for()
    box = page.locator("#herald-live").bounding_box()
    editor = page.locator("#id_html").bounding_box()
    assert box["x"] > editor["x"] + editor["width"] - 1  # beside, not below
    shot(page, "authoring-2-preview-desktop")

    # Typing refreshes it (debounced): the masthead follows the source.
    source = page.input_value("#id_html").replace("The Monthly Herald", "The Weekly Herald")
    page.fill("#id_html", source)
    desktop.get_by_text("The Weekly Herald").wait_for()

    # At phone width the two columns stack: the second starts below the first.
    page.click(".herald-tab[data-show=mobile]")
    mobile = page.frame_locator("#herald-live-mobile")
    assert page.locator("#herald-live-mobile").bounding_box()["width"] == 375
    first = mobile.get_by_text("Also this month").bounding_box()
    second = mobile.get_by_text("From the team").bounding_box()
    assert second["y"] > first["y"] + first["height"]
    shot(page, "authoring-3-preview-mobile")

    # The text part and the headers, for the same contact.
    page.click(".herald-tab[data-show=text]")
    text = page.inner_text("#herald-live-text")
    assert "The Weekly Herald" in text and "[Unsubscribe](" in text and "[Email preferences](" in text
    page.click(".herald-tab[data-show=headers]")
    assert "List-Unsubscribe:" in page.inner_text("#herald-live-headers")

    # A typo names the element and its line; fixing it brings the preview back.
    page.fill("#id_html", source.replace("<mj-column>", "<mj-colum>", 1))
    page.wait_for_selector("#herald-live-errors:not([hidden])")
    assert "<mj-colum> is not an MJML element" in page.inner_text("#herald-live-errors")
    assert "line " in page.inner_text("#herald-live-errors")
    page.fill("#id_html", source)
    page.wait_for_selector("#herald-live-errors", state="hidden")

    page.click("[name=_save]")
    page.wait_for_selector(".messagelist .success")
    saved = Template.objects.get(name="Newsletter")
    assert saved.format == "mjml" and "The Weekly Herald" in saved.html

    # A campaign on it: the body previews inside the template as it is typed, then the pre-send check.
    page.goto("/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Weekly news")
    page.fill("#id_subject", "FREE!!! News for {{ contact.first_name }}")
    page.fill("#id_from_email", "news@herald.example")
    page.select_option("#id_template", value=str(saved.pk))
    page.fill("#id_html_body", "<h2>Spring, {{ contact.first_name }}</h2><p>Our <a href=\"http://example.com/\">"
                               "spring range</a> is in.</p>")
    page.fill("#herald-live-contact", "ann@example.com")
    page.dispatch_event("#herald-live-contact", "change")
    page.frame_locator("#herald-live-desktop").get_by_text("Spring, Ann").wait_for()
    shot(page, "authoring-4-campaign-preview")
    page.click("[name=_continue]")
    page.wait_for_selector("#herald-presend")
    checks = page.inner_text("#herald-presend")
    assert "plain http" in checks and "spam filters" in checks and "Blocks the send" not in checks
    page.locator("#herald-presend").scroll_into_view_if_needed()
    shot(page, "authoring-5-presend-check")
