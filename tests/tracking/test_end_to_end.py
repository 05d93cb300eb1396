"""A message built by the send engine, and what its recipient's actions bring back to tracking."""

import re
from email import message_from_bytes, policy

import pytest

from campaigns.models import Campaign, CampaignLink, Subscription, Suppression
from delivery.message import compile_campaign
from tests.tracking import samples
from tests.tracking.conftest import make_send
from tracking.feedback import process_message
from tracking.models import Event

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


@pytest.fixture
def built(newsletter, alice):
    campaign = Campaign.objects.create(
        name="Autumn", subject="Autumn news", from_email="news@shop.example",
        html_body='<p>Hi {{ contact.first_name }}</p><a href="https://shop.example/autumn">Autumn</a>'
                  ' <a href="mailto:help@shop.example">help</a> <a href="{{ unsubscribe_url }}">unsubscribe</a>',
    )
    campaign.lists.add(newsletter)
    send = make_send(campaign, alice)
    message = compile_campaign(campaign).build(send, alice)
    return campaign, send, message


def test_pixel_and_links_of_a_built_message_record_events(client, built):
    campaign, send, message = built
    parsed = message_from_bytes(message.data, policy=policy.default)
    html = parsed.get_body(preferencelist=("html",)).get_content()
    pixel = re.search(r'src="([^"]*/t/o/[^"]+\.gif)"', html)
    clicks = re.findall(r'href="([^"]*/t/c/[^"]+)"', html)
    assert pixel and len(clicks) == 1, html  # neither mailto nor the unsubscribe link is rewritten
    assert client.get(local(pixel.group(1)), HTTP_USER_AGENT=BROWSER).status_code == 200
    response = client.get(local(clicks[0]), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 302 and response["Location"] == "https://shop.example/autumn"
    assert CampaignLink.objects.filter(campaign=campaign, url="https://shop.example/autumn").exists()
    assert sorted(Event.objects.values_list("type", flat=True)) == ["click", "open"]


def test_list_unsubscribe_header_one_click(client, built, alice):
    _, send, message = built
    parsed = message_from_bytes(message.data, policy=policy.default)
    https_url = re.search(r"<(https?://[^>]+)>", str(parsed["List-Unsubscribe"])).group(1)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    response = client.post(local(https_url), "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert Subscription.objects.get(contact=alice, mailing_list__name="Newsletter").status == "unsubscribed"
    assert Subscription.objects.get(contact=alice, mailing_list__name="Offers").status == "confirmed"


def test_dsn_to_the_verp_return_path_suppresses_the_recipient(built):
    _, send, message = built
    dsn = samples.gmail(message.mail_from, send.email, message.message_id)
    (event,) = process_message(dsn, message.mail_from)
    assert (event.type, event.send_id) == ("bounce", send.pk)
    assert Suppression.objects.get().email == send.email
