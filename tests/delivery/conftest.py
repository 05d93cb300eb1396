import pytest

from campaigns.models import Campaign, Contact, MailingList, Subscription
from delivery import engine, mtasts, mx, providers, routing
from delivery.models import Relay, Send
from delivery.smtp import pool
from delivery.throttle import throttles
from tests.support.tls import make_certificate


@pytest.fixture(autouse=True)
def fresh_engine_state(redis_client):
    """Each test starts with an empty Redis db and no process-level caches or open connections."""
    routing.forget_relay()
    throttles.invalidate()
    mx.clear_cache()
    mtasts.clear_cache()
    providers.forget()
    engine._compiled.clear()
    yield
    pool.close_all()
    routing.forget_relay()
    throttles.invalidate()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def make_relay():
    def make(port, **fields):
        fields.setdefault("security", Relay.Security.NONE)
        relay = Relay.objects.create(name=fields.pop("name", "test relay"), host="127.0.0.1", port=port, **fields)
        routing.forget_relay()
        return relay

    return make


@pytest.fixture
def relay(sink, make_relay):
    return make_relay(sink.port)


@pytest.fixture
def make_campaign():
    """A campaign sent to ``addresses`` (one confirmed list), in draft."""

    def make(addresses, name="Spring news", **fields):
        lst = MailingList.objects.create(name=f"{name} list")
        existing = Contact.objects.in_bulk([a.lower() for a in addresses], field_name="email_key")
        Contact.objects.bulk_create(
            [Contact(email=a, email_key=a.lower(), first_name=a.split("@")[0]) for a in addresses if a.lower() not in existing]
        )
        contacts = Contact.objects.filter(email_key__in=[a.lower() for a in addresses])
        Subscription.objects.bulk_create([Subscription(contact=c, mailing_list=lst) for c in contacts])
        values = {"subject": "Hello {{ contact.first_name }}", "from_email": "news@herald.example", "from_name": "Herald News",
                  "html_body": "<p>Hi {{ contact.first_name }}</p>", "text_body": "Hi {{ contact.first_name }}"}
        campaign = Campaign.objects.create(name=name, **{**values, **fields})
        campaign.lists.add(lst)
        return campaign

    return make


# An HTML body the pre-send check lets through: it shows the unsubscribe link (campaigns.presend).
SENDABLE_HTML = '<p>Hi {{ contact.first_name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'


def drain(campaign_id=None, now=None, rounds=50):
    """Run the engine in this process until nothing of a running campaign is queued (no Celery)."""
    for _ in range(rounds):
        qs = Send.objects.filter(status=Send.Status.QUEUED, campaign__status="sending")
        if campaign_id is not None:
            qs = qs.filter(campaign_id=campaign_id)
        ids = list(qs.values_list("id", flat=True))
        if not ids:
            return
        engine.send_batch(ids, now=now)
    raise AssertionError("sends still queued after draining")


def statuses(campaign_id):
    return dict(Send.objects.filter(campaign_id=campaign_id).values_list("email", "status"))
