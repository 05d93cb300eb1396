"""API tokens: scopes narrow what a token may do, expiry and revocation end it, the last use is recorded."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from campaigns.models import ApiToken, MailingList

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def admin_user():
    return User.objects.create_superuser("root", "root@example.com", "x")


def call(client, method, path, token, body=None):
    kwargs = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if body is not None:
        return getattr(client, method)(path, body, content_type="application/json", **kwargs)
    return getattr(client, method)(path, **kwargs)


def test_a_read_only_token_reads_but_cannot_change_anything(client, admin_user):
    _, token = ApiToken.issue(admin_user, scopes=["read"])
    assert call(client, "get", "/api/v1/lists", token).status_code == 200
    refused = call(client, "post", "/api/v1/lists", token, {"name": "Sneaky"})
    assert refused.status_code == 403
    assert "scopes do not include campaigns.add_mailinglist" in refused.json()["detail"]
    assert not MailingList.objects.exists()


def test_a_token_scoped_to_one_permission_can_use_only_that(client, admin_user):
    _, token = ApiToken.issue(admin_user, scopes=["campaigns.view_campaign"])
    assert call(client, "get", "/api/v1/campaigns", token).status_code == 200
    assert call(client, "get", "/api/v1/lists", token).status_code == 403


def test_scopes_never_widen_what_the_user_may_do(client):
    nobody = User.objects.create_user("nobody")
    _, token = ApiToken.issue(nobody, scopes=["*"])
    assert call(client, "get", "/api/v1/lists", token).status_code == 403


def test_an_expired_token_is_refused_like_an_unknown_one(client, admin_user):
    row, token = ApiToken.issue(admin_user, expires_at=timezone.now() + timedelta(hours=1))
    assert call(client, "get", "/api/v1/lists", token).status_code == 200
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert call(client, "get", "/api/v1/lists", token).status_code == 401


def test_revoking_in_the_admin_stops_the_token_at_once(client, admin_user):
    row, token = ApiToken.issue(admin_user, name="ci")
    assert call(client, "get", "/api/v1/lists", token).status_code == 200
    row.refresh_from_db()
    assert row.last_used_at is not None  # the last use is recorded
    client.force_login(admin_user)
    client.post("/admin/campaigns/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    client.logout()
    assert call(client, "get", "/api/v1/lists", token).status_code == 401
    client.force_login(admin_user)
    assert "revoked" in client.get("/admin/campaigns/apitoken/").content.decode()


def test_the_admin_shows_a_new_token_once_and_never_again(client, admin_user):
    client.force_login(admin_user)
    created = client.post("/admin/campaigns/apitoken/add/", {"user": admin_user.pk, "name": "reports", "access": "read",
                                                             "expires_at_0": "", "expires_at_1": ""}, follow=True)
    page = created.content.decode()
    token = page.split("The new token is ", 1)[1].split(" ", 1)[0]
    row = ApiToken.objects.get(name="reports")
    assert row.scopes == ["read"] and row.digest == ApiToken.hash(token)
    assert token not in client.get(f"/admin/campaigns/apitoken/{row.pk}/change/").content.decode()


def create_api_token(*args):
    from django.conf import settings

    db = settings.DATABASES["default"]
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
                                         f"{db['PORT'] or 5432}/{db['NAME']}"}
    return subprocess.run([sys.executable, "manage.py", "create_api_token", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.django_db(transaction=True)
def test_the_command_issues_scoped_expiring_tokens_and_refuses_unknown_scopes(client):
    User.objects.create_superuser("ops", "ops@example.com", "x")
    made = create_api_token("ops", "--scope", "read", "--expires-in", "30")
    assert made.returncode == 0, made.stderr
    row = ApiToken.objects.get()
    assert row.scopes == ["read"]
    assert timedelta(days=29) < row.expires_at - timezone.now() <= timedelta(days=30)
    assert call(client, "get", "/api/v1/lists", made.stdout.strip()).status_code == 200
    assert call(client, "post", "/api/v1/lists", made.stdout.strip(), {"name": "x"}).status_code == 403

    bad = create_api_token("ops", "--scope", "campaigns.fly_campaign")
    assert bad.returncode != 0 and "--scope 'campaigns.fly_campaign' is neither" in bad.stderr
