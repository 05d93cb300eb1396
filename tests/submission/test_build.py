"""What a recipient receives for a submitted message: build_for_send."""

import base64
from email import message_from_bytes, policy

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from delivery import tokens
from delivery.models import Send, SendingDomain
from submission.build import build_for_send, link_for
from submission.models import OutboundMessage
from tests.submission.conftest import make_credential

pytestmark = pytest.mark.django_db

HTML_MESSAGE = (
    b"From: Shop <shop@example.com>\r\nTo: bob@dest.test\r\nBcc: boss@example.com\r\nSubject: Your receipt\r\n"
    b"X-Herald-Tag: receipts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee https://shop.example.com/order/1\r\n"
    b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><p><a href=\"https://shop.example.com/order/1?a=1&amp;b=2\">Order</a>"
    b" <a href='mailto:help@example.com'>Help</a></p></body></html>\r\n--b1--\r\n"
)


def stored(raw, **credential_fields):
    credential = make_credential(username="shop", **credential_fields)
    outbound = OutboundMessage.objects.create(
        credential=credential, mail_from="shop@example.com", from_header="Shop <shop@example.com>", from_domain="example.com",
        message_id="<fixed-1@example.com>", raw=raw, size=len(raw), recipients=1, tag="receipts",
    )
    send = Send.objects.create(email="bob@dest.test", domain="dest.test", outbound_id=outbound.pk)
    return outbound, send


def test_internal_and_blind_headers_are_removed_and_missing_ids_added(db):
    raw = b"From: shop@example.com\r\nTo: bob@dest.test\r\nBcc: boss@example.com\r\nX-Herald-Tag: receipts\r\n" \
          b"Subject: Hi\r\n\r\nBody line\r\n.leading dot\r\n"
    outbound, send = stored(raw)
    built = build_for_send(send)
    assert built.mail_from == tokens.verp_address(send.pk) and built.rcpt == "bob@dest.test"
    assert built.message_id == "fixed-1@example.com"
    msg = message_from_bytes(built.data, policy=policy.SMTP)
    assert msg["X-Herald-Tag"] is None and msg["Bcc"] is None
    assert msg["Message-ID"] == "<fixed-1@example.com>" and msg["Date"]
    assert built.data.endswith(b"\r\n\r\nBody line\r\n.leading dot\r\n")


def test_client_message_id_and_date_are_kept_once(db):
    raw = b"From: shop@example.com\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <own@example.com>\r\n\r\nx\r\n"
    _, send = stored(raw)
    data = build_for_send(send).data
    assert data.count(b"Message-ID:") == 1 and data.count(b"Date:") == 1
    assert b"Date: Mon, 02 Mar 2026 10:00:00 +0000" in data


def test_message_is_dkim_signed_for_a_configured_sending_domain(db):
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    SendingDomain.objects.create(domain="example.com", selector="s1", private_key=pem.decode())
    _, send = stored(HTML_MESSAGE)
    data = build_for_send(send).data
    assert data.startswith(b"DKIM-Signature:") and b"d=example.com" in data[:400]

    def dns(name, timeout=5):
        assert name == b"s1._domainkey.example.com."
        return b"v=DKIM1; k=rsa; p=" + public

    assert dkim.verify(data, dnsfunc=dns)


def test_without_tracking_the_body_is_delivered_untouched(db):
    _, send = stored(HTML_MESSAGE, tracking=False)
    data = build_for_send(send).data
    assert data.split(b"\r\n\r\n", 1)[1] == HTML_MESSAGE.split(b"\r\n\r\n", 1)[1]
    assert tokens.open_url(send.pk).encode() not in data


def test_tracking_rewrites_links_and_adds_an_open_pixel(db):
    _, send = stored(HTML_MESSAGE, tracking=True)
    msg = message_from_bytes(build_for_send(send).data, policy=policy.default)
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert tokens.click_url(send.pk, 0) in html and "shop.example.com/order" not in html
    assert "mailto:help@example.com" in html
    assert tokens.open_url(send.pk) in html
    assert "https://shop.example.com/order/1" in text
    assert link_for(send, 0) == "https://shop.example.com/order/1?a=1&b=2"
    assert link_for(send, 1) is None
