"""Internationalised mail on the wire: SMTPUTF8 (RFC 6531) and BODY=8BITMIME (RFC 6152), never a silent downgrade."""

import pytest
from aiosmtpd.controller import Controller

from campaigns.models import Suppression
from delivery import engine, lifecycle
from delivery.classify import FAILED, classify_reply
from delivery.message import BuiltMessage
from delivery.models import Send
from delivery.smtp import Connection, Endpoint
from submission.models import OutboundMessage
from tests.delivery.conftest import drain
from tests.submission.conftest import make_credential
from tests.support.smtp import Sink, SinkHandler
from tracking.models import Event


class OptionsHandler(SinkHandler):
    """The test sink's handler, recording each transaction's MAIL parameters; can hide 8BITMIME and offer PIPELINING."""

    def __init__(self, sink, eight_bit, pipelining):
        super().__init__(sink)
        self.eight_bit, self.pipelining = eight_bit, pipelining

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not self.eight_bit:
            responses = [r for r in responses if r != "250-8BITMIME"]
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.sink.options[envelope.rcpt_tos[0]] = list(envelope.mail_options)
        return await super().handle_DATA(server, session, envelope)


class OptionsSink(Sink):
    def __init__(self, smtputf8=True, eight_bit=True, pipelining=True):
        super().__init__()
        self.options = {}
        self.controller = Controller(OptionsHandler(self, eight_bit, pipelining), hostname=self.hostname,
                                     port=self.port, enable_SMTPUTF8=smtputf8, ready_timeout=10)


def message(rcpt, subject="Hello", body="plain ASCII body"):
    data = f"From: shop@herald.test\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n" \
           f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    return BuiltMessage("bounces+x@herald.test", rcpt, data.encode("utf-8"), f"{rcpt}-id")


def send(sink, messages):
    conn = Connection(Endpoint("127.0.0.1", sink.port))
    conn.open()
    try:
        results, leftovers = conn.send_many(messages)
    finally:
        conn.close()
    assert leftovers == []
    return {msg.rcpt: reply for msg, reply in results}


MIXED = [
    message("ascii1@herald.test"),
    message("jürgen@bücher.test", subject="Grüße"),  # UTF-8 envelope and header
    message("utf8-header@herald.test", subject="Ünïcode subject"),  # UTF-8 header only
    message("eight-bit@herald.test", body="Grüße aus Köln"),  # 8-bit body, ASCII headers
    message("ascii2@herald.test"),
]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "sequential"])
def test_utf8_mail_goes_with_smtputf8_and_8bitmime_when_offered(pipelining):
    with OptionsSink(pipelining=pipelining) as sink:
        replies = send(sink, MIXED)
    assert {rcpt: code for rcpt, (code, _) in replies.items()} == dict.fromkeys(replies, 250)
    params = {rcpt: {o for o in options if not o.startswith("SIZE=")} for rcpt, options in sink.options.items()}
    assert params == {
        "ascii1@herald.test": set(), "ascii2@herald.test": set(),
        "jürgen@bücher.test": {"SMTPUTF8"}, "utf8-header@herald.test": {"SMTPUTF8"},
        "eight-bit@herald.test": {"BODY=8BITMIME"},
    }
    received = {item.rcpt_tos[0]: item.message for item in sink.received}
    assert received["jürgen@bücher.test"]["Subject"] == "Grüße"
    assert "Grüße aus Köln" in received["eight-bit@herald.test"].get_content()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "sequential"])
def test_utf8_mail_fails_clearly_when_the_server_lacks_smtputf8(pipelining):
    with OptionsSink(smtputf8=False, pipelining=pipelining) as sink:
        replies = send(sink, MIXED)
    for rcpt in ("jürgen@bücher.test", "utf8-header@herald.test"):
        code, text = replies[rcpt]
        assert code == 554 and text.startswith("5.6.7") and "does not offer SMTPUTF8" in text
        # A failure of the message, not of the address: no bounce, no suppression.
        assert classify_reply(code, text).status == FAILED and not classify_reply(code, text).suppress
    # Nothing was downgraded and sent anyway; the rest of the batch went through.
    assert sorted(sink.options) == ["ascii1@herald.test", "ascii2@herald.test", "eight-bit@herald.test"]


def test_an_8bit_body_fails_clearly_when_the_server_lacks_8bitmime():
    with OptionsSink(smtputf8=False, eight_bit=False) as sink:
        replies = send(sink, [message("eight-bit@herald.test", body="Grüße"), message("ascii1@herald.test")])
    code, text = replies["eight-bit@herald.test"]
    assert code == 554 and text.startswith("5.6.3") and "does not offer 8BITMIME" in text
    assert replies["ascii1@herald.test"][0] == 250 and list(sink.options) == ["ascii1@herald.test"]


@pytest.mark.django_db
def test_a_campaign_in_german_needs_no_smtputf8(make_relay, make_campaign):
    # Herald's own messages encode non-ASCII headers (RFC 2047) and bodies, so any relay takes them.
    campaign = make_campaign(["anna@example.com"], subject="Grüße, {{ contact.first_name }}",
                             html_body="<p>Schöne Grüße aus Köln</p>", text_body="Schöne Grüße aus Köln")
    with OptionsSink(smtputf8=False, eight_bit=False) as sink:
        make_relay(sink.port)
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
    assert Send.objects.get().status == Send.Status.SENT
    assert sink.received[0].message["Subject"] == "Grüße, anna"


@pytest.mark.django_db
def test_a_submitted_utf8_message_fails_with_its_reason_when_the_relay_lacks_smtputf8(make_relay):
    raw = "From: Jürgen <jürgen@example.com>\r\nTo: bob@dest.test\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    outbound = OutboundMessage.objects.create(
        credential=make_credential(username="shop"), mail_from="jürgen@example.com",
        from_header="Jürgen <jürgen@example.com>", message_id="<utf8-1@example.com>", raw=raw, size=len(raw),
        recipients=1,
    )
    send = Send.objects.create(email="bob@dest.test", domain="dest.test", outbound_id=outbound.pk)
    with OptionsSink(smtputf8=False) as sink:
        make_relay(sink.port)
        engine.send_batch([send.pk])
    send.refresh_from_db()
    assert send.status == Send.Status.FAILED and "does not offer SMTPUTF8" in send.smtp_reply
    assert not sink.received and not Suppression.objects.exists()
    event = Event.objects.get()
    assert event.type == "failed" and "5.6.7" in event.diagnostic
