"""Consent evidence from imports and the API: where a subscription came from, and no silent confirmation."""

import io

import pytest
from django.core.management import call_command

from audience.models import SignupForm
from campaigns.imports import run_import
from campaigns.models import Import, MailingList, Subscription

pytestmark = pytest.mark.django_db


@pytest.fixture
def double(db):
    return MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)


def test_an_import_into_a_double_opt_in_list_stays_unconfirmed_and_says_where_it_came_from(double, admin_user):
    imp = Import.objects.create(mailing_list=double, original_name="people.csv", created_by=admin_user)
    run_import(imp, io.BytesIO(b"email\nann@example.org\n"))
    sub = Subscription.objects.get()
    assert sub.status == "unconfirmed" and sub.confirmed_at is None
    assert sub.source == "import" and sub.source_detail == f"import {imp.pk} of people.csv by root"


def test_only_an_explicit_statement_makes_an_imports_contacts_confirmed(double, admin_user):
    imp = Import.objects.create(mailing_list=double, original_name="people.csv", created_by=admin_user, confirmed=True)
    run_import(imp, io.BytesIO(b"email\nann@example.org\n"))
    sub = Subscription.objects.get()
    assert sub.status == "confirmed" and sub.confirmed_at is not None
    assert sub.source_detail.endswith("confirmed elsewhere")


def test_the_command_line_import_takes_confirmed(double, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    path = tmp_path / "people.csv"
    path.write_text("email\nann@example.org\n")
    call_command("import_contacts", str(path), "--list", "Weekly", stdout=io.StringIO())
    assert Subscription.objects.get().status == "unconfirmed"
    path.write_text("email\nbob@example.org\n")
    call_command("import_contacts", str(path), "--list", "Weekly", "--confirmed", stdout=io.StringIO())
    assert Subscription.objects.get(contact__email="bob@example.org").status == "confirmed"


def test_the_api_records_its_token_and_needs_confirmed_for_a_double_opt_in_list(api, double):
    body = api.post("/api/v1/contacts", {"email": "ann@example.org", "lists": [double.pk]},
                    content_type="application/json").json()
    sub = Subscription.objects.get(contact_id=body["id"])
    assert sub.status == "unconfirmed" and sub.source == "api" and sub.source_detail.startswith("API token hrld_")
    body = api.post("/api/v1/contacts", {"email": "bob@example.org", "lists": [double.pk], "confirmed": True},
                    content_type="application/json").json()
    sub = Subscription.objects.get(contact_id=body["id"])
    assert sub.status == "confirmed" and sub.confirmed_at is not None


def test_the_api_lists_forms_with_their_page_and_embed_snippet(api, double):
    form = SignupForm.objects.create(name="Weekly", slug="weekly", consent_text="Yes", from_email="n@shop.example")
    form.lists.add(double)
    [listed] = api.get("/api/v1/forms").json()
    assert listed["url"].endswith("/s/weekly/") and "<form" in listed["embed_html"] and listed["lists"] == [double.pk]
