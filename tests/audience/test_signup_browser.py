"""Signing up in a real browser (headless Chromium): the form, the mail at the sink, the confirmation page.

Live server, a real Celery worker on the test database, an aiosmtpd sink behind
a relay; the browser is the system's chromium, driven by Playwright.
"""

import os
import quopri
import time
from pathlib import Path

import pytest

from audience.models import SignupForm
from campaigns.models import Contact, MailingList, Subscription
from delivery import routing
from delivery.models import Relay
from tests.audience.signup_support import confirm_link
from tests.operator.test_browser import browser, page  # noqa: F401 - fixtures
from tests.support.smtp import Sink

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def sink_relay():
    with Sink() as sink:
        Relay.objects.create(name="loopback", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
        routing.forget_relay()
        yield sink
        routing.forget_relay()


def test_sign_up_confirm_from_the_mail_and_the_evidence_is_kept(page, live_server, sink_relay, tmp_path,  # noqa: F811
                                                                redis_client, settings):
    from tests.delivery.workers import Worker

    settings.HERALD_BASE_URL = live_server.url
    weekly = MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)
    form = SignupForm.objects.create(name="Weekly news", slug="weekly", consent_text="Yes, weekly news please.",
                                     from_email="news@shop.example", fields=[{"name": "first_name", "label": "First name"}])
    form.lists.add(weekly)
    # The worker writes the confirmation mail, so it is the one that must know where Herald is served.
    worker = Worker("signup-browser", tmp_path, HERALD_BASE_URL=live_server.url).wait_ready()
    try:
        page.goto("/s/weekly/")
        served = time.monotonic()
        page.fill("#f-email", "ann@example.org")
        page.fill("#f-first_name", "Ann")
        # A person takes a moment to fill in a form; a post sooner than this is refused as a bot's.
        time.sleep(max(0.0, settings.HERALD_SIGNUP_MIN_SECONDS + 0.5 - (time.monotonic() - served)))
        page.click("button[type=submit]")
        page.wait_for_selector("text=Thank you")
        sink_relay.wait_for(1, timeout=60)
    finally:
        worker.stop()
    mail = sink_relay.received[0]
    assert mail.rcpt_tos == ["ann@example.org"]
    link = confirm_link(quopri.decodestring(mail.data.split(b"\r\n\r\n", 1)[1]).decode())
    assert Subscription.objects.get().status == Subscription.Status.UNCONFIRMED
    page.goto(link)
    page.wait_for_selector("text=Confirm subscription")
    assert Subscription.objects.get().status == Subscription.Status.UNCONFIRMED  # the page alone confirms nothing
    page.click("button[type=submit]")
    page.wait_for_selector("text=your subscription is confirmed")
    sub = Subscription.objects.get()
    assert sub.status == Subscription.Status.CONFIRMED and sub.confirmed_at is not None
    assert sub.source == "form" and sub.source_detail == "form weekly v1" and sub.consent_text == "Yes, weekly news please."
    assert sub.consent_ip == "127.0.0.1" and "Chrome" in sub.consent_user_agent
    assert Contact.objects.get().first_name == "Ann"
    assert settings.HERALD_SIGNUP_MIN_SECONDS == 2  # the shipped default is what this test went through


def test_the_preference_centre_in_a_browser_joins_leaves_renames_and_pauses(page, live_server):  # noqa: F811
    from delivery import tokens

    weekly = MailingList.objects.create(name="Weekly", public=True)
    MailingList.objects.create(name="Offers", public=True)
    MailingList.objects.create(name="Staff only")  # not public: never offered here
    ann = Contact.objects.create(email="ann@example.org", first_name="Ann")
    Subscription.objects.create(contact=ann, mailing_list=weekly, status=Subscription.Status.CONFIRMED)

    page.goto(f"/s/p/{tokens.preferences_token(contact_id=ann.pk)}/")
    offered = [t.strip() for t in page.locator("fieldset label").all_inner_texts()]
    assert offered == ["Offers", "Weekly"]
    page.check("fieldset label:has-text('Offers') input")
    page.uncheck("fieldset label:has-text('Weekly') input")
    page.fill("#p-first", "Anna")
    page.select_option("#p-pause", "30")
    page.click("form >> text=Save")
    page.wait_for_selector("text=Your preferences are saved.")
    artifacts = Path(os.environ.get("HERALD_TEST_ARTIFACTS", "var/test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "preference-centre.png"), full_page=True)

    ann.refresh_from_db()
    assert ann.first_name == "Anna" and ann.paused_until is not None
    assert dict(Subscription.objects.filter(contact=ann).values_list("mailing_list__name", "status")) == {
        "Weekly": "unsubscribed", "Offers": "confirmed"}
    # The page shows what was stored.
    assert page.is_checked("fieldset label:has-text('Offers') input")
    assert not page.is_checked("fieldset label:has-text('Weekly') input")
