"""Endpoints that want to hear about events, the durable outbox of what they are owed, and the delivery log."""

import base64
import secrets

from django.core.exceptions import ValidationError
from django.db import models

from herald.fields import EncryptedTextField

EVENT_TYPES = ["sent", "delivered", "deferred", "bounced", "complained", "opened", "clicked", "unsubscribed",
               "subscribed", "confirmed", "automation_step"]


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Endpoint(models.Model):
    url = models.URLField(max_length=2000, help_text="Where events are POSTed (https in production).")
    description = models.CharField(max_length=200, blank=True, default="")
    event_types = models.JSONField(default=list, help_text=f"Any of: {', '.join(EVENT_TYPES)}.")
    # Shown once when made or rotated; kept encrypted like relay passwords.
    secret = EncryptedTextField(editable=False)
    batch_size = models.PositiveSmallIntegerField(
        default=1, help_text="Events per request: 1 posts each event alone, more posts a JSON array of up to this many.")
    enabled = models.BooleanField(default=True)
    disabled_reason = models.TextField(blank=True, default="", help_text="Why Herald switched it off.")
    # Circuit breaker: after repeated failures no request goes out until breaker_until.
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    breaker_until = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["url"]
        verbose_name = "webhook endpoint"

    def __str__(self):
        return self.description or self.url

    def clean(self):
        from webhooks_out.addresses import UnsafeEndpoint, check_url

        unknown = [t for t in self.event_types or [] if t not in EVENT_TYPES]
        if unknown or not isinstance(self.event_types, list):
            raise ValidationError({"event_types": f"unknown event types: {', '.join(map(str, unknown))}; "
                                                  f"choose among {', '.join(EVENT_TYPES)}"})
        if not 1 <= self.batch_size <= 1000:
            raise ValidationError({"batch_size": "between 1 and 1000"})
        try:
            check_url(self.url)
        except UnsafeEndpoint as exc:
            raise ValidationError({"url": str(exc)}) from None

    def rotate_secret(self) -> str:
        """A new secret, saved; returned in clear this once."""
        self.secret = new_secret()
        self.save(update_fields=["secret", "updated_at"])
        return self.secret


class OutboxMessage(models.Model):
    """One event owed to one endpoint, written in the same transaction as the event itself."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed", "Gave up"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="outbox", db_index=False)
    msg_id = models.CharField(max_length=64, help_text="webhook-id: the same on every attempt, for the receiver's dedup.")
    event_type = models.CharField(max_length=32)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_default="pending")
    attempts = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.TextField(blank=True, default="", db_default="")
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["endpoint", "next_attempt_at"], condition=models.Q(status="pending"),
                         name="outbox_due_idx"),
            models.Index(fields=["endpoint", "-id"], name="outbox_endpoint_idx"),
        ]

    def __str__(self):
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """One request to an endpoint: what was in it and what came back."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="attempts")
    webhook_id = models.CharField(max_length=64)
    messages = models.JSONField(default=list, help_text="The outbox ids the request carried.")
    ok = models.BooleanField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    response = models.TextField(blank=True, default="", help_text="The start of the response, or the error.")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.webhook_id}: {self.status_code or 'error'}"
