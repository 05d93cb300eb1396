"""The live preview beside the editor: authenticated, CSRF-protected, rendered for the contact picked."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from campaigns import gallery
from campaigns.models import Template

pytestmark = pytest.mark.django_db

TEMPLATE_URL = "/admin/campaigns/template/live-preview/"
CAMPAIGN_URL = "/admin/campaigns/campaign/live-preview/"


@pytest.fixture
def olga(db):
    return User.objects.create_superuser("olga", "olga@example.com", "pw")


@pytest.fixture
def staff(client, olga):
    client.force_login(olga)
    return client


def test_it_needs_a_signed_in_operator(client):
    response = client.post(TEMPLATE_URL, {"format": "html", "html": "{{ content }}"})
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_it_needs_the_csrf_token(olga):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(olga)
    assert browser.post(TEMPLATE_URL, {"format": "html", "html": "{{ content }}"}).status_code == 403


def test_a_starter_renders_for_the_contact_picked(staff, alice):
    source = gallery.BY_KEY["announcement"].source
    reply = staff.post(TEMPLATE_URL, {"format": "mjml", "html": source, "preview_contact": "alice@example.com"}).json()
    assert reply["errors"] == [] and reply["to"] == "alice@example.com"
    assert "Hello Alice, we have news to share." in reply["html"]
    assert "A headline for Alice" in reply["text"]
    assert "List-Unsubscribe:" in reply["headers"] and "Subject: Preview of" in reply["headers"]


def test_markdown_renders_into_the_layout_chosen(staff, alice):
    letter = Template.objects.create(name="Letter", html=gallery.BY_KEY["letter"].source)
    reply = staff.post(TEMPLATE_URL, {"format": "markdown", "layout": str(letter.pk), "preview_contact": str(alice.pk),
                                      "html": "**Note** for {{ contact.first_name }}\n\n{{ content }}"}).json()
    assert "Dear Alice," in reply["html"] and "<strong>Note</strong> for Alice" in reply["html"]


def test_an_error_comes_back_with_its_line_instead_of_a_preview(staff):
    reply = staff.post(TEMPLATE_URL, {"format": "mjml", "html": "<mjml>\n<mj-body>\n{{ content }}\n<mj-sectoin>"
                                                                "</mj-sectoin>\n</mj-body>\n</mjml>"}).json()
    assert reply["errors"] == [{"field": "html", "line": 4, "message": "<mj-sectoin> is not an MJML element"}]
    assert "html" not in reply


def test_the_campaign_editor_previews_its_unsaved_body_in_its_template(staff, alice):
    newsletter = Template.objects.create(name="Newsletter", format="mjml", html=gallery.BY_KEY["newsletter"].source)
    reply = staff.post(CAMPAIGN_URL, {"subject": "Spring for {{ contact.first_name }}", "from_email": "n@example.com",
                                      "template": str(newsletter.pk), "html_body": "<p>In {{ contact.attributes.city }}</p>",
                                      "preview_contact": "alice@example.com"}).json()
    assert reply["subject"] == "Spring for Alice"
    assert "In Oxford" in reply["html"] and "The Monthly Herald" in reply["html"]


def test_the_editor_shows_the_preview_in_a_sandboxed_frame(staff):
    page = staff.get("/admin/campaigns/template/add/?starter=digest").content.decode()
    assert 'id="herald-live-desktop" sandbox=""' in page and 'id="herald-live-mobile" sandbox=""' in page
    assert "Your weekly digest" in page  # the starter's source, in the editor
