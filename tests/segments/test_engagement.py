"""Each contact's latest open and click, which segments read, stays what the events say; the rebuild restores it."""

import datetime

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from campaigns.models import Contact
from segments import engagement
from segments.compiler import compile_rules
from tracking.models import Engagement, Event

NOW = timezone.now().replace(microsecond=0)


def ago(days):
    return NOW - datetime.timedelta(days=days)


def event(contact, kind, days, machine=False):
    row = Event.objects.create(type=kind, contact=contact, email=contact.email, machine=machine,
                               url="https://example.com/" if kind == "click" else "")
    Event.objects.filter(pk=row.pk).update(created_at=ago(days))
    return row


def latest(contact):
    row = Engagement.objects.get(contact=contact)
    return row.last_open_at, row.last_click_at, row.last_open_any_at, row.last_click_any_at


def opened_lately():
    tree = {"match": "all", "rules": [{"type": "opened", "within_days": 30}]}
    return sorted(Contact.objects.filter(compile_rules(tree)).values_list("first_name", flat=True))


@pytest.fixture
def ann(db):
    return Contact.objects.create(email="ann@example.com", first_name="Ann")


@pytest.fixture
def bob(db):
    return Contact.objects.create(email="bob@example.com", first_name="Bob")


@pytest.fixture
def cat(db):
    return Contact.objects.create(email="cat@example.com", first_name="Cat")


def test_peoples_and_machines_opens_and_clicks_are_kept_apart(ann, bob, cat):
    event(ann, "open", 40)
    event(ann, "click", 5, machine=True)  # a link scanner
    event(ann, "open", 2, machine=True)  # a privacy proxy
    event(bob, "click", 3)
    bob_open = event(bob, "open", 1)
    event(bob, "soft_bounce", 0)
    event(cat, "open", 1, machine=True)

    assert latest(ann) == (ago(40), None, ago(2), ago(5))
    assert latest(bob) == (ago(1), ago(3), ago(1), ago(3))
    assert latest(cat) == (None, None, ago(1), None)
    assert engagement.differences() == 0
    assert opened_lately() == ["Bob"]

    # Found to be a proxy's after the fact: bob's click, a person's, is his latest open now.
    Event.objects.filter(pk=bob_open.pk).update(machine=True)
    assert latest(bob) == (ago(3), ago(3), ago(1), ago(3))
    # A contact deleted takes the row along; the events stay, with no contact.
    cat.delete()
    assert not Engagement.objects.filter(contact_id=cat.pk).exists()
    assert engagement.differences() == 0


def test_rows_lost_or_wrong_are_found_and_rebuilt_from_the_events(ann, bob, cat):
    event(ann, "open", 10)
    event(bob, "click", 3)
    event(bob, "open", 50, machine=True)
    Engagement.objects.filter(contact=ann).delete()
    Engagement.objects.filter(contact=bob).update(last_click_at=None)
    Engagement.objects.create(contact=cat, last_open_at=ago(1), last_open_any_at=ago(1))
    assert opened_lately() == ["Bob", "Cat"]  # Ann is missed, Cat made up

    assert engagement.differences() == 3
    with pytest.raises(CommandError, match="3 contact"):
        call_command("rebuild_engagement", "--check", verbosity=0)
    call_command("rebuild_engagement", verbosity=0)

    assert engagement.differences() == 0
    call_command("rebuild_engagement", "--check", verbosity=0)
    assert latest(ann) == (ago(10), None, ago(10), None)
    assert latest(bob) == (ago(3), ago(3), ago(3), ago(3))
    assert not Engagement.objects.filter(contact=cat).exists()
    assert opened_lately() == ["Ann", "Bob"]


def test_deleted_opens_and_clicks_are_taken_back(ann, bob):
    event(ann, "open", 40)
    latest_open = event(ann, "click", 2)
    event(bob, "open", 1)
    event(bob, "soft_bounce", 0)
    assert opened_lately() == ["Ann", "Bob"]

    latest_open.delete()
    Event.objects.filter(contact=bob).delete()  # one statement: the open and the bounce

    assert latest(ann) == (ago(40), None, ago(40), None)
    assert not Engagement.objects.filter(contact=bob).exists()
    assert opened_lately() == []
    assert engagement.differences() == 0
