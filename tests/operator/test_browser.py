"""The whole job in the admin, in headless Chromium: log in, import, write, test, send, watch, read the statistics.

Runs against pytest-django's live server, a real Celery worker on the test
database, and an aiosmtpd sink behind a relay. The browser is the system's
chromium, driven by Playwright; nothing is downloaded.
"""

import os
import re

import pytest
from django.contrib.auth.models import User
from django.db import connections

from campaigns.models import Campaign, Contact
from delivery import routing
from delivery.models import Relay
from tests.delivery.workers import Worker
from tests.support.programs import program

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the test's own
    # ORM calls are still plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = os.environ.get("HERALD_CHROMIUM") or program("chromium")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    # Only the live server: a page that tries to reach anything else fails at once.
    context.route(re.compile(r"^(?!" + re.escape(live_server.url) + ")"), lambda route: route.abort())
    context.set_default_timeout(20_000)
    tab = context.new_page()
    yield tab
    context.close()
    # The test's queries ran beside Playwright's event loop, on a connection of
    # their own that the database teardown would not know about.
    connections.close_all()


def sign_in(page, username="olga", password="a long passphrase 42"):
    """An operator, created as a superuser, signs in through the admin's form and lands on the dashboard."""
    User.objects.create_superuser(username, f"{username}@herald.example", password)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#herald-dashboard")


@pytest.fixture
def worker(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    w = Worker("browser", tmp_path, MEDIA_ROOT=tmp_path / "media").wait_ready()
    yield w
    w.stop()


def test_an_operator_does_the_whole_job_in_the_admin(page, live_server, worker, sink, redis_client, tmp_path):
    User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42")
    Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    csv_file = tmp_path / "readers.csv"
    csv_file.write_text("email,first_name,city\nann@example.com,Ann,Lisbon\nbob@example.org,Bob,Porto\n"
                        "cy@example.net,Cy,Faro\nnot an address,Dee,Braga\n")

    # Log in.
    page.goto("/admin/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "a long passphrase 42")
    page.click("input[type=submit]")
    page.wait_for_selector("#herald-dashboard")

    # Import: upload, check the preview, run, watch it finish.
    page.click("#dash-import")
    page.set_input_files("#id_file", str(csv_file))
    page.fill("#id_new_list", "Browser readers")
    page.click("#import-upload input[type=submit]")
    page.wait_for_selector("#import-mapping .target")
    assert [t.strip() for t in page.locator("#import-mapping .target").all_inner_texts()] == [
        "email", "first name", "attribute “city”"]
    # The file says "city"; the operator keeps it as "town" instead, and sees the preview say so.
    page.fill("#name-2", "town")
    page.click("#import-update")
    page.wait_for_selector("#import-mapping .target >> text=attribute “town”")
    assert "not an address" in page.inner_text("#import-rows")
    page.click("#import-run")
    page.wait_for_selector("#import-done:not([hidden])")
    assert page.inner_text("#import-counts").startswith("created 3")
    assert Contact.objects.count() == 3
    assert Contact.objects.get(email="ann@example.com").attributes == {"town": "Lisbon"}

    # Write the campaign.
    page.goto("/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Browser news")
    page.fill("#id_subject", "Hello {{ contact.first_name }}")
    page.fill("#id_from_email", "news@herald.example")
    page.fill("#id_html_body", "<p>Hi {{ contact.first_name }} in {{ contact.attributes.town }}</p>"
                               "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>")
    page.select_option("#id_lists_from", label="Browser readers")
    page.click("#id_lists_add")
    page.click("[name=_continue]")
    page.wait_for_selector("#herald-operator")
    campaign = Campaign.objects.get(name="Browser news")

    # Send a test to the operator.
    page.click("text=Send test")
    page.fill("textarea[name=addresses]", "olga@herald.example")
    page.click("form input[type=submit]")
    sink.wait_for(1, timeout=30)
    assert sink.recipients() == ["olga@herald.example"]

    # Send it: the confirmation counts the recipients, then the bar fills by itself.
    page.goto(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    page.click("#herald-send")
    page.wait_for_url("**/send/")
    assert "3" in page.inner_text("#content strong")
    page.click("input[type=submit].default")
    page.wait_for_selector("#herald-bar")
    # The page reloads itself when the campaign finishes; wait for the refreshed counts.
    page.wait_for_function("""() => {
        const status = document.getElementById('herald-status'), percent = document.getElementById('herald-percent');
        return status && percent && status.textContent === 'finished' && percent.textContent === '100%';
    }""", timeout=60_000)
    assert "sent 3" in page.inner_text("#herald-counts")
    assert sorted(sink.recipients()[1:]) == ["ann@example.com", "bob@example.org", "cy@example.net"]

    # Read the statistics.
    page.click("#herald-stats")
    page.wait_for_selector("text=Statistics: Browser news")


def test_the_preview_of_the_starter_layout_shows_a_personal_text_part(page, live_server):
    """The layout the admin offers on "Add template", previewed: the text part greets the contact by name,
    takes the contact's branch of an if/else, and links to the same unsubscribe page as the HTML part."""
    from campaigns.models import Template
    from delivery import tokens

    User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42")
    ann = Contact.objects.create(email="ann@example.com", first_name="Ann", attributes={"vip": True})

    page.goto("/admin/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "a long passphrase 42")
    page.click("input[type=submit]")
    page.wait_for_selector("#herald-dashboard")

    # Save the starter layout exactly as the admin offers it.
    page.goto("/admin/campaigns/template/add/")
    assert "unsubscribe_url" in page.input_value("#id_html")
    page.fill("#id_name", "Starter")
    page.click("[name=_save]")
    page.wait_for_selector(".messagelist .success")
    assert "cannot show" not in page.inner_text("#content-main, .messagelist")
    layout = Template.objects.get(name="Starter")

    # A campaign on it, written in the admin, with no text body of its own.
    page.goto("/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Starter news")
    page.fill("#id_subject", "News for {{ contact.first_name }}")
    page.fill("#id_from_email", "news@herald.example")
    page.select_option("#id_template", value=str(layout.pk))
    page.fill("#id_html_body", "<h1>Hi {{ contact.first_name }}!</h1>\n{% if contact.attributes.vip %}"
                               "<p>Thanks for being a VIP.</p>{% else %}<p>Upgrade today.</p>{% endif %}")
    page.click("[name=_continue]")
    page.wait_for_selector("#herald-operator")
    campaign = Campaign.objects.get(name="Starter news")

    page.goto(f"/admin/campaigns/campaign/{campaign.pk}/preview/?contact={ann.pk}")
    text = page.inner_text("#text-part")
    assert "# Hi Ann!" in text
    assert "Thanks for being a VIP." in text and "Upgrade today." not in text
    assert "because ann@example.com subscribed" in text
    unsubscribe = tokens.unsubscribe_url(0)
    assert f"[Unsubscribe]({unsubscribe})" in text
    assert "]()" not in text
    # The HTML part, in its sandboxed frame, links to the same unsubscribe page.
    frame = page.frame_locator("iframe[title='HTML part']")
    assert frame.locator("a", has_text="Unsubscribe").get_attribute("href") == unsubscribe
    assert page.locator("#text-warnings").count() == 0
