"""A campaign's audience: lists and segments together, minus exclusion lists and segments, minus suppressions;
the confirmation's count is what the snapshot then writes, and the send reaches exactly those."""

import pytest

from campaigns.models import Campaign, Contact, MailingList, Segment, Subscription, Suppression
from delivery import lifecycle, planner
from delivery.engine import send_batch
from delivery.models import Send

pytestmark = pytest.mark.django_db


def person(email, lists=(), status="confirmed", **attributes):
    contact = Contact.objects.create(email=email, first_name=email.split("@")[0], attributes=attributes)
    for lst in lists:
        Subscription.objects.create(contact=contact, mailing_list=lst, status=status)
    return contact


def rule(**condition):
    return {"match": "all", "rules": [condition]}


@pytest.fixture
def cast():
    news, staff, shop = (MailingList.objects.create(name=n) for n in ("News", "Staff", "Shop"))
    person("ann@example.com", [news], country="DE")
    person("bob@example.com", [news, staff], country="DE")
    person("cat@example.com", [shop], country="DE", plan="gold")
    person("dan@example.com", [shop], country="FR", plan="gold")
    person("eve@example.com", [shop], status="unsubscribed", country="DE")  # left every list she was on
    person("fay@example.com", [shop], country="DE")
    Suppression.objects.create(email="fay@example.com", reason="hard_bounce")
    germans = Segment.objects.create(name="Germans", rules=rule(type="attribute", key="country", op="equals", value="DE"))
    gold = Segment.objects.create(name="Gold", rules=rule(type="attribute", key="plan", op="equals", value="gold"))
    gold_germans = Segment.objects.create(name="Gold Germans", rules={"match": "all", "rules": [
        {"type": "segment", "segment": germans.pk}, {"type": "segment", "segment": gold.pk}]})
    return {"news": news, "staff": staff, "shop": shop, "germans": germans, "gold": gold, "gold_germans": gold_germans}


def campaign(lists=(), segments=(), exclude_lists=(), exclude_segments=()):
    c = Campaign.objects.create(name="Offer", subject="Hi", from_email="news@herald.example", html_body="<p>Hi</p>")
    c.lists.set(lists)
    c.segments.set(segments)
    c.exclude_lists.set(exclude_lists)
    c.exclude_segments.set(exclude_segments)
    return c


def snapshot(c):
    planner.snapshot_range(c, 0, planner.highest_contact_id())
    return sorted(Send.objects.filter(campaign=c).values_list("email", flat=True))


def names(*people):
    return [f"{p}@example.com" for p in people]


def test_lists_and_segments_together_minus_suppressed_and_people_on_no_list(cast):
    c = campaign(lists=[cast["news"]], segments=[cast["gold"]])
    # eve matches nothing through a live subscription; fay is suppressed.
    assert planner.count_audience(c) == 4
    assert snapshot(c) == names("ann", "bob", "cat", "dan")


def test_a_segment_alone_reaches_only_people_who_receive_some_list(cast):
    c = campaign(segments=[cast["germans"]])
    assert snapshot(c) == names("ann", "bob", "cat")


def test_nested_segments(cast):
    c = campaign(segments=[cast["gold_germans"]])
    assert planner.count_audience(c) == 1
    assert snapshot(c) == names("cat")


def test_exclusion_lists_and_segments_leave_people_out(cast):
    c = campaign(lists=[cast["news"], cast["shop"]], exclude_lists=[cast["staff"]], exclude_segments=[cast["gold_germans"]])
    assert planner.count_audience(c) == 2
    assert snapshot(c) == names("ann", "dan")


def test_an_exclusion_on_a_list_only_campaign_takes_the_general_path(cast):
    c = campaign(lists=[cast["news"]], exclude_lists=[cast["staff"]])
    assert not c.targets_lists_only()
    assert planner.count_audience(c) == 1 and snapshot(c) == names("ann")


def test_a_snapshot_done_twice_adds_nobody_twice(cast):
    c = campaign(segments=[cast["germans"]])
    snapshot(c)
    assert snapshot(c) == names("ann", "bob", "cat")


def test_a_campaign_to_a_segment_is_sent_to_exactly_its_people(cast, relay, sink):
    c = campaign(segments=[cast["germans"]], exclude_segments=[cast["gold"]])
    started = lifecycle.start_campaign(c.pk)
    assert started.status == Campaign.Status.SENDING and started.total == 2
    send_batch(list(Send.objects.filter(campaign=c).values_list("id", flat=True)))
    sink.wait_for(2)
    assert sorted(sink.recipients()) == names("ann", "bob")


def test_a_campaign_with_no_list_or_segment_cannot_start(cast):
    with pytest.raises(lifecycle.LifecycleError, match="no target lists or segments"):
        lifecycle.start_campaign(campaign().pk)
