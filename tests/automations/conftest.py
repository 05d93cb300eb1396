import pytest
from django.utils import timezone

from automations.models import Automation, MessageTemplate, Step
from campaigns.models import Contact, MailingList, Subscription
from tests.segments.conftest import admin_user, api, relay  # noqa: F401 - the same sink relay and API client
from tests.submission.conftest import (  # noqa: F401 - the submission server, its TLS client, quick logins
    client_tls,
    fast_password_hashing,
    server,
    tls_files,
)


def template(slug, subject, body="<p>Hi {{ contact.first_name }}</p>", **fields):
    fields.setdefault("from_email", "hello@herald.example")
    return MessageTemplate.objects.create(name=slug, slug=slug, subject=subject, html_body=body, **fields)


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
