import pytest
from django.utils import timezone

from automations.models import Automation, MessageTemplate, Step
from automations.sweep import forget_steps
from campaigns.models import ApiToken, Contact, MailingList, Subscription
from delivery import engine, mx, providers, routing
from delivery.models import Relay
from delivery.smtp import pool
from delivery.throttle import throttles


@pytest.fixture(autouse=True)
def fresh_steps():
    forget_steps()
    yield
    forget_steps()


@pytest.fixture
def relay(sink, redis_client):
    """Every send goes to the SMTP sink; the engine's caches start empty."""
    routing.forget_relay()
    throttles.invalidate()
    mx.clear_cache()
    providers.forget()
    engine._compiled.clear()
    relay = Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    yield relay
    pool.close_all()
    routing.forget_relay()
    throttles.invalidate()


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")


@pytest.fixture
def api(client, admin_user):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {ApiToken.issue(admin_user)[1]}"
    return client


def template(slug, subject, body="<p>Hi {{ contact.first_name }}</p>", **fields):
    return MessageTemplate.objects.create(name=slug, slug=slug, subject=subject, from_email="hello@herald.example",
                                          html_body=body, **fields)


def contact(email, **fields):
    return Contact.objects.create(email=email, first_name=email.split("@")[0].title(), **fields)


def automation_with(steps, **fields):
    fields.setdefault("name", "Welcome")
    fields.setdefault("trigger", Automation.Trigger.MANUAL)
    fields.setdefault("status", Automation.Status.ACTIVE)
    auto = Automation.objects.create(**fields)
    for n, step in enumerate(steps):
        Step.objects.create(automation=auto, version=auto.version, position=(n + 1) * 10, **step)
    return auto


@pytest.fixture
def newsletter():
    return MailingList.objects.create(name="Newsletter")


def subscribe(person, mailing_list, **fields):
    return Subscription.objects.create(contact=person, mailing_list=mailing_list, **fields)


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0)
