"""The audience admin: pages for staff only, list counts without a query per row, error reports."""

import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from campaigns.imports import run_import
from campaigns.models import ApiToken, Contact, Import, MailingList, Subscription

pytestmark = pytest.mark.django_db

PAGES = [
    "admin:campaigns_contact_changelist",
    "admin:campaigns_mailinglist_changelist",
    "admin:campaigns_subscription_changelist",
    "admin:campaigns_import_changelist",
    "admin:campaigns_apitoken_changelist",
    "admin:campaigns_contact_add",
]


@pytest.fixture
def staff(admin_user):
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def audience(readers):
    weekly = MailingList.objects.create(name="Weekly")
    for i in range(30):
        contact = Contact.objects.create(email=f"user{i}@example.com", first_name=f"User{i}")
        Subscription.objects.create(contact=contact, mailing_list=readers if i < 20 else weekly,
                                    status=Subscription.Status.UNSUBSCRIBED if i == 0 else Subscription.Status.CONFIRMED)
    return readers, weekly


@pytest.mark.parametrize("name", PAGES)
def test_pages_are_for_staff_only(name, staff, audience):
    url = reverse(name)
    assert staff.get(url).status_code == 200
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


def test_list_page_shows_subscriber_counts_in_a_fixed_number_of_queries(staff, audience, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        response = staff.get(reverse("admin:campaigns_mailinglist_changelist"))
    html = response.content.decode()
    assert cell(html, "subscriber_count", 19)  # one of Readers' 20 unsubscribed
    assert cell(html, "subscriber_count", 10)
    assert cell(html, "unsubscribed_count", 1)


def cell(html, column, value):
    """Whether the change list has a cell of ``column`` holding ``value`` (whatever classes the theme adds)."""
    return re.search(rf'<td class="field-{column}\b[^"]*"[^>]*>\s*{value}\s*</td>', html) is not None


def test_contact_page_queries_do_not_grow_with_rows(staff, audience, django_assert_max_num_queries):
    with django_assert_max_num_queries(10):
        staff.get(reverse("admin:campaigns_contact_changelist"))


def test_contacts_search_by_email_and_filter_by_list(staff, audience):
    readers, weekly = audience
    url = reverse("admin:campaigns_contact_changelist")
    found = staff.get(url, {"q": "USER25@example.com"}).content.decode()
    assert "user25@example.com" in found and "user24@example.com" not in found
    # A whole address is looked up in the index; part of one, or one nobody has whole, is still searched for.
    assert "user25@example.com" in staff.get(url, {"q": "ser25@example.com"}).content.decode()
    assert "user25@example.com" in staff.get(url, {"q": "r25@exam"}).content.decode()
    listed = staff.get(url, {"subscriptions__mailing_list__id__exact": weekly.pk}).content.decode()
    assert "user25@example.com" in listed and "user5@example.com" not in listed


def test_import_error_report_downloads_for_staff(staff, readers, admin_user):
    imp = Import.objects.create(mailing_list=readers, original_name="people.csv")
    run_import(imp, io.BytesIO(b"email\nanna@example.com\nbroken\n"))
    url = reverse("admin:campaigns_import_errors", args=[imp.pk])
    response = staff.get(url)
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    assert body.splitlines()[1].startswith("3,email,broken,")
    assert Client().get(url).status_code == 302
    page = staff.get(reverse("admin:campaigns_import_change", args=[imp.pk])).content.decode()
    assert url in page


def test_add_import_leads_to_an_upload_page(staff):
    response = staff.get(reverse("admin:campaigns_import_add"), follow=True)
    assert response.status_code == 200
    assert b'type="file"' in response.content


def test_export_action_neutralises_formulas(staff, readers):
    evil = Contact.objects.create(email="evil@example.com", first_name="=cmd|' /C calc'!A0")
    response = staff.post(reverse("admin:campaigns_contact_changelist"),
                          {"action": "export_selected", "_selected_action": [evil.pk]})
    body = b"".join(response.streaming_content).decode()
    assert "evil@example.com,'=cmd|' /C calc'!A0,,active" in body


def test_api_token_created_in_the_admin_is_shown_once_and_works(staff, admin_user):
    response = staff.post(reverse("admin:campaigns_apitoken_add"), {"user": admin_user.pk, "name": "ci", "access": "*"},
                          follow=True)
    shown = [str(m) for m in response.context["messages"]]
    token = next(m.split("The new token is ")[1].split(" ")[0] for m in shown if "The new token is" in m)
    assert ApiToken.objects.get().digest == ApiToken.hash(token)
    assert Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/lists").status_code == 200


def test_adding_a_case_variant_of_a_known_address_is_a_form_error(staff, readers):
    Contact.objects.create(email="anna@example.com")
    url = reverse("admin:campaigns_contact_add")
    form = {"email": "ANNA@example.com", "first_name": "", "last_name": "", "attributes": "{}", "status": "active",
            "subscriptions-TOTAL_FORMS": "0", "subscriptions-INITIAL_FORMS": "0"}
    response = staff.post(url, form)
    assert response.status_code == 200
    assert "has this address already" in response.content.decode()
    response = staff.post(url, {**form, "email": "not an address"})
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert Contact.objects.count() == 1


def test_preview_reads_cr_line_ends_skips_empty_rows_and_shows_cells_as_they_will_be_stored(staff, readers):
    data = b"email;phone\r;\ranna@example.com;'+49 30 1234\r;\rbert@example.com;\r"
    staff.post(reverse("import-admin:upload"), {"file": SimpleUploadedFile("mac.csv", data), "mailing_list": readers.pk,
                                                "mode": "upsert"})
    imp = Import.objects.get()
    page = staff.get(reverse("import-admin:preview", args=[imp.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "<tr><td>anna@example.com</td><td>+49 30 1234</td></tr><tr><td>bert@example.com</td><td></td></tr>" in html


def test_preview_upload_over_the_size_limit_is_refused_naming_it(staff, readers, settings):
    settings.HERALD_IMPORT_MAX_BYTES = 10
    response = staff.post(reverse("import-admin:upload"), {
        "file": SimpleUploadedFile("big.csv", b"email\nanna@example.com\n"), "mailing_list": readers.pk, "mode": "upsert"})
    assert response.status_code == 200
    assert "over the import limit of 10 bytes (HERALD_IMPORT_MAX_BYTES)" in response.content.decode()
    assert Import.objects.count() == 0


def test_preview_of_a_file_that_is_not_text_says_where(staff, readers):
    data = b"email\n" + b"".join(b"user%d@example.com\n" % i for i in range(3)) + b"\x00\x01"
    staff.post(reverse("import-admin:upload"), {"file": SimpleUploadedFile("x.csv", data), "mailing_list": readers.pk,
                                                "mode": "upsert"})
    page = staff.get(reverse("import-admin:preview", args=[Import.objects.get().pk]))
    assert page.status_code == 422
    assert "binary data (a NUL byte at byte 60)" in page.content.decode()
