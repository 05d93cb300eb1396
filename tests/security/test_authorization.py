"""Who may do what: anonymous, a staff editor without send permission, a sender and a superuser,
against admin pages, admin actions and API endpoints. Denied means the login page (anonymous),
401 (API without a token) or 403; allowed means anything else below 500."""

from importlib import import_module

import pytest
from django.contrib.auth.models import Group, Permission, User

from campaigns.models import ApiToken, Campaign, Contact, MailingList, Segment, Subscription, Suppression
from delivery.models import Relay
from herald.api import api
from submission.models import SmtpCredential

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "editor", "sender", "superuser"]
A, D = "allowed", "denied"


@pytest.fixture
def world(db):
    lst = MailingList.objects.create(name="Readers")
    alice = Contact.objects.create(email="alice@example.com", first_name="Alice")
    Subscription.objects.create(contact=alice, mailing_list=lst)
    campaign = Campaign.objects.create(name="Spring", subject="Hi", from_email="news@example.com", html_body="<p>Hi</p>")
    campaign.lists.add(lst)
    relay = Relay.objects.create(name="main", host="127.0.0.1", port=2525, security="none")
    segment = Segment.objects.create(name="Readers who open", rules={"match": "all", "rules": [{"type": "opened"}]})
    return {"campaign": campaign.pk, "contact": alice.pk, "list": lst.pk, "relay": relay.pk, "segment": segment.pk}


def user_for(role):
    if role == "anonymous":
        return None
    if role == "superuser":
        return User.objects.create_superuser("root", "root@example.com", None)
    group = {"editor": "Content editors", "sender": "Senders"}[role]
    user = User.objects.create_user(role, is_staff=True)
    user.groups.set([Group.objects.get(name=group)])
    return user


ADMIN = [
    # (method, path, expected for anonymous, editor, sender, superuser)
    ("get", "/admin/", [D, A, A, A]),
    ("get", "/admin/campaigns/campaign/", [D, A, A, A]),
    ("get", "/admin/campaigns/campaign/{campaign}/change/", [D, A, A, A]),
    ("get", "/admin/campaigns/contact/", [D, A, A, A]),
    ("get", "/admin/campaigns/segment/", [D, A, A, A]),
    ("get", "/admin/campaigns/segment/{segment}/change/", [D, A, A, A]),
    ("get", "/admin/delivery/relay/", [D, D, D, A]),
    ("get", "/admin/auth/user/", [D, D, D, A]),
    ("get", "/admin/herald/campaigns/{campaign}/send/", [D, D, A, A]),
    ("post", "/admin/herald/campaigns/{campaign}/pause/", [D, D, A, A]),
    ("post", "/admin/herald/campaigns/{campaign}/cancel/", [D, D, A, A]),
]

API = [
    ("get", "/api/v1/campaigns", [D, A, A, A]),
    ("get", "/api/v1/campaigns/{campaign}", [D, A, A, A]),
    ("get", "/api/v1/contacts", [D, A, A, A]),
    ("get", "/api/v1/lists/{list}", [D, A, A, A]),
    ("delete", "/api/v1/contacts/{contact}", [D, D, D, A]),
    ("post", "/api/v1/campaigns/{campaign}/pause", [D, D, A, A]),
    ("post", "/api/v1/campaigns/{campaign}/schedule", [D, D, A, A]),
    ("post", "/api/v1/campaigns/{campaign}/cancel", [D, D, A, A]),
    ("post", "/api/v1/campaigns/{campaign}/send", [D, D, A, A]),
    ("get", "/api/v1/campaigns/{campaign}/stats", [D, A, A, A]),
    ("get", "/api/v1/relays", [D, D, D, A]),
    ("post", "/api/v1/relays", [D, D, D, A]),
    ("delete", "/api/v1/relays/{relay}", [D, D, D, A]),
    ("get", "/api/v1/throttles", [D, D, D, A]),
    ("post", "/api/v1/throttles", [D, D, D, A]),
    ("get", "/api/v1/sending-domains", [D, D, D, A]),
    ("post", "/api/v1/smtp-credentials", [D, D, D, A]),
    ("get", "/api/v1/smtp-credentials", [D, D, D, A]),
    ("get", "/api/v1/messages", [D, D, D, A]),
    ("get", "/api/v1/events", [D, D, A, A]),
    ("get", "/api/v1/suppressions", [D, D, A, A]),
    ("post", "/api/v1/suppressions", [D, D, A, A]),
    ("delete", "/api/v1/suppressions/alice@example.com", [D, D, D, A]),
    ("get", "/api/v1/segments", [D, A, A, A]),
    ("post", "/api/v1/segments", [D, A, A, A]),
    ("patch", "/api/v1/segments/{segment}", [D, A, A, A]),
    ("get", "/api/v1/segments/{segment}/count", [D, A, A, A]),
    ("delete", "/api/v1/segments/{segment}", [D, D, D, A]),
    ("get", "/api/v1/campaigns/{campaign}/audience", [D, A, A, A]),
    ("post", "/api/v1/campaigns/{campaign}/follow-up", [D, A, A, A]),
]

# A valid body for each create, so that what the matrix sees is the permission, not a 422.
BODIES = {
    "/schedule": {"scheduled_at": "2031-05-01T09:00:00Z"},
    "/relays": {"name": "mine", "host": "127.0.0.1", "port": 9, "security": "none"},
    "/throttles": {"name": "mine", "domains": "example.org", "rate": 10, "period": "minute"},
    "/smtp-credentials": {"username": "mine", "allowed_domains": ["example.com"]},
    "/suppressions": {"email": "mallory@example.com", "reason": "manual"},
    "/segments": {"name": "mine", "rules": {"match": "any", "rules": [{"type": "clicked"}]}},
    "/follow-up": {"audience": "not_opened"},
}


def outcome(response, role):
    assert response.status_code < 500, response.content[:300]
    if response.status_code in (401, 403):
        return D
    if response.status_code == 302 and "/admin/login/" in response.get("Location", ""):
        return D
    return A


@pytest.mark.parametrize("method,path,expected", ADMIN, ids=[f"{m} {p}" for m, p, _ in ADMIN])
def test_admin_pages_and_actions(client, world, method, path, expected):
    seen = []
    for role in ROLES:
        client.logout()
        user = user_for(role)
        if user:
            client.force_login(user)
        response = getattr(client, method)(path.format(**world))
        seen.append(outcome(response, role))
        if user:
            user.delete()
    assert seen == expected, dict(zip(ROLES, seen, strict=True))
    if expected[1] == D:
        assert Campaign.objects.get(pk=world["campaign"]).status in ("draft", "cancelled", "sending", "paused")


@pytest.mark.parametrize("method,path,expected", API, ids=[f"{m} {p}" for m, p, _ in API])
def test_api_endpoints_and_actions(client, world, method, path, expected):
    seen = []
    for role in ROLES:
        user = user_for(role)
        headers = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)[1]}"} if user else {}
        body = next((b for end, b in BODIES.items() if path.endswith(end)), {})
        response = getattr(client, method)(path.format(**world), body, content_type="application/json", **headers)
        seen.append(outcome(response, role))
        if user:
            user.delete()
    assert seen == expected, dict(zip(ROLES, seen, strict=True))


def test_an_editor_cannot_send_by_any_door(client, world):
    editor = user_for("editor")
    token = ApiToken.issue(editor)[1]
    client.force_login(editor)
    client.post(f"/admin/herald/campaigns/{world['campaign']}/send/")
    client.post(f"/api/v1/campaigns/{world['campaign']}/send", HTTP_AUTHORIZATION=f"Bearer {token}")
    client.post(f"/api/v1/campaigns/{world['campaign']}/schedule", {"scheduled_at": "2031-05-01T09:00:00Z"},
                content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert Campaign.objects.get(pk=world["campaign"]).status == Campaign.Status.DRAFT


def test_a_revoked_or_inactive_users_token_is_refused(client, world):
    sender = user_for("sender")
    token = ApiToken.issue(sender)[1]
    assert client.get("/api/v1/campaigns", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    sender.is_active = False
    sender.save()
    assert client.get("/api/v1/campaigns", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    sender.is_active = True
    sender.save()
    ApiToken.objects.filter(user=sender).delete()
    assert client.get("/api/v1/campaigns", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401


@pytest.mark.parametrize("method,path,permission", [
    ("post", "/api/v1/relays", "delivery.add_relay"), ("get", "/api/v1/relays", "delivery.view_relay"),
    ("post", "/api/v1/relays/{relay}/check", "delivery.change_relay"),
    ("post", "/api/v1/smtp-credentials", "submission.add_smtpcredential"),
    ("get", "/api/v1/messages", "submission.view_outboundmessage"), ("get", "/api/v1/events", "tracking.view_event"),
    ("delete", "/api/v1/suppressions/alice@example.com", "campaigns.delete_suppression"),
])
def test_an_editor_cannot_manage_relays_credentials_or_suppressions_through_the_api(client, world, method, path,
                                                                                   permission):
    Suppression.objects.create(email="alice@example.com", reason="manual")
    token = ApiToken.issue(user_for("editor"))[1]
    body = {"name": "mine", "host": "evil.example", "port": 25, "username": "me", "allowed_domains": ["example.com"]}
    response = getattr(client, method)(path.format(**world), body, content_type="application/json",
                                       HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 403
    assert response.json() == {"detail": f"this needs the {permission} permission"}
    assert not Relay.objects.exclude(pk=world["relay"]).exists()
    assert not SmtpCredential.objects.exists()
    assert Suppression.objects.filter(email="alice@example.com").exists()


LEAF_ROUTERS = ["campaigns.api_audience", "campaigns.api_audit", "campaigns.api_content", "delivery.api_engine",
                "delivery.api_domains", "delivery.api_routing", "delivery.api_warmup", "submission.api", "tracking.api",
                "segments.api", "audience.api", "automations.api", "automations.transactional_api", "webhooks_out.api"]


def test_every_api_operation_names_an_existing_permission():
    """A new endpoint without ``@requires`` would be open to every token holder: refuse it here."""
    operations = [(method, path, op.view_func)
                  for module in LEAF_ROUTERS
                  for path, view in import_module(module).router.path_operations.items()
                  for op in view.operations for method in op.methods]
    documented = api.get_openapi_schema()["paths"]
    assert len(operations) == sum(len(methods) for methods in documented.values()), "a router is missing from LEAF_ROUTERS"
    unguarded = [f"{method} {path}" for method, path, view in operations if not getattr(view, "required_permission", "")]
    assert unguarded == []
    for _, _, view in operations:
        app_label, codename = view.required_permission.split(".")
        assert Permission.objects.filter(content_type__app_label=app_label, codename=codename).exists(), \
            view.required_permission


def test_the_permission_is_checked_before_the_body(client, world):
    """A caller without the permission learns nothing from validation errors about a resource it may not touch."""
    for role, status in [("editor", 403), ("superuser", 422)]:
        token = ApiToken.issue(user_for(role))[1]
        response = client.post("/api/v1/relays", {"port": "not a port"}, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {token}")
        assert response.status_code == status, (role, response.content)
    assert client.post("/api/v1/relays", {}, content_type="application/json").status_code == 401
