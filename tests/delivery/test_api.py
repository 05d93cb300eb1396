"""The engine's JSON API: relays (password write-only, check), throttles, campaign actions with permissions."""

import pytest
from django.contrib.auth.models import Permission, User

from campaigns.models import ApiToken
from delivery.models import Relay
from delivery.tasks import start_campaign
from tests.delivery.conftest import SENDABLE_HTML
from tests.delivery.servers import Authenticator
from tests.support.smtp import Sink
from tests.support.tls import server_context

pytestmark = pytest.mark.django_db


def bearer(user):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)[1]}"}


@pytest.fixture
def sender():
    user = User.objects.create_user("sender")
    user.user_permissions.add(Permission.objects.get(codename="send_campaign"))
    return bearer(user)


@pytest.fixture
def viewer():
    """Manages relays and throttles and follows campaigns, but may not send them."""
    user = User.objects.create_user("viewer")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="delivery")
                              | Permission.objects.filter(codename="view_campaign"))
    return bearer(user)


def test_relay_password_is_write_only(client, viewer):
    body = {"name": "Main", "host": "smtp.example.com", "port": 587, "username": "u", "password": "pw-1"}
    created = client.post("/api/v1/relays", body, content_type="application/json", **viewer)
    assert created.status_code == 201
    relay = created.json()
    assert "password" not in relay and relay["has_password"] is True
    assert Relay.objects.get().password == "pw-1"

    changed = client.patch(f"/api/v1/relays/{relay['id']}", {"port": 2525, "password": ""}, content_type="application/json",
                           **viewer)
    assert changed.status_code == 200 and changed.json()["port"] == 2525
    assert Relay.objects.get().password == "pw-1"  # blank kept the old one
    assert "pw-1" not in client.get("/api/v1/relays", **viewer).content.decode()


def test_bad_relay_input_names_the_field(client, viewer):
    response = client.post("/api/v1/relays", {"name": "x", "host": "h", "security": "ssl"}, content_type="application/json",
                           **viewer)
    assert response.status_code == 422
    assert "security" in response.content.decode()


def test_relay_check_over_the_api_reports_refused_auth(client, viewer, certificate, settings):
    settings.HERALD_SMTP_CA_FILE = certificate[0]
    with Sink(tls_context=server_context(*certificate), require_starttls=True, authenticator=Authenticator()) as server:
        relay = Relay.objects.create(name="bad", host="127.0.0.1", port=server.port, username="herald", password="nope")
        response = client.post(f"/api/v1/relays/{relay.pk}/check", **viewer)
    result = response.json()
    assert response.status_code == 200 and result["ok"] is False
    assert result["message"].startswith("535 5.7.8") and f"127.0.0.1:{server.port}" in result["message"]


def test_throttles_crud_and_one_default(client, viewer):
    made = client.post("/api/v1/throttles", {"name": "google", "domains": "gmail.com, googlemail.com", "rate": 20,
                                             "period": "minute"}, content_type="application/json", **viewer)
    assert made.status_code == 201 and made.json()["domains"] == ["gmail.com", "googlemail.com"]
    assert client.post("/api/v1/throttles", {"name": "d1", "is_default": True}, content_type="application/json",
                       **viewer).status_code == 201
    second = client.post("/api/v1/throttles", {"name": "d2", "is_default": True}, content_type="application/json", **viewer)
    assert second.status_code == 409 and "is_default" in second.json()["detail"]


def test_sending_needs_the_permission(client, viewer, sender, make_campaign):
    campaign = make_campaign(["a@example.com", "b@example.com"], html_body=SENDABLE_HTML)
    assert client.post(f"/api/v1/campaigns/{campaign.pk}/send", **viewer).status_code == 403
    response = client.post(f"/api/v1/campaigns/{campaign.pk}/send", **sender)
    assert response.status_code == 202
    assert response.json()["status"] == "starting" and response.json()["recipients"] == 0
    start_campaign(campaign.pk)  # what the worker does with the task the request published
    progress = client.get(f"/api/v1/campaigns/{campaign.pk}/progress", **viewer).json()
    assert progress["status"] == "sending" and progress["recipients"] == 2 and progress["snapshot"] == 1
    assert progress["counts"]["queued"] == progress["counts"]["total"] == 2

    paused = client.post(f"/api/v1/campaigns/{campaign.pk}/pause", **sender).json()
    assert paused["status"] == "paused"
    again = client.post(f"/api/v1/campaigns/{campaign.pk}/send", **sender)
    assert again.status_code == 409 and "paused" in again.json()["detail"]
    assert client.post(f"/api/v1/campaigns/{campaign.pk}/cancel", **sender).json()["counts"]["cancelled"] == 2
    assert client.get(f"/api/v1/campaigns/{campaign.pk}/progress", **viewer).json()["status"] == "cancelled"


def test_schedule_takes_an_iso_time(client, sender, make_campaign):
    campaign = make_campaign(["a@example.com"], html_body=SENDABLE_HTML)
    response = client.post(f"/api/v1/campaigns/{campaign.pk}/schedule", {"scheduled_at": "2030-01-01T09:00:00Z"},
                           content_type="application/json", **sender)
    assert response.status_code == 200 and response.json()["status"] == "scheduled"


def test_control_characters_and_out_of_range_numbers_are_refused_with_the_field(client, viewer):
    for body, field in [
        ({"name": "Main\u0000", "host": "smtp.example.com"}, "name"),
        ({"name": "Main", "host": "smtp.example.com\r\nRCPT TO:<x@y>"}, "host"),
        ({"name": "Main", "host": "smtp.example.com", "max_connections": 2**40}, "max_connections"),
    ]:
        response = client.post("/api/v1/relays", body, content_type="application/json", **viewer)
        assert response.status_code == 422, body
        assert field in response.content.decode()
    assert not Relay.objects.exists()


def test_relay_groups_and_rules_route_mail_and_the_relays_health_shows_which_is_down(client, viewer, sender, sink,
                                                                                    make_campaign, settings):
    # The down relay stays in its backoff until the health is read, however slow the machine.
    settings.HERALD_RELAY_RETRY_SECONDS = 300
    from delivery import lifecycle
    from tests.delivery.conftest import drain
    from tests.support.smtp import free_port

    def post(url, body):
        response = client.post(url, body, content_type="application/json", **viewer)
        assert response.status_code == 201, response.content
        return response.json()

    down = post("/api/v1/relays", {"name": "down", "host": "127.0.0.1", "port": free_port(), "security": "none"})
    up = post("/api/v1/relays", {"name": "up", "host": "127.0.0.1", "port": sink.port, "security": "none", "weight": 2})
    group = post("/api/v1/relay-groups", {"name": "pair", "relays": [down["id"], up["id"]]})
    assert group["relays"] == sorted([down["id"], up["id"]]) and group["warnings"] == []
    rule = post("/api/v1/routing-rules", {"kind": "campaign", "group": group["id"]})
    assert client.get("/api/v1/routing-rules", **viewer).json() == [rule]

    campaign = make_campaign([f"r{i}@example.com" for i in range(12)])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    assert len(sink.recipients()) == 12

    health = {row["name"]: row for row in client.get("/api/v1/relays/health", **viewer).json()}
    assert health["down"]["state"] == "down" and "cannot connect to 127.0.0.1" in health["down"]["reason"]
    assert health["down"]["retry_in"] > 0 and health["down"]["replies"][0]["code"] is None
    assert health["up"]["state"] == "up" and health["up"]["replies"][0]["code"] == 250
    assert health["up"]["connections"] <= health["up"]["max_connections"]
    one = client.get(f"/api/v1/relays/{up['id']}/health", **viewer).json()
    assert one["rate"] > 0
    stats = client.get(f"/api/v1/campaigns/{campaign.pk}/stats", **viewer).json()
    assert stats["relays"] == [{"relay_id": up["id"], "relay": "up", "sent": 12, "bounced": 0}]


def test_a_group_names_relays_that_exist_and_source_addresses_that_are_addresses(client, viewer):
    missing = client.post("/api/v1/relay-groups", {"name": "g", "relays": [999]}, content_type="application/json",
                          **viewer)
    assert missing.status_code == 422 and "no such relay: 999" in missing.json()["detail"]
    bad = client.post("/api/v1/relay-groups", {"name": "g", "direct": True, "sources": "256.1.1.1 mta.example"},
                      content_type="application/json", **viewer)
    assert bad.status_code == 422 and "sources: line 1" in bad.json()["detail"]
