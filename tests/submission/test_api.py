"""The JSON API for SMTP credentials and submitted messages."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from campaigns.models import ApiToken
from delivery.models import Send
from submission.models import OutboundMessage, SmtpCredential
from tests.submission.conftest import make_credential

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    user = User.objects.create_user("operator", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="submission"))
    _, token = ApiToken.issue(user)
    return Client(headers={"Authorization": f"Bearer {token}"})


def submitted(credential, tag, recipients, subject="Hi"):
    message = OutboundMessage.objects.create(
        credential=credential, mail_from=f"app@{credential.domain_list()[0]}", subject=subject, raw=b"x", size=1,
        recipients=len(recipients), tag=tag,
    )
    for email, status in recipients:
        Send.objects.create(email=email, domain=email.rpartition("@")[2], status=status, outbound_id=message.pk)
    return message


def test_secret_is_shown_once_and_works_for_login(api):
    response = api.post("/api/v1/smtp-credentials", {"username": "shop", "allowed_domains": ["Shop.Example.com"],
                                                     "tracking": True}, content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    row = SmtpCredential.objects.get(username="shop")
    assert row.check_secret(secret) and secret not in row.secret_hash
    assert body["allowed_domains"] == ["shop.example.com"] and body["tracking"] is True
    assert "secret" not in api.get(f"/api/v1/smtp-credentials/{row.pk}").json()
    assert all("secret" not in item for item in api.get("/api/v1/smtp-credentials").json())
    rotated = api.post(f"/api/v1/smtp-credentials/{row.pk}/rotate").json()["secret"]
    row.refresh_from_db()
    assert row.check_secret(rotated) and not row.check_secret(secret)


def test_bad_input_names_the_field(api):
    bad_domain = api.post("/api/v1/smtp-credentials", {"username": "x", "allowed_domains": ["not a domain"]},
                          content_type="application/json")
    assert bad_domain.status_code == 422 and "allowed_domains" in bad_domain.content.decode()
    make_credential("taken")
    duplicate = api.post("/api/v1/smtp-credentials", {"username": "taken", "allowed_domains": ["example.com"]},
                         content_type="application/json")
    assert duplicate.status_code == 409 and "username" in duplicate.json()["detail"]


def test_patch_and_delete(api):
    row = make_credential("app")
    response = api.patch(f"/api/v1/smtp-credentials/{row.pk}", {"enabled": False, "rate_limit": 10},
                         content_type="application/json")
    assert response.status_code == 200 and response.json()["enabled"] is False
    submitted(row, "t", [("a@dest.test", "sent")])
    assert api.delete(f"/api/v1/smtp-credentials/{row.pk}").status_code == 409
    empty = make_credential("empty")
    assert api.delete(f"/api/v1/smtp-credentials/{empty.pk}").status_code == 204


def test_messages_are_filtered_and_show_each_recipient(api):
    from tracking.models import Event

    shop, news = make_credential("shop"), make_credential("news")
    receipt = submitted(shop, "receipts", [("bob@dest.test", "sent"), ("carol@dest.test", "bounced")])
    reset = submitted(shop, "resets", [("bob@dest.test", "queued")])
    submitted(news, "digest", [("dave@dest.test", "sent")])
    bounced = Send.objects.get(email="carol@dest.test")
    Event.objects.create(type="bounce", send=bounced, email=bounced.email, status="5.1.1", diagnostic="550 5.1.1 no such user")

    def ids(query):
        response = api.get("/api/v1/messages" + query)
        assert response.status_code == 200, response.content
        return [m["id"] for m in response.json()]

    assert ids("?credential=shop") == [reset.pk, receipt.pk]
    assert ids(f"?credential={shop.pk}&tag=receipts") == [receipt.pk]
    assert ids("?recipient=BOB@dest.test") == [reset.pk, receipt.pk]
    assert ids("?status=bounced") == [receipt.pk]
    shown = api.get("/api/v1/messages?tag=receipts").json()[0]
    assert shown["state"] == "partial"
    carol = next(r for r in shown["recipients"] if r["email"] == "carol@dest.test")
    assert carol["status"] == "bounced" and carol["events"][0]["type"] == "bounce"
    assert carol["events"][0]["status"] == "5.1.1"
    assert api.get("/api/v1/messages?status=nonsense").status_code == 422
