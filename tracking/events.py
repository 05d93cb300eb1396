"""Recording Events: one row per happening, whatever reported it."""

from django.db import IntegrityError, transaction

from tracking.models import Event


def record(type, send=None, *, key=None, **fields):
    """Record an Event for a Send; returns (event, created).

    A report that repeats one already recorded (same ``key``: a DSN delivered
    twice, a webhook retried by the ESP) returns the stored Event and
    ``created=False``, so callers apply its consequences only once.
    """
    if send is not None:
        fields.setdefault("campaign_id", send.campaign_id)
        fields.setdefault("contact_id", send.contact_id)
        fields.setdefault("email", send.email)
        fields.setdefault("variant", getattr(send, "variant", None))
    if key is not None:
        key = key[:255]
        existing = Event.objects.filter(key=key).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            return Event.objects.create(type=type, send=send, key=key, **fields), True
    except IntegrityError:
        # Another process recorded the same report between our look-up and insert.
        return Event.objects.get(key=key), False
