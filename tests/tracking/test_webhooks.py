"""ESP tracking webhooks (Amazon SES, SendGrid, Mailgun, Postmark) with their documented payloads."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from campaigns.models import Suppression
from tests.support.urls import url_settings
from tracking.models import Event

pytestmark = pytest.mark.django_db

SECRET = "herald:webhook-secret"
MAILGUN_KEY = "key-mailgun-signing-0123456789"
RCPT = "bob@example.net"


@pytest.fixture(autouse=True)
def anymail_settings():
    # Webhooks are served only with a secret (the shipped default has none: tests/security/test_esp_webhooks.py).
    with url_settings(ANYMAIL={"WEBHOOK_SECRET": SECRET, "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY}):
        yield


def auth(secret=SECRET):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def post_json(client, url, payload, secret=SECRET, **headers):
    return client.post(url, json.dumps(payload), content_type="application/json", **auth(secret), **headers)


def ses_notification(message):
    body = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(message),
        "Timestamp": "2026-03-02T09:00:10.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxY=",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
    }
    return body, {"HTTP_X_AMZ_SNS_MESSAGE_TYPE": "Notification", "HTTP_X_AMZ_SNS_MESSAGE_ID": body["MessageId"]}


def ses_mail(message_id_header):
    return {
        "timestamp": "2026-03-02T09:00:00.000Z",
        "source": "news@shop.example",
        "messageId": "0100018e0a8b1234-5678abcd-0000-0000-0000-000000000000-000000",
        "destination": [RCPT],
        "headersTruncated": False,
        "headers": [{"name": "Message-ID", "value": f"<{message_id_header}>"}],
        "commonHeaders": {"from": ["news@shop.example"], "to": [RCPT], "messageId": f"<{message_id_header}>",
                          "subject": "Spring news"},
    }


def test_ses_permanent_bounce_becomes_a_hard_bounce_and_suppresses(client, bob_send):
    message = {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": RCPT, "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": "2026-03-02T09:00:09.000Z", "feedbackId": "0100018e-feedback",
            "reportingMTA": "dsn; a8-30.smtp-out.amazonses.com",
        },
        "mail": ses_mail(bob_send.message_id),
    }
    body, headers = ses_notification(message)
    response = post_json(client, "/webhooks/anymail/amazon_ses/tracking/", body, **headers)
    assert response.status_code == 200
    event = Event.objects.get()
    assert (event.type, event.send_id, event.source, event.status) == ("bounce", bob_send.pk, "amazon-ses", "5.1.1")
    assert Suppression.objects.get().reason == "hard_bounce"
    # SNS retries deliveries: the same notification is recorded once.
    post_json(client, "/webhooks/anymail/amazon_ses/tracking/", body, **headers)
    assert Event.objects.count() == 1


def test_ses_transient_bounce_is_soft(client, bob_send):
    message = {
        "notificationType": "Bounce",
        "bounce": {"bounceType": "Transient", "bounceSubType": "MailboxFull",
                   "bouncedRecipients": [{"emailAddress": RCPT}], "timestamp": "2026-03-02T09:00:09.000Z",
                   "feedbackId": "f2"},
        "mail": ses_mail(bob_send.message_id),
    }
    body, headers = ses_notification(message)
    post_json(client, "/webhooks/anymail/amazon_ses/tracking/", body, **headers)
    assert Event.objects.get().type == "soft_bounce"
    assert not Suppression.objects.exists()


def test_ses_complaint(client, bob_send):
    message = {
        "notificationType": "Complaint",
        "complaint": {"complainedRecipients": [{"emailAddress": RCPT}], "timestamp": "2026-03-02T10:00:00.000Z",
                      "feedbackId": "f3", "complaintFeedbackType": "abuse", "userAgent": "ExampleCorp Feedback Loop"},
        "mail": ses_mail(bob_send.message_id),
    }
    body, headers = ses_notification(message)
    post_json(client, "/webhooks/anymail/amazon_ses/tracking/", body, **headers)
    assert Event.objects.get().type == "complaint"
    assert Suppression.objects.get().reason == "complaint"


def test_webhook_without_the_secret_is_refused_and_records_nothing(client, bob_send):
    payload = [{"email": RCPT, "timestamp": 1772442000, "event": "spamreport", "sg_event_id": "x1",
                "sg_message_id": "m1"}]
    response = post_json(client, "/webhooks/anymail/sendgrid/tracking/", payload, secret="herald:wrong")
    assert response.status_code == 400
    response = client.post("/webhooks/anymail/sendgrid/tracking/", json.dumps(payload), content_type="application/json")
    assert response.status_code == 400
    assert not Event.objects.exists() and not Suppression.objects.exists()


def test_sendgrid_events(client, bob_send, alice_send):
    payload = [
        # smtp-id is the Message-ID header of the message Herald handed to SendGrid.
        {"email": RCPT, "timestamp": 1772442000, "smtp-id": f"<{bob_send.message_id}>", "event": "bounce",
         "category": ["spring"], "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", "reason": "550 5.1.1 unknown recipient",
         "status": "5.1.1", "type": "bounce"},
        {"email": "alice@example.org", "timestamp": 1772442100, "event": "open", "sg_event_id": "open-1",
         "sg_message_id": "m2", "useragent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36",
         "ip": "255.255.255.255", "herald_send_id": str(alice_send.pk)},
        {"email": "alice@example.org", "timestamp": 1772442200, "event": "click", "sg_event_id": "click-1",
         "sg_message_id": "m2", "url": "https://shop.example/spring", "useragent": "Mozilla/5.0 Chrome/126.0",
         "herald_send_id": str(alice_send.pk)},
    ]
    assert post_json(client, "/webhooks/anymail/sendgrid/tracking/", payload).status_code == 200
    events = {e.type: e for e in Event.objects.all()}
    assert events["bounce"].send_id == bob_send.pk and events["bounce"].source == "sendgrid"
    assert events["open"].send_id == alice_send.pk and events["open"].machine is False
    assert events["click"].url == "https://shop.example/spring"
    assert Suppression.objects.get().email == RCPT


def mailgun_signed(event_data, key=MAILGUN_KEY):
    timestamp, token = str(int(time.time())), "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": timestamp, "token": token, "signature": signature}, "event-data": event_data}


def mailgun_failure(message_id, severity="permanent"):
    return {
        "id": "G9Bn5sl1TC6nu79C8C0bwg", "timestamp": 1772442000.123, "event": "failed", "severity": severity,
        "reason": "bounce" if severity == "permanent" else "generic", "recipient": RCPT, "log-level": "error",
        "delivery-status": {"code": 550, "message": "5.1.1 The email account that you tried to reach does not exist",
                            "description": "", "attempt-no": 1},
        "message": {"headers": {"to": RCPT, "message-id": message_id, "from": "news@shop.example",
                                "subject": "Spring news"}},
        "user-variables": {}, "flags": {"is-routed": False},
    }


def test_mailgun_signed_permanent_failure(client, bob_send):
    response = post_json(client, "/webhooks/anymail/mailgun/tracking/", mailgun_signed(mailgun_failure(bob_send.message_id)))
    assert response.status_code == 200
    event = Event.objects.get()
    assert (event.type, event.send_id, event.source) == ("bounce", bob_send.pk, "mailgun")


def test_mailgun_bad_signature_is_refused(client, bob_send):
    payload = mailgun_signed(mailgun_failure(bob_send.message_id), key="not-the-key")
    assert post_json(client, "/webhooks/anymail/mailgun/tracking/", payload).status_code == 400
    assert not Event.objects.exists()


def test_postmark_hard_bounce_and_open(client, bob_send):
    bounce = {"RecordType": "Bounce", "Type": "HardBounce", "TypeCode": 1, "ID": 4323372036854775807,
              "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
              "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
              "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
              "Email": RCPT, "From": "news@shop.example", "BouncedAt": "2026-03-02T09:00:09.9070259Z",
              "Inactive": True, "CanActivate": True, "Subject": "Spring news", "MessageStream": "broadcast",
              "Metadata": {"herald_send_id": str(bob_send.pk)}}
    opened = {"RecordType": "Open", "FirstOpen": True, "Recipient": RCPT, "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
              "ReceivedAt": "2026-03-02T10:00:00Z", "Platform": "WebMail", "ReadSeconds": 5,
              "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
              "Metadata": {"herald_send_id": str(bob_send.pk)}, "MessageStream": "broadcast"}
    assert post_json(client, "/webhooks/anymail/postmark/tracking/", bounce).status_code == 200
    assert post_json(client, "/webhooks/anymail/postmark/tracking/", opened).status_code == 200
    events = {e.type: e for e in Event.objects.all()}
    assert events["bounce"].send_id == bob_send.pk and events["bounce"].source == "postmark"
    assert events["open"].machine is True  # Apple's privacy proxy
    assert Suppression.objects.get().reason == "hard_bounce"


def test_postmark_unsubscribe_unsubscribes_the_contact(client, bob, bob_send):
    change = {"RecordType": "SubscriptionChange", "MessageID": "883953f4", "ServerID": 23, "MessageStream": "broadcast",
              "ChangedAt": "2026-03-02T10:00:00Z", "Recipient": RCPT, "Origin": "Recipient", "SuppressSending": True,
              "SuppressionReason": "ManualSuppression", "Tag": "spring", "Metadata": {"herald_send_id": str(bob_send.pk)}}
    assert post_json(client, "/webhooks/anymail/postmark/tracking/", change).status_code == 200
    assert bob.subscriptions.get().status == "unsubscribed"
    assert Event.objects.get().type == "unsubscribe"
