"""The open pixel and the click redirect: signed tokens, events, machine detection."""

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import tokens
from tests.tracking.conftest import make_send
from tracking.models import Event
from tracking.views import PIXEL

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
APPLE_PROXY = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"



def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def test_open_pixel_answers_an_uncached_gif_and_records_a_human_open(client, alice_send):
    response = client.get(local(tokens.open_url(alice_send.pk)), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"
    assert response.content == PIXEL
    assert "no-cache" in response["Cache-Control"] and "no-store" in response["Cache-Control"]
    event = Event.objects.get(type=Event.Type.OPEN)
    assert (event.send_id, event.campaign_id, event.contact_id) == (alice_send.pk, alice_send.campaign_id, alice_send.contact_id)
    assert event.email == "alice@example.org" and event.machine is False and event.user_agent == BROWSER


def test_apple_privacy_proxy_open_is_recorded_as_machine(client, alice_send):
    client.get(local(tokens.open_url(alice_send.pk)), HTTP_USER_AGENT=APPLE_PROXY)
    assert Event.objects.get(type=Event.Type.OPEN).machine is True


def test_open_seconds_after_delivery_is_a_prefetch(client, campaign, alice, monkeypatch):
    # A wide window keeps the test independent of how fast this machine answers.
    monkeypatch.setattr("tracking.hotpath.SECONDS_AFTER_SENT", 600)
    send = make_send(campaign, alice, sent_ago=timedelta(seconds=1))
    client.get(local(tokens.open_url(send.pk)), HTTP_USER_AGENT=BROWSER)
    assert Event.objects.get(type=Event.Type.OPEN).machine is True


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("a" if t[-1] != "a" else "b"),  # tampered MAC
    lambda t: t[:-4],  # truncated
    lambda t: "9" + t,  # another send id under the same MAC
    lambda t: "",
])
def test_bad_open_token_is_404_and_records_nothing(client, alice_send, mangle):
    token = tokens.sign("open", alice_send.pk)
    response = client.get(f"/t/o/{mangle(token)}.gif", HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 404
    assert not Event.objects.exists()


def test_token_of_another_purpose_is_refused(client, alice_send):
    click_token = tokens.sign("open", alice_send.pk, 0)
    assert client.get(f"/t/c/{click_token}").status_code == 404
    bounce_token = tokens.sign("bounce", alice_send.pk)
    assert client.get(f"/t/o/{bounce_token}.gif").status_code == 404
    assert not Event.objects.exists()


def test_valid_token_of_a_deleted_send_is_404(client, alice_send):
    url = local(tokens.open_url(alice_send.pk))
    alice_send.delete()
    assert client.get(url).status_code == 404
    assert not Event.objects.exists()


def test_click_redirects_to_the_stored_link_and_records_it(client, alice_send):
    response = client.get(local(tokens.click_url(alice_send.pk, 1)), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example/sale?utm=1"
    event = Event.objects.get(type=Event.Type.CLICK)
    assert (event.link_index, event.url, event.machine) == (1, "https://shop.example/sale?utm=1", False)


def test_click_ignores_any_target_in_the_request(client, alice_send):
    url = local(tokens.click_url(alice_send.pk, 0)) + "?url=https://evil.example/&next=https://evil.example/"
    response = client.get(url, HTTP_USER_AGENT=BROWSER)
    assert response["Location"] == "https://shop.example/spring"


def test_click_on_an_index_the_campaign_lacks_is_404(client, alice_send):
    response = client.get(local(tokens.click_url(alice_send.pk, 7)), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 404
    assert not Event.objects.exists()


def test_click_index_of_another_campaign_does_not_leak_its_link(client, alice_send, bob):
    from campaigns.models import Campaign, CampaignLink

    other = Campaign.objects.create(name="Other", subject="x", from_email="x@shop.example")
    CampaignLink.objects.create(campaign=other, index=5, url="https://other.example/secret")
    response = client.get(local(tokens.click_url(alice_send.pk, 5)))
    assert response.status_code == 404


def test_head_request_is_a_scanner_click(client, alice_send):
    response = client.head(local(tokens.click_url(alice_send.pk, 0)), HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 302
    assert Event.objects.get(type=Event.Type.CLICK).machine is True


def test_several_links_within_a_second_are_all_flagged_as_a_scanner(client, alice_send, monkeypatch):
    monkeypatch.setattr("tracking.hotpath.CLICK_BURST_SECONDS", 600)  # however slow this machine is today
    client.get(local(tokens.click_url(alice_send.pk, 0)), HTTP_USER_AGENT=BROWSER)
    client.get(local(tokens.click_url(alice_send.pk, 1)), HTTP_USER_AGENT=BROWSER)
    assert list(Event.objects.filter(type=Event.Type.CLICK).values_list("machine", flat=True)) == [True, True]


def test_repeated_clicks_on_one_link_by_a_person_stay_human(client, alice_send):
    client.get(local(tokens.click_url(alice_send.pk, 0)), HTTP_USER_AGENT=BROWSER)
    client.get(local(tokens.click_url(alice_send.pk, 0)), HTTP_USER_AGENT=BROWSER)
    assert not Event.objects.filter(machine=True).exists()


def test_click_right_after_delivery_is_a_scanner(client, campaign, alice):
    send = make_send(campaign, alice, sent_ago=None, status="sending")
    client.get(local(tokens.click_url(send.pk, 0)), HTTP_USER_AGENT=BROWSER)
    assert Event.objects.get().machine is True
    assert Event.objects.get().created_at <= timezone.now()


def test_view_in_browser_shows_the_recipients_html(client, alice_send):
    response = client.get(local(tokens.view_url(alice_send.pk)))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"Hello Alice" in response.content
    assert client.get(local(tokens.view_url(alice_send.pk))[:-3]).status_code == 404
