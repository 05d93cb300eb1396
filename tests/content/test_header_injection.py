"""CR and LF in data never add a header: rejected at save, folded into one line at send time."""

from email import message_from_bytes, policy

import pytest

from campaigns.models import Campaign, Contact
from delivery.message import compile_campaign
from tests.content.conftest import FakeSend

INJECTION = "Eve\r\nBcc: victim@example.net\r\nX-Injected: yes"
EXPECTED_HEADERS = {"from", "to", "subject", "date", "message-id", "reply-to", "list-unsubscribe",
                    "list-unsubscribe-post", "feedback-id", "x-herald-campaign", "precedence", "mime-version",
                    "content-type"}


def headers_of(built):
    msg = message_from_bytes(built.data, policy=policy.default)
    names = [name.lower() for name in msg.keys()]
    assert "bcc" not in names and "x-injected" not in names
    assert len(names) == len(set(names)), f"a header appears twice: {names}"
    assert set(names) <= EXPECTED_HEADERS
    return msg


@pytest.fixture
def eve(db):
    return Contact.objects.create(email="eve@example.com", first_name=INJECTION, last_name="\n\r",
                                  attributes={"subject": "Sale\nBcc: victim@example.net", "name": INJECTION})


@pytest.mark.parametrize("field,template", [
    ("subject", "{{ contact.attributes.subject }}"),
    ("subject", "Hi {{ contact.first_name }}"),
    ("from_name", "{{ contact.attributes.name }}"),
    ("from_name", "{{ contact.first_name }} {{ contact.last_name }}"),
])
def test_rendered_header_values_stay_on_one_line(eve, field, template):
    values = {"subject": "Hello", "from_name": "Herald"} | {field: template}
    campaign = Campaign.objects.create(name="i", from_email="news@example.com", reply_to="r@example.com",
                                       html_body="<p>x</p>", **values)
    msg = headers_of(compile_campaign(campaign).build(FakeSend(1, eve.email), eve))
    value = str(msg["Subject"] if field == "subject" else msg["From"])
    assert "Bcc: victim@example.net" in value, "the text stays, inside its own header"


def test_recipient_address_with_line_breaks(db, campaign, alice):
    built = compile_campaign(campaign).build(FakeSend(1, "alice@example.com\r\nBcc: victim@example.net"), alice)
    headers_of(built)
    assert "\r" not in built.rcpt and "\n" not in built.rcpt


@pytest.mark.parametrize("field", ["from_email", "reply_to", "subject", "from_name"])
def test_literal_values_stored_without_validation_are_folded(db, alice, field):
    values = {"subject": "Hello", "from_name": "Herald", "from_email": "news@example.com", "reply_to": "r@example.com"}
    values[field] = values[field] + "\r\nBcc: victim@example.net\nX-Injected: yes"
    campaign = Campaign.objects.create(name="i", html_body="<p>x</p>", **values)
    headers_of(compile_campaign(campaign).build(FakeSend(1, alice.email), alice))


def test_body_values_cannot_forge_mime_parts(db, alice):
    campaign = Campaign.objects.create(name="b", subject="s", from_email="news@example.com",
                                       html_body="<p>{{ contact.attributes.evil }}</p>")
    compiled = compile_campaign(campaign)
    alice.attributes = {"evil": f"\r\n--{compiled.boundary}\r\nContent-Type: text/html\r\n\r\n<h1>forged</h1>"}
    msg = headers_of(compiled.build(FakeSend(1, alice.email), alice))
    assert len(msg.get_payload()) == 2
