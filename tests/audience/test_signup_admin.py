"""Signup forms in the admin: created by an operator, with the page's address and the snippet to paste."""

import pytest
from django.test import Client

from audience.models import SignupForm
from campaigns.models import MailingList

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(admin_user):
    client = Client()
    client.force_login(admin_user)
    return client


def test_an_operator_creates_a_form_and_gets_its_embed_snippet(staff):
    weekly = MailingList.objects.create(name="Weekly", optin="double")
    assert staff.get("/admin/audience/signupform/add/").status_code == 200
    response = staff.post("/admin/audience/signupform/add/", {
        "name": "Weekly news", "slug": "weekly-news", "enabled": "on", "language": "de", "lists": [weekly.pk],
        "fields": '[{"name": "first_name", "label": "Vorname"}]', "consent_text": "Ja, bitte.",
        "from_email": "news@shop.example", "thank_you_text": "", "redirect_url": "", "from_name": "",
        "confirm_subject": "", "confirm_body": ""})
    assert response.status_code == 302, response.content[:2000]
    form = SignupForm.objects.get()
    page = staff.get(f"/admin/audience/signupform/{form.pk}/change/").content.decode()
    # Shown as text to copy, not as a form inside the admin page.
    assert "/s/weekly-news/" in page and "&lt;form method=&quot;post&quot;" in page
    assert '<form method="post" action="http' not in page


def test_a_confirmation_template_without_its_link_or_with_an_error_is_refused(staff):
    weekly = MailingList.objects.create(name="Weekly")
    base = {"name": "W", "slug": "w", "language": "en", "lists": [weekly.pk], "fields": "[]", "consent_text": "ok",
            "from_email": "news@shop.example", "confirm_subject": ""}
    no_link = staff.post("/admin/audience/signupform/add/", {**base, "confirm_body": "Hello"})
    assert b"must contain {{ confirm_url }}" in no_link.content
    broken = staff.post("/admin/audience/signupform/add/", {**base, "confirm_body": "{{ confirm_url }} {% if %}"})
    assert b"line 1" in broken.content and not SignupForm.objects.exists()
    bad_field = staff.post("/admin/audience/signupform/add/", {**base, "fields": '[{"name": "Email!"}]'})
    assert b"not a usable name" in bad_field.content
