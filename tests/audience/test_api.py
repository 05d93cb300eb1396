"""The audience API: lists, contacts and imports as a client sees them."""

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from campaigns.models import Contact, Import, MailingList, Subscription
from campaigns.tasks import run_import_task

pytestmark = pytest.mark.django_db


def field_of(response):
    body = response.json()
    if isinstance(body.get("detail"), list):  # request validation by the framework
        return body["detail"][0]["loc"][-1]
    return body["errors"][0]["field"]


@pytest.mark.parametrize("path", ["/api/v1/lists", "/api/v1/contacts", "/api/v1/imports", "/api/v1/contacts/export"])
def test_requests_without_a_valid_token_get_401(path, db):
    assert Client().get(path).status_code == 401
    assert Client(headers={"Authorization": "Bearer hrld_wrong"}).get(path).status_code == 401


def test_lists_crud_with_subscriber_counts(api):
    created = api.post("/api/v1/lists", {"name": "Weekly", "optin": "double"}, content_type="application/json")
    assert created.status_code == 201
    list_id = created.json()["id"]
    contact = Contact.objects.create(email="anna@example.com")
    Subscription.objects.create(contact=contact, mailing_list_id=list_id)
    got = api.get(f"/api/v1/lists/{list_id}").json()
    assert (got["name"], got["optin"], got["subscribers"]) == ("Weekly", "double", 1)
    changed = api.patch(f"/api/v1/lists/{list_id}", {"description": "Every Monday"}, content_type="application/json")
    assert changed.json()["description"] == "Every Monday"
    duplicate = api.post("/api/v1/lists", {"name": "Weekly"}, content_type="application/json")
    assert duplicate.status_code == 409 and field_of(duplicate) == "name"
    assert api.delete(f"/api/v1/lists/{list_id}").status_code == 204
    assert api.get(f"/api/v1/lists/{list_id}").status_code == 404


def test_list_validation_names_the_field(api):
    response = api.post("/api/v1/lists", {"name": "X", "optin": "triple"}, content_type="application/json")
    assert response.status_code == 422 and field_of(response) == "optin"
    response = api.post("/api/v1/lists", {"name": "Nul\u0000byte"}, content_type="application/json")
    assert response.status_code == 422 and field_of(response) == "name"


def test_contact_crud(api, readers):
    created = api.post("/api/v1/contacts", {"email": " Anna@Example.com ", "first_name": "Anna",
                                            "attributes": {"plan": "gold"}, "lists": [readers.pk]},
                       content_type="application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["email"] == "Anna@Example.com"
    assert body["subscriptions"] == [{"list_id": readers.pk, "list_name": "Readers", "status": "confirmed"}]
    cid = body["id"]
    patched = api.patch(f"/api/v1/contacts/{cid}", {"last_name": "Smith", "attributes": {"city": "Rome"}, "lists": []},
                        content_type="application/json").json()
    assert (patched["last_name"], patched["attributes"], patched["subscriptions"]) == (
        "Smith", {"plan": "gold", "city": "Rome"}, [])
    assert api.delete(f"/api/v1/contacts/{cid}").status_code == 204
    assert not Contact.objects.filter(pk=cid).exists()


def test_contact_validation_errors_name_the_field(api, readers):
    cases = [
        ({"email": "not-an-address"}, 422, "email"),
        ({"email": "a@example.com", "status": "gone"}, 422, "status"),
        ({"email": "a@example.com", "lists": [999999]}, 422, "lists"),
        ({"email": "a@example.com", "attributes": "flat"}, 422, "attributes"),
        ({"email": "a@example.com", "first_name": "x" * 201}, 422, "first_name"),
        ({"first_name": "no address"}, 422, "email"),
    ]
    for payload, status, field in cases:
        response = api.post("/api/v1/contacts", payload, content_type="application/json")
        assert (response.status_code, field_of(response)) == (status, field), payload
    Contact.objects.create(email="taken@example.com")
    response = api.post("/api/v1/contacts", {"email": "TAKEN@example.com"}, content_type="application/json")
    assert response.status_code == 409 and field_of(response) == "email"
    assert api.post("/api/v1/contacts", "{broken", content_type="application/json").status_code in (400, 422)


def test_contacts_filter_by_email_and_list_and_paginate(api, readers):
    others = MailingList.objects.create(name="Others")
    for i in range(7):
        c = Contact.objects.create(email=f"user{i}@example.com")
        Subscription.objects.create(contact=c, mailing_list=readers if i % 2 == 0 else others)
    page = api.get("/api/v1/contacts", {"page_size": 3, "page": 2}).json()
    assert (page["count"], len(page["items"])) == (7, 3)
    assert [c["email"] for c in page["items"]] == ["user3@example.com", "user4@example.com", "user5@example.com"]
    by_list = api.get("/api/v1/contacts", {"list_id": readers.pk}).json()
    assert [c["email"] for c in by_list["items"]] == [f"user{i}@example.com" for i in (0, 2, 4, 6)]
    by_email = api.get("/api/v1/contacts", {"email": "USER5@example.com"}).json()
    assert [c["email"] for c in by_email["items"]] == ["user5@example.com"]
    assert api.get("/api/v1/contacts", {"page": 0}).status_code == 422
    assert api.get("/api/v1/contacts", {"page_size": 100000}).status_code == 422
    assert api.get("/api/v1/contacts", {"page": 999}).json()["items"] == []


def test_export_neutralises_formula_cells(api):
    Contact.objects.create(email="anna@example.com", first_name="=1+1", attributes={"note": "@cmd"})
    response = api.get("/api/v1/contacts/export")
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows == [["email", "first_name", "last_name", "status", "note"],
                    ["anna@example.com", "'=1+1", "", "active", "'@cmd"]]


def upload(api, data: bytes, **fields):
    return api.post("/api/v1/imports", {"file": SimpleUploadedFile("people.csv", data, "text/csv"), **fields})


def test_import_through_the_api_reports_progress_counts_and_errors(api, readers, django_capture_on_commit_callbacks):
    data = b"email;vorname\nanna@example.com;Anna\nbad-address;X\nANNA@example.com;Dup\n"
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = upload(api, data, list_id=readers.pk)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending" and len(queued) == 1
    run_import_task(body["id"])  # what the worker does with the queued task
    done = api.get(f"/api/v1/imports/{body['id']}").json()
    assert {k: done[k] for k in ("status", "rows_processed", "created", "skipped", "invalid", "delimiter")} == {
        "status": "done", "rows_processed": 3, "created": 1, "skipped": 1, "invalid": 1, "delimiter": ";"}
    report = api.get(done["error_report"])
    rows = list(csv.reader(io.StringIO(b"".join(report.streaming_content).decode())))
    assert rows[0] == ["row", "column", "value", "reason"]
    assert [r[:3] for r in rows[1:]] == [["3", "email", "bad-address"], ["4", "email", "ANNA@example.com"]]
    assert Contact.objects.get(email_key="anna@example.com").first_name == "Anna"


def test_import_of_an_excel_for_mac_file_through_the_api(api, readers, django_capture_on_commit_callbacks):
    data = b"Email;First name;Phone\ranna@example.com;Anna;'+49 30 1234\r;;\rbroken;X;\r"
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(api, data, list_id=readers.pk)
    run_import_task(response.json()["id"])
    done = api.get(f"/api/v1/imports/{response.json()['id']}").json()
    assert {k: done[k] for k in ("status", "rows_processed", "created", "invalid")} == {
        "status": "done", "rows_processed": 2, "created": 1, "invalid": 1}
    assert Contact.objects.get().attributes == {"Phone": "+49 30 1234"}


def test_import_into_a_new_list_by_name(api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(api, b"email\nanna@example.com\n", list="Newcomers")
    run_import_task(response.json()["id"])
    assert MailingList.objects.get(name="Newcomers").subscriptions.count() == 1


def test_a_rejected_file_fails_the_import_with_the_reason(api, readers, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(api, b"name,phone\nAnna,1\n", list_id=readers.pk)
    run_import_task(response.json()["id"])
    got = api.get(f"/api/v1/imports/{response.json()['id']}").json()
    assert got["status"] == "failed" and "No email column" in got["error"]
    assert api.get(f"/api/v1/imports/{got['id']}/errors").status_code == 404
    assert Contact.objects.count() == 0


def test_import_request_errors_name_the_field(api, readers, settings):
    assert field_of(api.post("/api/v1/imports", {"list_id": readers.pk})) == "file"
    response = upload(api, b"email\na@example.com\n")
    assert response.status_code == 422 and field_of(response) == "list_id"
    response = upload(api, b"email\na@example.com\n", list_id=999999)
    assert response.status_code == 422 and field_of(response) == "list_id"
    response = upload(api, b"email\na@example.com\n", list_id=readers.pk, mode="replace")
    assert response.status_code == 422 and field_of(response) == "mode"
    response = upload(api, b"email\na@example.com\n", list_id=readers.pk, delimiter="ab")
    assert response.status_code == 422 and field_of(response) == "delimiter"
    response = upload(api, b"email\na@example.com\n", list_id=readers.pk, encoding="klingon")
    assert response.status_code == 422 and field_of(response) == "encoding"
    settings.HERALD_IMPORT_MAX_BYTES = 10
    response = upload(api, b"email\nanna@example.com\n", list_id=readers.pk)
    assert response.status_code == 413 and field_of(response) == "file"
    assert "HERALD_IMPORT_MAX_BYTES" in response.json()["detail"]
    assert Import.objects.count() == 0


def test_openapi_document_lists_the_audience_paths(db):
    paths = Client().get("/api/v1/openapi.json").json()["paths"]
    for path in ("/api/v1/lists", "/api/v1/contacts", "/api/v1/contacts/{contact_id}", "/api/v1/imports",
                 "/api/v1/imports/{import_id}", "/api/v1/imports/{import_id}/errors"):
        assert path in paths


def test_hostile_input_gets_4xx_never_500(api, readers):
    huge = 2**70
    # No list has that id: nothing matches (PostgreSQL), or the id is refused as out of range (SQLite).
    by_huge_list = api.get("/api/v1/contacts", {"list_id": huge})
    assert (by_huge_list.status_code, by_huge_list.json().get("count")) == (200, 0) or (
        by_huge_list.status_code == 422 and "cannot be stored" in by_huge_list.json()["detail"])
    requests = [
        api.get(f"/api/v1/contacts/{huge}"),
        api.get(f"/api/v1/lists/{huge}"),
        api.get("/api/v1/contacts", {"email": "a\x00b"}),
        api.get("/api/v1/contacts", {"page": "x"}),
        api.post("/api/v1/contacts", '{"email": "a@example.com", "attributes": {"n": NaN}}', content_type="application/json"),
        api.post("/api/v1/contacts", {"email": "a@example.com", "attributes": {"k\u0000": "v"}}, content_type="application/json"),
        api.post("/api/v1/contacts", [1, 2], content_type="application/json"),
        api.patch(f"/api/v1/contacts/{huge}", {"first_name": "x"}, content_type="application/json"),
        api.post("/api/v1/imports", {"file": SimpleUploadedFile("x.csv", b"email\n"), "list_id": huge}),
    ]
    for response in requests:
        assert 400 <= response.status_code < 500, (response.request, response.content)
