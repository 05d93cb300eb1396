"""Outgoing webhooks: signed per Standard Webhooks, delivered from the outbox with retries, never into private networks."""

import base64
import hashlib
import hmac
import json
import quopri
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.utils import timezone

from campaigns.models import ApiToken, Contact
from delivery import engine, routing
from delivery.models import Relay, Send
from submission.models import OutboundMessage
from tracking.events import record
from tracking.models import Event
from webhooks_out import deliver, notices
from webhooks_out.models import DeliveryAttempt, Endpoint, OutboxMessage

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP endpoint on loopback that answers ``fail_first`` requests with 500, then 204."""

    def __init__(self, fail_first=0):
        self.requests, self.fail_first = [], fail_first
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append((dict(self.headers), body))
                code = 500 if len(owner.requests) <= owner.fail_first else 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def allow_loopback(settings):
    settings.HERALD_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def api(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {ApiToken.issue(user)[1]}"
    return client


def make_endpoint(api, url, **fields):
    response = api.post("/api/v1/webhooks", {"url": url, "event_types": ["opened", "clicked"], **fields},
                        content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()


def opened(email="olga@example.com"):
    person = Contact.objects.get_or_create(email=email)[0]
    send = Send.objects.create(contact=person, email=email, domain="example.com", status=Send.Status.SENT)
    return record(Event.Type.OPEN, send)[0]


def verify(secret: str, headers: dict, body: bytes, now: int, tolerance: int = 300) -> dict:
    """Standard Webhooks verification, written from the specification (not Herald's code)."""
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(now - int(stamp)) <= tolerance, "timestamp outside the tolerance"
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.{body.decode()}".encode(), hashlib.sha256).digest())
    given = [part.split(",", 1)[1] for part in headers["webhook-signature"].split(" ") if part.startswith("v1,")]
    assert any(hmac.compare_digest(expected.decode(), g) for g in given), "no valid v1 signature"
    return json.loads(body)


def test_an_open_is_posted_signed_and_verifies(api, receiver, allow_loopback):
    endpoint = make_endpoint(api, receiver.url)
    assert endpoint["secret"].startswith("whsec_")
    assert "secret" not in api.get(f"/api/v1/webhooks/{endpoint['id']}").json()
    event = opened()
    assert deliver.deliver_due() == 1
    ((headers, body),) = receiver.requests
    headers = {k.lower(): v for k, v in headers.items()}
    payload = verify(endpoint["secret"], headers, body, int(timezone.now().timestamp()))
    assert payload["type"] == "opened" and payload["data"]["event_id"] == event.pk
    assert payload["data"]["email"] == "olga@example.com" and payload["id"] == headers["webhook-id"]
    # A rotated secret signs from then on; the old one no longer verifies.
    rotated = api.post(f"/api/v1/webhooks/{endpoint['id']}/rotate-secret").json()["secret"]
    opened("pia@example.com")
    deliver.deliver_due()
    headers, body = receiver.requests[1]
    headers = {k.lower(): v for k, v in headers.items()}
    verify(rotated, headers, body, int(timezone.now().timestamp()))
    with pytest.raises(AssertionError):
        verify(endpoint["secret"], headers, body, int(timezone.now().timestamp()))


def test_an_endpoint_that_fails_then_recovers_gets_every_event_once_it_is_back(api, allow_loopback):
    flaky = Receiver(fail_first=2)
    try:
        endpoint = make_endpoint(api, flaky.url)
        opened()
        now = timezone.now()
        assert deliver.deliver_due(now=now) == 0
        row = OutboxMessage.objects.get()
        assert row.status == "pending" and row.next_attempt_at == now + timedelta(seconds=10)
        assert deliver.deliver_due(now=now + timedelta(seconds=5)) == 0 and len(flaky.requests) == 1  # not yet due
        assert deliver.deliver_due(now=now + timedelta(seconds=11)) == 0  # second failure: waits 20 s now
        assert OutboxMessage.objects.get().next_attempt_at == now + timedelta(seconds=31)
        assert deliver.deliver_due(now=now + timedelta(seconds=31)) == 1
        assert OutboxMessage.objects.get().status == "delivered"
        log = list(DeliveryAttempt.objects.order_by("id").values_list("status_code", "ok"))
        assert log == [(500, False), (500, False), (204, True)]
        assert len({h["webhook-id"] for h, _ in flaky.requests}) == 1, "every attempt carries the same webhook-id"
        assert api.get(f"/api/v1/webhooks/{endpoint['id']}").json()["consecutive_failures"] == 0
    finally:
        flaky.close()


def test_persistent_failure_opens_the_breaker_then_switches_the_endpoint_off(api, allow_loopback, settings):
    settings.HERALD_WEBHOOK_BREAKER_FAILURES = 2
    dead = Receiver(fail_first=1000)
    try:
        endpoint = make_endpoint(api, dead.url)
        opened()
        now = timezone.now()
        deliver.deliver_due(now=now)
        deliver.deliver_due(now=now + timedelta(seconds=11))
        assert Endpoint.objects.get().breaker_until == now + timedelta(seconds=21)
        requests = len(dead.requests)
        opened("second@example.com")  # due at once, but the breaker holds it
        deliver.deliver_due(now=now + timedelta(seconds=15))
        assert len(dead.requests) == requests
        deliver.deliver_due(now=now + timedelta(days=3, seconds=30))
        shown = api.get(f"/api/v1/webhooks/{endpoint['id']}").json()
        assert not shown["enabled"] and "every delivery failed" in shown["disabled_reason"]
        # Manual redelivery once the receiver is fixed and the endpoint enabled again.
        dead.fail_first = 0
        api.patch(f"/api/v1/webhooks/{endpoint['id']}", {"enabled": True}, content_type="application/json")
        api.post(f"/api/v1/webhooks/{endpoint['id']}/redeliver", {"ids": list(
            OutboxMessage.objects.values_list("id", flat=True))}, content_type="application/json")
        assert deliver.deliver_due() == 2
    finally:
        dead.close()


def notices_made():
    return list(Send.objects.filter(outbound_id__in=OutboundMessage.objects.filter(tag=notices.TAG).values("id"))
                .values_list("id", flat=True))


def test_the_operator_is_mailed_once_when_an_endpoint_is_switched_off(api, allow_loopback, settings, sink,
                                                                       django_capture_on_commit_callbacks,
                                                                       django_user_model):
    django_user_model.objects.create_user("viewer", "viewer@example.com", "pw", is_staff=True)  # may not change them
    Relay.objects.create(name="loopback", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    dead = Receiver(fail_first=1000)
    try:
        endpoint = make_endpoint(api, dead.url, description="CRM sync")
        opened()
        opened("second@example.com")
        now = timezone.now()
        with django_capture_on_commit_callbacks(execute=True):
            deliver.deliver_due(now=now)
        assert not notices_made(), "no notice while the endpoint is still on"
        with django_capture_on_commit_callbacks(execute=True):
            deliver.deliver_due(now=now + timedelta(days=3, seconds=30))
            deliver.deliver_due(now=now + timedelta(days=4))  # already off: no second notice
        (notice,) = notices_made()
        engine.send_batch([notice])
        sink.wait_for(1)
    finally:
        dead.close()
        routing.forget_relay()
    (got,) = sink.received
    assert got.rcpt_tos == ["root@example.com"]
    assert got.message["Subject"] == f"Webhook endpoint switched off: {dead.url}"
    text = quopri.decodestring(got.data.split(b"\r\n\r\n", 1)[1]).decode()
    assert "CRM sync" in text and "every delivery failed since" in text, text
    assert "0 events wait for it" in text and "2 events went past the retry window" in text, text
    assert f"/admin/webhooks_out/endpoint/{endpoint['id']}/change/" in text


def test_an_endpoint_owing_more_than_the_outbox_limit_is_switched_off_once_with_a_notice(
        api, allow_loopback, settings, django_capture_on_commit_callbacks):
    settings.HERALD_WEBHOOK_OUTBOX_LIMIT = 1
    endpoint = make_endpoint(api, "http://127.0.0.1:9/hooks")
    opened()
    assert deliver.enforce_limit() == [], "one event waiting is within the limit"
    opened("second@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver.enforce_limit() == [endpoint["id"]]
        assert deliver.enforce_limit() == [], "already off: not switched off again"
    shown = api.get(f"/api/v1/webhooks/{endpoint['id']}").json()
    assert not shown["enabled"] and "more than 1 events waiting" in shown["disabled_reason"]
    assert len(notices_made()) == 1
    assert OutboxMessage.objects.filter(status="pending").count() == 2, "the waiting events are kept"


def test_events_are_batched_where_the_endpoint_allows(api, receiver, allow_loopback):
    make_endpoint(api, receiver.url, batch_size=10)
    for n in range(3):
        opened(f"p{n}@example.com")
    assert deliver.deliver_due() == 3
    ((_, body),) = receiver.requests
    assert [item["data"]["email"] for item in json.loads(body)] == ["p0@example.com", "p1@example.com", "p2@example.com"]


def test_the_outbox_row_shares_the_event_transaction(api, receiver, allow_loopback):
    make_endpoint(api, receiver.url)
    with pytest.raises(RuntimeError), transaction.atomic():
        opened()
        assert OutboxMessage.objects.count() == 1
        raise RuntimeError("the request failed after recording the open")
    assert not OutboxMessage.objects.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/hook",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/hook", "http://[::ffff:192.168.0.1]/"])
def test_private_and_loopback_endpoints_are_refused(api, url):
    response = api.post("/api/v1/webhooks", {"url": url, "event_types": ["opened"]}, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("url:") and "HERALD_WEBHOOK_ALLOW_PRIVATE" in response.json()["detail"]


def test_an_endpoint_allowed_once_is_refused_at_delivery_when_private_addresses_no_longer_are(api, receiver, settings):
    settings.HERALD_WEBHOOK_ALLOW_PRIVATE = True
    make_endpoint(api, receiver.url)
    settings.HERALD_WEBHOOK_ALLOW_PRIVATE = False
    opened()
    assert deliver.deliver_due() == 0
    assert receiver.requests == []
    assert DeliveryAttempt.objects.get().response.startswith("refused:")
