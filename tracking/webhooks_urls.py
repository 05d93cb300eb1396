"""The ESP tracking webhook URLs, served only when a webhook secret is configured.

anymail checks each request's HTTP basic auth against ANYMAIL_WEBHOOK_SECRET,
but with no secret it serves anyone and only warns, and an open webhook lets
anyone on the web report bounces and complaints. So the rule is simple: no
secret, no webhook (every /webhooks/anymail/ URL answers 404); with the secret,
the tracking webhooks of the ESPs Herald reads are mounted at anymail's usual
paths, e.g. /webhooks/anymail/amazon_ses/tracking/. Mailgun's also needs its
signing key (anymail checks its signature too). ``check --deploy`` flags a
weak secret and a Mailgun key without a secret (tracking.webhooks).
"""

from anymail.utils import get_anymail_setting
from django.urls import include, path


def webhook_secrets() -> list[str]:
    """The basic-auth secrets ("user:password") anymail accepts; several while one is rotated out."""
    value = get_anymail_setting("webhook_secret", default=None)
    values = [value] if isinstance(value, str) else list(value or [])
    return [v for v in values if isinstance(v, str) and v.strip()]


def mailgun_signing_key() -> str:
    return get_anymail_setting("webhook_signing_key", esp_name="Mailgun", default=None) or ""


def urlpatterns() -> list:
    if not webhook_secrets():
        return []
    # Imported only when served: the SES view pulls in boto3.
    from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
    from anymail.webhooks.mailgun import MailgunTrackingWebhookView
    from anymail.webhooks.postmark import PostmarkTrackingWebhookView
    from anymail.webhooks.sendgrid import SendGridTrackingWebhookView

    views = [
        ("amazon_ses", AmazonSESTrackingWebhookView),
        ("postmark", PostmarkTrackingWebhookView),
        ("sendgrid", SendGridTrackingWebhookView),
    ]
    if mailgun_signing_key():
        views.append(("mailgun", MailgunTrackingWebhookView))
    patterns = [path(f"{esp}/tracking/", view.as_view(), name=f"{esp}_tracking_webhook") for esp, view in views]
    return [path("webhooks/anymail/", include((patterns, "anymail")))]
