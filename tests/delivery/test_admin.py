"""Staff pages: relay admin (password never shown back, check button), the send confirmation, lifecycle buttons."""

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from campaigns.models import Campaign, Suppression
from delivery.models import Relay, Send
from delivery.tasks import start_campaign
from tests.delivery.conftest import SENDABLE_HTML

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    user = User.objects.create_user("op", password="x", is_staff=True)
    for codename in ("send_campaign", "view_relay", "change_relay", "add_relay", "view_send"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return client


@pytest.fixture
def staff_without_send(client):
    user = User.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(user)
    return client


def test_relay_password_is_never_shown_back_and_blank_keeps_it(operator):
    relay = Relay.objects.create(name="Main", host="smtp.example.com", port=587, username="u", password="hunter2-secret")
    page = operator.get(reverse("admin:delivery_relay_change", args=[relay.pk]))
    assert page.status_code == 200
    assert "hunter2-secret" not in page.content.decode()
    assert "Check connection, TLS and login" in page.content.decode()
    form = {"name": "Main", "host": "smtp.example.com", "port": 2525, "security": "starttls", "verify_certificate": "on",
            "username": "u", "password": "", "helo_name": "", "max_connections": 8, "messages_per_connection": 1000,
            "idle_timeout": 30, "rate": 0, "rate_period": "second", "enabled": "on"}
    response = operator.post(reverse("admin:delivery_relay_change", args=[relay.pk]), form)
    assert response.status_code == 302
    relay.refresh_from_db()
    assert relay.port == 2525 and relay.password == "hunter2-secret"


def test_relay_check_button_reports_what_happened(operator, sink):
    relay = Relay.objects.create(name="Sink", host="127.0.0.1", port=sink.port, security="none")
    response = operator.get(reverse("admin:delivery_relay_check", args=[relay.pk]), follow=True)
    text = response.content.decode()
    assert f"127.0.0.1:{sink.port} accepts mail" in text


def test_send_confirmation_shows_the_count_after_suppressions_then_starts(operator, make_campaign):
    campaign = make_campaign(["a@example.com", "b@example.com", "c@example.com"], html_body=SENDABLE_HTML)
    Suppression.objects.create(email="c@example.com", reason="hard_bounce")
    url = reverse("delivery-admin:campaign-send", args=[campaign.pk])
    page = operator.get(url)
    assert page.status_code == 200 and "<strong>2</strong> recipients" in page.content.decode()
    assert operator.post(url).status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.STARTING
    start_campaign(campaign.pk)  # the worker's part
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING and Send.objects.filter(campaign=campaign).count() == 2


def test_lifecycle_buttons_and_progress(operator, make_campaign):
    campaign = make_campaign(["a@example.com"], html_body=SENDABLE_HTML)
    operator.post(reverse("delivery-admin:campaign-send", args=[campaign.pk]))
    start_campaign(campaign.pk)  # the worker's part
    assert operator.get(reverse("delivery-admin:campaign-pause", args=[campaign.pk])).status_code == 405  # POST only
    operator.post(reverse("delivery-admin:campaign-pause", args=[campaign.pk]))
    progress = operator.get(reverse("delivery-admin:campaign-progress", args=[campaign.pk])).json()
    assert progress["status"] == "paused" and progress["counts"]["total"] == 1
    operator.post(reverse("delivery-admin:campaign-resume", args=[campaign.pk]))
    operator.post(reverse("delivery-admin:campaign-cancel", args=[campaign.pk]))
    progress = operator.get(reverse("delivery-admin:campaign-progress", args=[campaign.pk])).json()
    assert progress["status"] == "cancelled" and progress["counts"]["cancelled"] == 1


def test_sending_needs_the_permission(staff_without_send, make_campaign):
    campaign = make_campaign(["a@example.com"])
    assert staff_without_send.post(reverse("delivery-admin:campaign-send", args=[campaign.pk])).status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_the_send_ledger_is_read_only(operator, make_campaign):
    campaign = make_campaign(["a@example.com"], html_body=SENDABLE_HTML)
    operator.post(reverse("delivery-admin:campaign-send", args=[campaign.pk]))
    start_campaign(campaign.pk)  # the worker's part
    listing = operator.get(reverse("admin:delivery_send_changelist") + "?status__exact=queued")
    assert listing.status_code == 200 and "a@example.com" in listing.content.decode()
    send = Send.objects.get()
    assert operator.post(reverse("admin:delivery_send_change", args=[send.pk]), {"status": "sent"}).status_code == 403


def test_the_throttle_form_says_a_burst_goes_on_top_of_the_rate(client):
    admin = User.objects.create_superuser("root", password="x")
    client.force_login(admin)
    page = client.get(reverse("admin:delivery_domainthrottle_add")).content.decode()
    assert "at most rate + burst" in page
    assert "100/s with a burst of 20: at most 120 in any one second" in page


def test_the_relay_pages_show_each_relays_health_traffic_and_latest_replies(operator, sink, make_relay, make_campaign,
                                                                            settings):
    settings.HERALD_RELAY_RETRY_SECONDS = 300  # still in its backoff when the pages are read, however slow the drain
    from delivery import lifecycle
    from delivery.models import RelayGroup, RoutingRule
    from tests.delivery.conftest import drain
    from tests.support.smtp import free_port

    down = make_relay(free_port(), name="gone")
    up = make_relay(sink.port, name="alive", max_connections=3)
    group = RelayGroup.objects.create(name="pair")
    group.relays.set([down, up])
    RoutingRule.objects.create(group=group)
    campaign = make_campaign([f"r{i}@example.com" for i in range(10)])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)

    listing = operator.get(reverse("admin:delivery_relay_changelist")).content.decode()
    # The list says the state and the start of the reason; the relay's page says it all.
    assert "down (relay gone: cannot connect to 127.0.0.1" in listing and ", retry in" in listing
    assert "messages/s" in listing and "of 3" in listing
    assert "down, tried again in" in operator.get(reverse("admin:delivery_relay_change", args=[down.pk])).content.decode()
    page = operator.get(reverse("admin:delivery_relay_change", args=[up.pk])).content.decode()
    assert "Recent replies" in page and "250 2.0.0 queued" in page
