"""The admin: template and campaign editors, preview, test sends, sending domains."""

import pytest
from django.contrib.auth.models import User

from campaigns.models import Campaign, Template
from delivery import dkim
from delivery.models import Relay, SendingDomain


@pytest.fixture
def staff(client, db):
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


CAMPAIGN_FORM = {"name": "Spring", "subject": "Hi {{ contact.first_name }}", "from_name": "Herald",
                 "from_email": "news@example.com", "reply_to": "", "html_body": "<p>Hi</p>", "text_body": "",
                 "track_opens": "on", "track_clicks": "on"}


def test_template_syntax_error_is_shown_with_its_line(staff):
    response = staff.post("/admin/campaigns/template/add/", {
        "name": "Layout", "html": "<html>\n<body>\n{{ content }}\n{% if x %}\n</body></html>", "text": ""})
    assert response.status_code == 200
    assert "Line 4:" in response.content.decode() or "Line 5:" in response.content.decode()
    assert not Template.objects.exists()


def test_template_add_form_offers_the_default_layout(staff):
    response = staff.get("/admin/campaigns/template/add/")
    assert "{{ content }}" in response.content.decode() and "unsubscribe_url" in response.content.decode()


def test_campaign_errors_are_shown_on_their_fields(staff):
    response = staff.post("/admin/campaigns/campaign/add/", CAMPAIGN_FORM | {
        "subject": "Hi {{ contact.first_name }", "html_body": "<p>a</p>\n<p>{{ ''.__class__ }}</p>",
        "from_email": "nope"})
    page = response.content.decode()
    assert response.status_code == 200
    assert "Line 1:" in page and "Line 2: access to &#x27;__class__&#x27; is not allowed" in page
    assert "Not a valid address" in page
    assert not Campaign.objects.exists()
    response = staff.post("/admin/campaigns/campaign/add/", CAMPAIGN_FORM)
    assert response.status_code == 302 and Campaign.objects.count() == 1


def test_preview_shows_html_in_a_sandboxed_iframe_text_and_headers(staff, campaign, alice):
    page = staff.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert f"/admin/campaigns/campaign/{campaign.pk}/preview/" in page and "Send test" in page
    campaign.html_body += "<p>{{ contact.attributes.shoe_size }}</p>"
    campaign.save()
    page = staff.get(f"/admin/campaigns/campaign/{campaign.pk}/preview/", {"contact": alice.pk}).content.decode()
    assert '<iframe sandbox=""' in page
    assert "srcdoc=\"&lt;html&gt;" in page, "the HTML is escaped into srcdoc, never inlined in the admin page"
    assert "Dear Alice from Oxford" in page
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in page
    assert "<code>contact.attributes.shoe_size</code>" in page


def test_send_test_page(staff, campaign, sink):
    Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security="none")
    response = staff.post(f"/admin/campaigns/campaign/{campaign.pk}/test/",
                          {"addresses": "alice@example.com, not-an-address"})
    page = response.content.decode()
    assert "accepted by 127.0.0.1" in page and "not a valid address" in page
    sink.wait_for(1, timeout=10)
    assert sink.received[0].message["Subject"] == "Hello"


def test_sent_campaigns_are_read_only(staff, campaign):
    Campaign.objects.filter(pk=campaign.pk).update(status="finished")
    page = staff.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'name="subject"' not in page


def test_sending_domain_key_generation_and_dns_record(staff):
    response = staff.post("/admin/delivery/sendingdomain/add/", {
        "domain": "Example.COM", "selector": "herald", "algorithm": dkim.ED25519, "generate_key": "on",
        "import_private_key": ""})
    assert response.status_code == 302
    row = SendingDomain.objects.get()
    assert row.domain == "example.com" and row.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    page = staff.get(f"/admin/delivery/sendingdomain/{row.pk}/change/").content.decode()
    assert "herald._domainkey.example.com" in page and f"v=DKIM1; k=ed25519; p={row.public_key}" in page
    assert "PRIVATE KEY" not in page and row.private_key.splitlines()[1] not in page


def test_sending_domain_imports_a_key_and_refuses_garbage(staff):
    pem, public = dkim.generate_key(dkim.RSA)
    response = staff.post("/admin/delivery/sendingdomain/add/", {
        "domain": "example.org", "selector": "s1", "algorithm": dkim.ED25519, "import_private_key": "garbage"})
    assert response.status_code == 200 and "not a PEM" in response.content.decode()
    staff.post("/admin/delivery/sendingdomain/add/", {
        "domain": "example.org", "selector": "s1", "algorithm": dkim.ED25519, "import_private_key": pem})
    row = SendingDomain.objects.get()
    assert row.algorithm == dkim.RSA and row.public_key == public
