"""POST /transactional: rendered, sent once per Idempotency-Key, visible among the messages with its status."""

import base64

import pytest

from delivery import engine
from delivery.models import Send
from submission.models import OutboundMessage
from tests.automations.conftest import template

pytestmark = pytest.mark.django_db


def post(api, key=None, **body):
    body = {"template": "reset", "to": "dana@example.com", "data": {"link": "https://app.example/reset/123"}, **body}
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return api.post("/api/v1/transactional", body, content_type="application/json", **headers)


@pytest.fixture
def reset():
    return template("reset", "Reset your password", body='<p><a href="{{ data.link }}">Choose a new password</a></p>',
                    track=False)


def test_a_repeated_key_returns_the_first_result_and_sends_nothing_more(api, reset, relay, sink):
    first = post(api, key="order-17-reset")
    assert first.status_code == 201, first.content
    again = post(api, key="order-17-reset", data={"link": "https://app.example/reset/999"})
    assert again.status_code == 200
    assert again.json()["replayed"] and again.json()["id"] == first.json()["id"]
    assert OutboundMessage.objects.count() == 1 and Send.objects.count() == 1

    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    (got,) = sink.received
    assert got.message["Subject"] == "Reset your password"
    assert "https://app.example/reset/123" in got.message.get_body(("html",)).get_content()
    shown = api.get(f"/api/v1/messages/{first.json()['message_id']}").json()
    assert shown["subject"] == "Reset your password"


def test_attachments_are_size_capped(api, reset, settings):
    settings.HERALD_TRANSACTIONAL_MAX_ATTACHMENTS = 1000
    small = {"filename": "invoice.pdf", "content_type": "application/pdf",
             "content_base64": base64.b64encode(b"%PDF-1.4 tiny").decode()}
    assert post(api, key="a", attachments=[small]).status_code == 201
    big = {**small, "content_base64": base64.b64encode(b"x" * 2000).decode()}
    response = post(api, key="b", attachments=[big])
    assert response.status_code == 413 and "attachments" in response.json()["detail"]
    assert post(api, key="c", template="nope").status_code == 404
