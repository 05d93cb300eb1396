"""The dashboard shows how the outbox grows: events waiting per endpoint, the oldest one's age, failing endpoints."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from webhooks_out.models import Endpoint, OutboxMessage, new_secret

pytestmark = pytest.mark.django_db


def endpoint(url, **fields):
    return Endpoint.objects.create(url=url, event_types=["opened"], secret=new_secret(), **fields)


def owe(to, count, age):
    at = timezone.now() - age
    OutboxMessage.objects.bulk_create([
        OutboxMessage(endpoint=to, msg_id=f"msg_{to.pk}_{n}", event_type="opened", payload={"type": "opened"},
                      next_attempt_at=at, created_at=at) for n in range(count)])


def test_the_dashboard_shows_the_backlog_its_oldest_event_and_the_failing_endpoint(admin_client, settings):
    settings.HERALD_WEBHOOK_OUTBOX_LIMIT = 1000
    healthy = endpoint("http://127.0.0.1:9/crm", description="CRM")
    down = endpoint("http://127.0.0.1:9/analytics", description="Analytics", consecutive_failures=7,
                    failing_since=timezone.now() - timedelta(hours=3),
                    breaker_until=timezone.now() + timedelta(minutes=20))
    owe(healthy, 2, timedelta(seconds=30))
    owe(down, 250, timedelta(hours=3, minutes=5))
    OutboxMessage.objects.filter(endpoint=healthy).update(status=OutboxMessage.Status.DELIVERED)
    owe(healthy, 1, timedelta(seconds=20))

    page = admin_client.get("/admin/").content.decode()
    block = page[page.index('id="dash-webhooks"'):]
    assert 'data-pending="251"' in block and 'data-failing="1"' in block
    assert "251 events waiting, the oldest for 3\xa0hours" in block
    rows = dict(re.findall(r'<tr data-endpoint="(\d+)" data-state="(\w+)">', block))
    assert rows == {str(healthy.pk): "healthy", str(down.pk): "breaker"}
    down_row = block[block.index(f'data-endpoint="{down.pk}"'):]
    assert ">250<" in down_row and "25.0 %" in down_row and "7 failures in a row, for 3\xa0hours" in down_row


def test_no_webhooks_block_without_endpoints(admin_client):
    assert 'id="dash-webhooks"' not in admin_client.get("/admin/").content.decode()
