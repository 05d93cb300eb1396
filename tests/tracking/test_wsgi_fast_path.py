"""tracking.wsgi answers the pixel and the redirect itself, exactly as Django's views would."""

import io

import pytest

from delivery import tokens
from tracking.hotpath import PIXEL
from tracking.models import Event
from tracking.wsgi import application

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_connection")]

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"



def call(path, method="GET", agent=BROWSER, query=""):
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1", "HTTP_USER_AGENT": agent, "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
    }
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)

    answer["body"] = b"".join(application(environ, start_response))
    return answer


def path_of(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def test_pixel_through_the_fast_path(alice_send):
    answer = call(path_of(tokens.open_url(alice_send.pk)))
    assert answer["status"] == "200 OK" and answer["body"] == PIXEL
    assert answer["headers"]["Content-Type"] == "image/gif" and "no-store" in answer["headers"]["Cache-Control"]
    event = Event.objects.get()
    assert (event.type, event.send_id, event.machine, event.source) == ("open", alice_send.pk, False, "pixel")


def test_click_through_the_fast_path_goes_only_to_the_stored_link(alice_send):
    answer = call(path_of(tokens.click_url(alice_send.pk, 1)), query="url=https://evil.example/")
    assert answer["status"] == "302 Found"
    assert answer["headers"]["Location"] == "https://shop.example/sale?utm=1"
    assert Event.objects.get().link_index == 1


def test_head_click_is_a_scanner(alice_send):
    answer = call(path_of(tokens.click_url(alice_send.pk, 0)), method="HEAD")
    assert answer["status"] == "302 Found" and Event.objects.get().machine is True


@pytest.mark.parametrize("mangle", [lambda t: t[:-1] + ("y" if t[-1] == "x" else "x"), lambda t: t[:8], lambda t: "zz" + t])
def test_bad_tokens_fall_through_to_djangos_404(alice_send, mangle):
    open_token = tokens.sign("open", alice_send.pk)
    click_token = tokens.sign("click", alice_send.pk, 0)
    assert call(f"/t/o/{mangle(open_token)}.gif")["status"].startswith("404")
    assert call(f"/t/c/{mangle(click_token)}")["status"].startswith("404")
    assert call(f"/t/c/{tokens.sign('click', alice_send.pk, 9)}")["status"].startswith("404")
    assert not Event.objects.exists()


def test_other_paths_are_served_by_django(alice_send):
    assert call(path_of(tokens.unsubscribe_url(alice_send.pk)))["status"] == "200 OK"
    assert call("/admin/")["status"].startswith("302")
    assert not Event.objects.exists()


def test_a_stored_link_that_is_not_http_is_not_followed(alice_send):
    from campaigns.models import CampaignLink

    CampaignLink.objects.create(campaign_id=alice_send.campaign_id, index=2, url="javascript:alert(1)")
    answer = call(path_of(tokens.click_url(alice_send.pk, 2)))
    assert answer["status"] == "400 Bad Request" and "Location" not in answer["headers"]
