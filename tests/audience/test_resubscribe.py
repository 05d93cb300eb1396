"""An unsubscribe is undone only by an explicit resubscribe that records who and why, never by editing lists."""

import io

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from campaigns.imports import import_contacts
from campaigns.models import ApiToken, Contact, Subscription, Suppression

pytestmark = pytest.mark.django_db


@pytest.fixture
def editor(django_user_model):
    """Staff who may view and change contacts, and nothing more."""
    user = django_user_model.objects.create_user("edith", password="pw-for-tests", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label="campaigns",
        codename__in=["view_contact", "change_contact", "view_subscription", "change_subscription",
                      "delete_subscription", "add_subscription", "view_mailinglist"],
    ))
    return user


@pytest.fixture
def editor_api(editor):
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(editor)[1]}"})


@pytest.fixture
def gone(readers):
    """A contact who unsubscribed from Readers, as the unsubscribe page leaves them."""
    contact = Contact.objects.create(email="gone@example.com")
    Subscription.objects.create(contact=contact, mailing_list=readers, status=Subscription.Status.UNSUBSCRIBED)
    return contact


def status_in(readers, contact):
    return Subscription.objects.get(contact=contact, mailing_list=readers).status


def patch(api, contact, body):
    return api.patch(f"/api/v1/contacts/{contact.pk}", body, content_type="application/json")


def test_editing_lists_through_the_api_never_undoes_an_unsubscribe(editor_api, readers, gone):
    removed = patch(editor_api, gone, {"lists": []})
    assert removed.status_code == 200
    assert removed.json()["subscriptions"][0]["status"] == "unsubscribed"
    added = patch(editor_api, gone, {"lists": [readers.pk]})
    assert added.status_code == 200
    assert [(s["list_id"], s["status"]) for s in added.json()["subscriptions"]] == [(readers.pk, "unsubscribed")]
    assert status_in(readers, gone) == "unsubscribed"


def test_a_contact_who_unsubscribed_from_everything_is_not_made_active_by_an_edit(editor_api, readers, gone):
    Contact.objects.filter(pk=gone.pk).update(status=Contact.Status.UNSUBSCRIBED)
    refused = patch(editor_api, gone, {"status": "active"})
    assert refused.status_code == 409 and refused.json()["errors"][0]["field"] == "status"
    assert "resubscribe" in refused.json()["detail"]
    assert Contact.objects.get(pk=gone.pk).status == "unsubscribed"

    Suppression.objects.create(email=gone.email, reason=Suppression.Reason.UNSUBSCRIBE)
    back = editor_api.post(f"/api/v1/contacts/{gone.pk}/resubscribe",
                           {"list": readers.pk, "reason": "Wrote to support asking to get the newsletter again"},
                           content_type="application/json").json()
    assert (back["contact_status"], back["status"], back["suppressed"]) == ("active", "confirmed", "unsubscribe")


def test_resubscribe_needs_a_reason_and_records_who_and_why(editor_api, editor, readers, gone):
    url = f"/api/v1/contacts/{gone.pk}/resubscribe"
    missing = editor_api.post(url, {"list": readers.pk}, content_type="application/json")
    blank = editor_api.post(url, {"list": readers.pk, "reason": "   "}, content_type="application/json")
    assert missing.status_code == 422 and blank.status_code == 422
    assert status_in(readers, gone) == "unsubscribed"

    done = editor_api.post(url, {"list": readers.pk, "reason": "Asked to be added back by phone on 2 May"},
                           content_type="application/json")
    assert done.status_code == 200, done.content
    sub = done.json()
    assert (sub["list_id"], sub["status"], sub["resubscribed_by"], sub["resubscribe_reason"]) == (
        readers.pk, "confirmed", "edith", "Asked to be added back by phone on 2 May")
    assert sub["resubscribed_at"] and sub["suppressed"] is None and status_in(readers, gone) == "confirmed"
    entry = LogEntry.objects.get(object_id=str(gone.pk))
    assert entry.user == editor and "Asked to be added back by phone" in entry.change_message

    again = editor_api.post(url, {"list": readers.pk, "reason": "again"}, content_type="application/json")
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "list"


def test_resubscribe_needs_change_permission(django_user_model, readers, gone):
    viewer = django_user_model.objects.create_user("vera", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_contact"))
    client = Client(headers={"Authorization": f"Bearer {ApiToken.issue(viewer)[1]}"})
    response = client.post(f"/api/v1/contacts/{gone.pk}/resubscribe", {"list": readers.pk, "reason": "because"},
                           content_type="application/json")
    assert response.status_code == 403
    assert status_in(readers, gone) == "unsubscribed"


def test_an_import_into_the_list_after_the_lists_were_cleared_keeps_the_unsubscribe(editor_api, readers, gone):
    patch(editor_api, gone, {"lists": []})
    import_contacts(io.BytesIO(b"email,first name\ngone@example.com,Gone\nnew@example.com,New\n"), readers,
                    report=io.StringIO())
    assert status_in(readers, gone) == "unsubscribed"
    assert status_in(readers, Contact.objects.get(email_key="new@example.com")) == "confirmed"


def contact_form(contact, sub, **inline):
    data = {
        "email": contact.email, "first_name": "", "last_name": "", "attributes": "{}", "status": contact.status,
        "subscriptions-TOTAL_FORMS": "1", "subscriptions-INITIAL_FORMS": "1",
        "subscriptions-MIN_NUM_FORMS": "0", "subscriptions-MAX_NUM_FORMS": "1000",
        "subscriptions-0-id": str(sub.pk), "subscriptions-0-contact": str(contact.pk),
        "subscriptions-0-mailing_list": str(sub.mailing_list_id), "subscriptions-0-status": sub.status,
    }
    data.update({f"subscriptions-0-{k}": v for k, v in inline.items()})
    return data


def test_the_admin_contact_form_neither_deletes_nor_reverses_an_unsubscribe(editor, readers, gone):
    staff = Client()
    staff.force_login(editor)
    url = reverse("admin:campaigns_contact_change", args=[gone.pk])
    sub = Subscription.objects.get(contact=gone)
    staff.post(url, contact_form(gone, sub, status="confirmed"))
    assert status_in(readers, gone) == "unsubscribed"
    staff.post(url, contact_form(gone, sub, DELETE="on"))
    assert status_in(readers, gone) == "unsubscribed"
    staff.post(reverse("admin:campaigns_subscription_delete", args=[sub.pk]), {"post": "yes"})
    assert status_in(readers, gone) == "unsubscribed"

    resubscribe = reverse("admin:campaigns_subscription_resubscribe", args=[sub.pk])
    assert resubscribe in staff.get(url).content.decode()
    refused = staff.post(resubscribe, {"reason": ""})
    assert refused.status_code == 200 and status_in(readers, gone) == "unsubscribed"
    staff.post(resubscribe, {"reason": "Signed the paper form at the fair"})
    sub.refresh_from_db()
    assert (sub.status, sub.resubscribed_by, sub.resubscribe_reason) == (
        "confirmed", editor, "Signed the paper form at the fair")
