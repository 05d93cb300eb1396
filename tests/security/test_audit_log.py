"""The audit log: who started, paused, resumed or cancelled a campaign, changed a relay, lifted a suppression,
issued or revoked a token; visible in the admin and the API, and never changed afterwards."""

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, transaction

from campaigns.models import ApiToken, AuditEntry, Campaign, Suppression

pytestmark = pytest.mark.django_db


@pytest.fixture
def root():
    return User.objects.create_superuser("root", "root@example.com", "x")


@pytest.fixture
def bearer(root):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(root)[1]}"}


@pytest.fixture
def sending():
    return Campaign.objects.create(name="Spring sale", subject="Hi", from_email="news@example.com",
                                   html_body="<p>x</p>", status=Campaign.Status.SENDING)


def entries(action):
    return list(AuditEntry.objects.filter(action=action))


def test_pause_and_resume_through_the_api_name_the_token_user(client, bearer, sending, redis_client):
    client.post(f"/api/v1/campaigns/{sending.pk}/pause", REMOTE_ADDR="192.0.2.10", **bearer)
    (pause,) = entries("campaign.pause")
    assert (pause.actor, pause.via, pause.address, pause.object_id) == ("root", "api", "192.0.2.10", str(sending.pk))
    assert pause.object_repr == "Spring sale"
    client.post(f"/api/v1/campaigns/{sending.pk}/resume", **bearer)
    assert entries("campaign.resume")[0].actor == "root"


def test_a_pause_by_the_engine_is_recorded_as_the_system_with_its_reason(sending):
    from delivery.lifecycle import pause_campaign

    pause_campaign(sending.pk, reason="535 5.7.8 authentication failed at smtp.example.com")
    (pause,) = entries("campaign.pause")
    assert pause.actor == "" and pause.via == "system"
    assert pause.detail == {"reason": "535 5.7.8 authentication failed at smtp.example.com"}


def test_relay_changes_are_recorded_without_the_password(client, bearer):
    body = {"name": "Main", "host": "smtp.example.com", "port": 587, "username": "u", "password": "pw-secret-1"}
    relay = client.post("/api/v1/relays", body, content_type="application/json", **bearer).json()
    client.delete(f"/api/v1/relays/{relay['id']}", **bearer)
    actions = [e.action for e in AuditEntry.objects.filter(object_type="relay").order_by("id")]
    assert actions == ["relay.create", "relay.delete"]
    assert "pw-secret-1" not in str(list(AuditEntry.objects.values()))


def test_lifting_a_suppression_is_recorded(client, bearer):
    row = Suppression.objects.create(email="ann@example.com", email_key="ann@example.com", reason="complaint")
    assert client.delete("/api/v1/suppressions/ann@example.com", **bearer).status_code == 204
    (lifted,) = entries("suppression.delete")
    # By id, never by address: the log is append-only, and an erasure must leave no address behind.
    assert lifted.actor == "root" and lifted.object_id == str(row.pk) and lifted.object_repr == f"suppression {row.pk}"
    assert "ann@example.com" not in str(list(AuditEntry.objects.values()))


def test_tokens_issued_and_revoked_are_recorded(client, root):
    row, _ = ApiToken.issue(root, name="ci", scopes=["read"])
    client.force_login(root)
    client.post("/admin/campaigns/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    created = AuditEntry.objects.get(action="token.create", object_id=str(row.pk))
    assert created.detail["scopes"] == ["read"]
    (revoked,) = entries("token.revoke")
    assert revoked.actor == "root" and revoked.via == "admin"


def test_the_api_lists_and_filters_the_log_for_those_allowed_to_read_it(client, bearer, sending):
    client.post(f"/api/v1/campaigns/{sending.pk}/pause", **bearer)
    page = client.get("/api/v1/audit", {"action": "campaign."}, **bearer).json()
    assert [item["action"] for item in page["items"]] == ["campaign.pause"]
    nobody = User.objects.create_user("nobody")
    refused = client.get("/api/v1/audit", HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(nobody)[1]}")
    assert refused.status_code == 403


def test_the_admin_shows_the_log_and_offers_no_way_to_change_it(client, root, sending):
    from delivery.lifecycle import cancel_campaign

    cancel_campaign(sending.pk)
    entry = AuditEntry.objects.get(action="campaign.cancel")
    client.force_login(root)
    assert "campaign.cancel" in client.get("/admin/campaigns/auditentry/").content.decode()
    assert client.get("/admin/campaigns/auditentry/add/").status_code == 403
    assert client.post(f"/admin/campaigns/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_entries_cannot_be_changed_or_deleted_even_in_the_database(sending):
    from delivery.lifecycle import cancel_campaign

    cancel_campaign(sending.pk)
    entry = AuditEntry.objects.get(action="campaign.cancel")
    entry.actor = "someone-else"
    with pytest.raises(PermissionError):
        entry.save()
    with pytest.raises(PermissionError):
        entry.delete()
    for sneaky in (lambda: AuditEntry.objects.filter(pk=entry.pk).update(actor="x"),
                   lambda: AuditEntry.objects.filter(pk=entry.pk).delete()):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            sneaky()
    assert AuditEntry.objects.get(pk=entry.pk).actor == ""


def test_imports_and_exports_of_contacts_and_suppressions_are_recorded(client, bearer):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.get("/api/v1/contacts/export", {"email_contains": "example.com"}, **bearer)
    client.get("/api/v1/suppressions/export", **bearer)
    upload = SimpleUploadedFile("s.csv", b"email\nann@example.com\nbroken\n", content_type="text/csv")
    client.post("/api/v1/suppressions/import", {"file": upload}, **bearer)
    (contacts,) = entries("contacts.export")
    assert contacts.actor == "root" and contacts.via == "api"
    assert contacts.detail == {"filters": {"email_contains": "example.com"}}
    assert entries("suppressions.export")[0].actor == "root"
    (imported,) = entries("suppressions.import")
    assert imported.detail == {"added": 1, "existing": 0, "errors": 1}
