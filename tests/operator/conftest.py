import pytest

from campaigns.models import Campaign, Contact, MailingList, Subscription
from delivery import engine, mx, routing
from delivery.models import Relay
from delivery.smtp import pool
from delivery.throttle import throttles


@pytest.fixture
def fresh_engine(redis_client):
    """An empty Redis db and no process-level caches or open connections."""
    routing.forget_relay()
    throttles.invalidate()
    mx.clear_cache()
    engine._compiled.clear()
    yield
    pool.close_all()
    routing.forget_relay()
    throttles.invalidate()


@pytest.fixture
def relay(sink, fresh_engine):
    row = Relay.objects.create(name="loopback sink", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    return row


@pytest.fixture
def newsletter():
    """A draft campaign to the confirmed list "Readers": ann, bob and cy at example.com."""
    readers = MailingList.objects.create(name="Readers")
    for address in ("ann@example.com", "bob@example.com", "cy@example.com"):
        contact = Contact.objects.create(email=address, first_name=address.split("@")[0])
        Subscription.objects.create(contact=contact, mailing_list=readers)
    campaign = Campaign.objects.create(
        name="Monthly news", subject="News for {{ contact.first_name }}", from_email="news@herald.example",
        html_body='<p>Hello {{ contact.first_name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    )
    campaign.lists.add(readers)
    return campaign
