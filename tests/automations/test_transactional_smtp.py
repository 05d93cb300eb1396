"""A template chosen by X-Herald-Template on mail submitted over SMTP: rendered per recipient with the message's data."""

import smtplib
from email.message import EmailMessage

import pytest

from delivery import engine
from delivery.models import Send
from submission.models import OutboundMessage
from tests.automations.conftest import contact, template
from tests.submission.conftest import connect, make_credential

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receipt():
    return template("receipt", "Your order {{ data.order }}", from_name="Example Shop",
                    body="<p>Hello {{ contact.first_name or 'there' }}, {{ data['items']|length }} items:"
                         "{% for item in data['items'] %} {{ item }}{% endfor %}.</p>", track=False)


def submission(extra_headers: dict, body="This body is replaced by the template.\n", attachment=None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "orders@example.com"
    msg["To"] = "dana@example.org"
    msg["Subject"] = "ignored"
    for name, value in extra_headers.items():
        msg[name] = value
    msg.set_content(body)
    if attachment:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="invoice-A-17.pdf")
    return msg


def send(server, client_tls, msg, to):
    with connect(server, client_tls) as smtp:
        return smtp.send_message(msg, from_addr="orders@example.com", to_addrs=to)


def test_the_named_template_is_rendered_for_each_recipient_with_the_messages_data(server, client_tls, relay, sink,
                                                                                 receipt):
    make_credential(hasher="md5", domains="example.com herald.example")
    contact("dana@example.org")
    data = '{"order": "A-17", "items": ["tea", "cups", "a teapot with a rather long name to fold the header"]}'
    msg = submission({"X-Herald-Template": "receipt", "X-Herald-Template-Data": data}, attachment=b"%PDF-1.4 tiny")
    assert send(server, client_tls, msg, ["dana@example.org", "newcomer@example.net"]) == {}

    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    got = {m.rcpt_tos[0]: m.message for m in sink.received}
    assert set(got) == {"dana@example.org", "newcomer@example.net"}
    for address, message in got.items():
        assert message["Subject"] == "Your order A-17"
        assert message["From"] == "Example Shop <hello@herald.example>"
        assert message["To"] == address
        assert message["X-Herald-Template"] is None and message["X-Herald-Template-Data"] is None
        (attached,) = list(message.iter_attachments())
        assert attached.get_filename() == "invoice-A-17.pdf" and attached.get_content() == b"%PDF-1.4 tiny"
    html = got["dana@example.org"].get_body(("html",)).get_content()
    assert "Hello Dana, 3 items: tea cups a teapot with a rather long name to fold the header." in html
    assert "Hello there, 3 items" in got["newcomer@example.net"].get_body(("html",)).get_content()
    assert "replaced" not in str(got["dana@example.org"])
    # Stored and shown like any transactional message: rendered subject, the template's tag.
    assert sorted(OutboundMessage.objects.values_list("subject", "tag")) == [
        ("Your order A-17", "transactional:receipt")] * 2


def test_data_may_come_as_a_json_body(server, client_tls, relay, sink, receipt):
    make_credential(hasher="md5", domains="example.com herald.example")
    msg = submission({"X-Herald-Template": str(receipt.pk)}, body='{"order": "B-2", "items": []}')
    msg.replace_header("Content-Type", "application/json")
    send(server, client_tls, msg, ["zoe@example.com"])
    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    (got,) = sink.received
    assert got.message["Subject"] == "Your order B-2"


def test_a_template_that_cannot_be_used_is_refused_with_the_reason(server, client_tls, receipt):
    make_credential(hasher="md5", domains="example.com herald.example")
    template("elsewhere", "Hi", from_email="news@other.example")
    cases = [
        ({"X-Herald-Template": "nope"}, "No template with id or slug 'nope'"),
        ({"X-Herald-Template": "receipt", "X-Herald-Template-Data": "{order: 1}"}, "not valid JSON"),
        ({"X-Herald-Template": "receipt", "X-Herald-Template-Data": "[1, 2]"}, "must be a JSON object"),
        ({"X-Herald-Template": "elsewhere"}, "which login 'alice' may not use"),
        ({"X-Herald-Template": "receipt", "X-Herald-Template-Data": '{"order": 1}'}, "could not be rendered"),
    ]
    for headers, says in cases:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(server, client_tls, submission(headers), ["dana@example.org"])
        assert refused.value.smtp_code == 550 and says in refused.value.smtp_error.decode(), headers
    assert not OutboundMessage.objects.exists() and not Send.objects.exists()
