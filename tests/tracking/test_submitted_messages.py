"""Messages submitted over SMTP (no campaign): their tracked links redirect, and a suppressed recipient leaves an Event."""

import re
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from django.utils import timezone

from campaigns.models import Suppression
from delivery import tokens
from delivery.models import Send
from submission.build import build_for_send
from submission.models import OutboundMessage
from submission.store import Accepted, announce_skipped, store_batch
from tests.submission.conftest import make_credential
from tests.tracking.test_wsgi_fast_path import call
from tracking.models import Event

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_connection")]

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
RECEIPT = (
    b"From: Shop <shop@example.com>\r\nTo: bob@dest.test\r\nSubject: Your receipt\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee https://shop.example.com/order/1\r\n"
    b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><p><a href=\"https://shop.example.com/order/1?a=1&amp;b=2\">Order</a>"
    b" <a href=\"https://shop.example.com/help\">Help</a></p></body></html>\r\n--b1--\r\n"
)


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


@pytest.fixture
def receipt_send():
    """A receipt submitted by an application whose credential enables tracking, sent an hour ago."""
    credential = make_credential(username="shop", tracking=True)
    outbound = OutboundMessage.objects.create(
        credential=credential, mail_from="shop@example.com", from_header="Shop <shop@example.com>",
        message_id="<receipt-1@example.com>", raw=RECEIPT, size=len(RECEIPT), recipients=1,
    )
    return Send.objects.create(email="bob@dest.test", domain="dest.test", outbound_id=outbound.pk,
                               status=Send.Status.SENT, sent_at=timezone.now() - timedelta(hours=1))


def click_links(send):
    """The rewritten links of the HTML part, as the recipient receives them."""
    message = message_from_bytes(build_for_send(send).data, policy=policy.default)
    html = message.get_body(preferencelist=("html",)).get_content()
    return re.findall(r'href="([^"]+)"', html)


def test_a_click_in_a_submitted_message_redirects_to_its_own_link(client, receipt_send):
    links = click_links(receipt_send)
    assert links == [tokens.click_url(receipt_send.pk, 0), tokens.click_url(receipt_send.pk, 1)]
    response = client.get(local(links[0]), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example.com/order/1?a=1&b=2"
    event = Event.objects.get()
    assert (event.type, event.send_id, event.campaign_id, event.email) == ("click", receipt_send.pk, None, "bob@dest.test")
    assert (event.url, event.link_index, event.machine) == ("https://shop.example.com/order/1?a=1&b=2", 0, False)


def test_the_fast_path_redirects_submitted_links_too(receipt_send):
    answer = call(local(click_links(receipt_send)[1]))
    assert answer["status"] == "302 Found" and answer["headers"]["Location"] == "https://shop.example.com/help"
    assert Event.objects.get().url == "https://shop.example.com/help"


def test_an_index_beyond_the_message_links_is_404_and_records_nothing(client, receipt_send):
    response = client.get(local(tokens.click_url(receipt_send.pk, 2)), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 404
    assert not Event.objects.exists()


def test_the_fast_path_answers_404_for_an_index_beyond_the_links(receipt_send):
    assert call(local(tokens.click_url(receipt_send.pk, 2)))["status"].startswith("404")
    assert not Event.objects.exists()


def test_a_forged_token_or_a_target_in_the_request_is_ignored(client, receipt_send):
    forged = local(tokens.click_url(receipt_send.pk, 0))[:-1] + "x"
    assert client.get(forged).status_code == 404
    assert client.get(local(tokens.click_url(receipt_send.pk + 1, 0))).status_code == 404  # no such send
    response = client.get(local(tokens.click_url(receipt_send.pk, 1)) + "?url=https://evil.example/")
    assert response["Location"] == "https://shop.example.com/help"
    assert Event.objects.count() == 1


def test_a_suppressed_recipient_of_a_submitted_message_gets_a_rejected_event(db):
    credential = make_credential(username="shop")
    Suppression.objects.create(email="gone@dest.test", reason=Suppression.Reason.HARD_BOUNCE)
    item = Accepted(credential.pk, "shop@example.com", ["bob@dest.test", "Gone@dest.test"], b"Subject: x\r\n\r\nx\r\n")
    queued = store_batch([item])
    skipped = Send.objects.get(email="Gone@dest.test")
    assert skipped.status == Send.Status.SKIPPED and skipped.pk not in queued
    event = Event.objects.get()
    assert (event.type, event.send_id, event.email) == ("rejected", skipped.pk, "Gone@dest.test")
    assert "suppressed (hard_bounce)" in event.diagnostic
    # Announced again (a retried hand-off): still one Event.
    announce_skipped([{"id": skipped.pk, "campaign_id": None, "contact_id": None, "email": skipped.email,
                       "smtp_reply": skipped.smtp_reply, "outbound_id": skipped.outbound_id}])
    assert Event.objects.count() == 1
