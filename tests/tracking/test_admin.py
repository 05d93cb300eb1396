"""The admin: events, suppressions with CSV import/export, and campaign statistics with charts."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from campaigns.models import Suppression
from delivery import tokens
from tracking.models import Event

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def test_campaign_statistics_page_shows_figures_and_charts(admin_client, client, campaign, alice_send, bob_send):
    client.get(local(tokens.open_url(alice_send.pk)), HTTP_USER_AGENT=BROWSER)
    client.get(local(tokens.click_url(alice_send.pk, 0)), HTTP_USER_AGENT=BROWSER)
    listing = admin_client.get("/admin/tracking/campaignstatistics/")
    assert listing.status_code == 200 and b"Spring" in listing.content
    page = admin_client.get(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Statistics: Spring" in html
    assert "Opened (people)" in html and "50.00 % of delivered" in html
    assert "<svg" in html and "<rect" in html
    assert "https://shop.example/spring" in html and "example.net" in html


def test_statistics_need_staff(client, campaign):
    response = client.get(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_event_admin_lists_events_read_only(admin_client, alice_send):
    event = Event.objects.create(type="bounce", send=alice_send, email=alice_send.email, status="5.1.1")
    assert b"alice@example.org" in admin_client.get("/admin/tracking/event/").content
    page = admin_client.get(f"/admin/tracking/event/{event.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert admin_client.get("/admin/tracking/event/add/").status_code == 403


def test_suppression_admin_imports_and_exports_csv(admin_client):
    page = admin_client.get("/admin/campaigns/suppression/")
    assert b"Import CSV" in page.content
    upload = SimpleUploadedFile("s.csv", b"eve@example.com\nnot an address\nfrank@example.com,complaint,fbl\n")
    response = admin_client.post("/admin/campaigns/suppression/import/", {"file": upload}, follow=True)
    text = response.content.decode()
    assert "2 address(es) suppressed" in text and "row 2, column &#x27;email&#x27;, value &#x27;not an address&#x27;" in text
    assert Suppression.objects.get(email_key="frank@example.com").reason == "complaint"
    exported = admin_client.get("/admin/campaigns/suppression/export/").content.decode().splitlines()
    assert exported[0] == "email,reason,detail,created_at" and len(exported) == 3


def test_suppression_admin_imports_a_file_with_cr_line_ends(admin_client):
    upload = SimpleUploadedFile("mac.csv", b"email;reason\rann@example.com;complaint\rbob@example.com;\r")
    response = admin_client.post("/admin/campaigns/suppression/import/", {"file": upload}, follow=True)
    assert response.status_code == 200 and "2 address(es) suppressed" in response.content.decode()
    assert Suppression.objects.get(email_key="ann@example.com").reason == "complaint"


def test_suppression_admin_refuses_a_file_over_the_limit_or_not_text_and_keeps_the_list(admin_client, settings):
    Suppression.objects.create(email="kept@example.com")
    settings.HERALD_IMPORT_MAX_BYTES = 20
    upload = SimpleUploadedFile("big.csv", b"email\nann@example.com\nbob@example.com\n")
    response = admin_client.post("/admin/campaigns/suppression/import/", {"file": upload})
    assert response.status_code == 200
    assert "over the import limit of 20 bytes (HERALD_IMPORT_MAX_BYTES)" in response.content.decode()
    settings.HERALD_IMPORT_MAX_BYTES = 1000
    upload = SimpleUploadedFile("bin.csv", b"email\nann@example.com\n\x00\x01\x02")
    response = admin_client.post("/admin/campaigns/suppression/import/", {"file": upload})
    assert response.status_code == 200 and "binary data" in response.content.decode()
    assert list(Suppression.objects.values_list("email", flat=True)) == ["kept@example.com"]


def test_suppression_added_in_the_admin_gets_its_key(admin_client):
    admin_client.post("/admin/campaigns/suppression/add/", {"email": " Gina@Example.com ", "reason": "manual", "detail": ""})
    assert Suppression.objects.get().email_key == "gina@example.com"
