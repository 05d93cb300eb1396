"""A/B tests: a seeded split, a winner by people's opens or clicks (never machines'), chosen once, sent to the rest.

The clock is injected: the campaign starts at START, and beat's tick
(winner.choose_due) runs before and after the test's four-hour wait.
"""

import collections
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from campaigns.models import Campaign, CampaignVariant, Contact, WinnerMetric
from delivery import engine, ledger, lifecycle, placement
from delivery.models import Send
from tracking import events, winner
from tracking.models import Event
from tracking.stats import two_proportion_p, variant_stats

pytestmark = pytest.mark.django_db

START = datetime(2027, 5, 4, 8, 0, tzinfo=UTC)
WAIT = timedelta(hours=4)
ADDRESSES = [f"r{i:02d}@example.com" for i in range(90)]


@pytest.fixture
def ab(make_campaign):
    campaign = make_campaign(ADDRESSES, name="Subject test", test_share=50, winner_wait=WAIT)
    for number, subject in ((1, "Alpha"), (2, "Bravo"), (3, "Charlie")):
        CampaignVariant.objects.create(campaign=campaign, number=number, subject=subject, preheader=f"pre {subject}")
    return campaign


def send_queued(campaign, now):
    ids = list(Send.objects.filter(campaign=campaign, status=Send.Status.QUEUED, parked=False).values_list("id", flat=True))
    engine.send_batch(ids, now=now)


def started(campaign, sink):
    lifecycle.start_campaign(campaign.pk, now=START)
    send_queued(campaign, START)
    return {v: list(Send.objects.filter(campaign=campaign, variant=v).order_by("id")) for v in (1, 2, 3)}


def subjects(sink):
    return {item.rcpt_tos[0]: str(item.message["Subject"]) for item in sink.received}


def engage(by_variant):
    """A: one person opens and clicks, machines open every other message; B: people open nearly all, one clicks;
    C: half open, one fewer clicks. People's opens: B; clicks: C; click-to-open: A. Machines' opens: A."""
    a, b, c = by_variant[1], by_variant[2], by_variant[3]
    events.record(Event.Type.OPEN, a[0], machine=False)
    events.record(Event.Type.CLICK, a[0], machine=False)
    for send in a[1:]:
        events.record(Event.Type.OPEN, send, machine=True)
    for send in b[1:]:
        events.record(Event.Type.OPEN, send, machine=False)
    events.record(Event.Type.CLICK, b[1], machine=False)
    half = c[:len(c) // 2]
    for send in half:
        events.record(Event.Type.OPEN, send, machine=False)
    for send in half[1:]:
        events.record(Event.Type.CLICK, send, machine=False)


def test_the_split_is_even_and_seeded_and_the_rest_waits_for_the_winner(sink, relay, ab):
    by_variant = started(ab, sink)
    sizes = [len(by_variant[v]) for v in (1, 2, 3)]
    # Exactly the seeded assignment's test group (the ids differ between runs, so its size does too) ...
    contacts = Send.objects.filter(campaign=ab).values_list("contact_id", flat=True)
    expected = collections.Counter(placement.assign(ab.pk, c, [1, 2, 3], 50) for c in contacts)
    assert sizes == [expected[1], expected[2], expected[3]] and min(sizes) > 0
    # ... and over many contacts the hash gives the share asked for, split evenly.
    many = collections.Counter(placement.assign(7, c, [1, 2, 3], 50) for c in range(1, 30_001))
    assert abs(many[None] / 30_000 - 0.5) < 0.01
    assert all(abs(many[v] / 30_000 - 1 / 6) < 0.01 for v in (1, 2, 3))
    held = Send.objects.filter(campaign=ab, hold=Send.HOLD_WINNER, parked=True, variant__isnull=True).count()
    assert held == 90 - sum(sizes) and len(sink.received) == sum(sizes)
    # Held rows are never claimed, even when a batch names them: nobody gets a variant before the winner is known.
    engine.send_batch(list(Send.objects.filter(campaign=ab, hold=Send.HOLD_WINNER).values_list("id", flat=True)),
                      now=START)
    assert len(sink.received) == sum(sizes)
    # Each got its variant's subject and preheader; the events carry the variant.
    got = subjects(sink)
    for number, name in ((1, "Alpha"), (2, "Bravo"), (3, "Charlie")):
        assert {got[s.email] for s in by_variant[number]} == {name}
    body = next(item for item in sink.received if got[item.rcpt_tos[0]] == "Bravo").message
    assert "pre Bravo" in body.get_body(("html",)).get_content()
    event, _ = events.record(Event.Type.OPEN, by_variant[2][0])
    assert event.variant == 2
    # Seeded: the same campaign and contact always land in the same place.
    again = {s.contact_id: placement.assign(ab.pk, s.contact_id, [1, 2, 3], 50) for v in by_variant.values() for s in v}
    assert all(again[s.contact_id] == v for v, sends in by_variant.items() for s in sends)
    ab.refresh_from_db()
    assert ab.status == Campaign.Status.SENDING  # the remainder is still to come


@pytest.mark.parametrize(("metric", "expected"), [
    (WinnerMetric.OPENS, 2), (WinnerMetric.CLICKS, 3), (WinnerMetric.CLICK_TO_OPEN, 1)])
def test_the_winner_by_each_metric_goes_to_the_rest_after_the_wait(sink, relay, ab, metric, expected):
    Campaign.objects.filter(pk=ab.pk).update(winner_metric=metric)
    by_variant = started(ab, sink)
    engage(by_variant)
    assert winner.choose_due(START + WAIT - timedelta(minutes=1)) == {}
    assert winner.choose_due(START + WAIT) == {ab.pk: expected}
    assert winner.choose_due(START + WAIT + timedelta(minutes=1)) == {}  # chosen once
    send_queued(ab, START + WAIT)
    ledger.settle_campaigns([ab.pk])

    ab.refresh_from_db()
    assert ab.status == Campaign.Status.FINISHED and ab.winner == expected
    assert Counter(sink.recipients()) == Counter(ADDRESSES)  # everyone once, one variant each
    tested = {s.email for sends in by_variant.values() for s in sends}
    winning = {"1": "Alpha", "2": "Bravo", "3": "Charlie"}[str(expected)]
    assert {subject for email, subject in subjects(sink).items() if email not in tested} == {winning}
    assert set(Send.objects.filter(campaign=ab).exclude(email__in=tested).values_list("variant", flat=True)) == {expected}
    stats = variant_stats(ab)  # still the test's figures: the rest is counted apart
    assert sum(v["recipients"] for v in stats["variants"]) == len(tested) and stats["after_test"] == 90 - len(tested)


def test_an_operator_picks_the_winner_before_the_wait_ends(sink, relay, ab, admin_user):
    started(ab, sink)
    chosen = winner.choose_by_hand(ab.pk, 3, user=admin_user, now=START + timedelta(hours=1))
    assert chosen.winner == 3 and "by hand" in chosen.winner_reason
    with pytest.raises(winner.WinnerError, match="already chosen"):
        winner.choose_by_hand(ab.pk, 1, user=admin_user)
    assert winner.choose_due(START + WAIT) == {}
    send_queued(ab, START + timedelta(hours=1))
    assert Counter(sink.recipients()) == Counter(ADDRESSES)


def test_a_manual_metric_waits_for_the_operator(sink, relay, ab):
    Campaign.objects.filter(pk=ab.pk).update(winner_metric=WinnerMetric.MANUAL)
    started(ab, sink)
    assert winner.choose_due(START + 10 * WAIT) == {}
    with pytest.raises(winner.WinnerError, match="not one of"):
        winner.choose_by_hand(ab.pk, 5)


def test_split_everyone_has_no_winner_phase(sink, relay, ab):
    Campaign.objects.filter(pk=ab.pk).update(test_share=100)
    started(ab, sink)
    assert Send.objects.filter(campaign=ab, variant__isnull=True).count() == 0
    assert Counter(sink.recipients()) == Counter(ADDRESSES)
    with pytest.raises(winner.WinnerError, match="splits everyone"):
        winner.choose_by_hand(ab.pk, 1)


def test_the_statistics_compare_the_variants_and_say_when_it_is_not_significant(sink, relay, ab):
    by_variant = started(ab, sink)
    events.record(Event.Type.OPEN, by_variant[1][0], machine=False)
    events.record(Event.Type.OPEN, by_variant[2][0], machine=False)
    events.record(Event.Type.OPEN, by_variant[2][1], machine=False)
    stats = variant_stats(ab)
    assert [v["letter"] for v in stats["variants"]] == ["A", "B", "C"]
    # The higher open rate leads (a tie goes to the first): the groups' sizes follow the run's ids.
    a, b = len(by_variant[1]), len(by_variant[2])
    assert stats["leader"] == (2 if 2 / b > 1 / a else 1)
    assert not stats["significant"] and "not significant" in stats["summary"]
    engage(by_variant)
    stats = variant_stats(ab)
    assert stats["leader"] == 2 and stats["significant"], stats["summary"]
    assert "significant (p = " in stats["summary"]
    # The textbook example: 45 of 100 against 30 of 100 gives z = 2.19, p = 0.029.
    assert two_proportion_p(45, 100, 30, 100) == pytest.approx(0.0285, abs=0.001)


def test_the_api_takes_variants_and_a_winner_and_the_stats_show_them(sink, relay, admin_user, client):
    from campaigns.models import ApiToken, Contact, MailingList, Subscription

    headers = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(admin_user)[1]}"}
    readers = MailingList.objects.create(name="API readers")
    for address in ADDRESSES[:20]:
        Subscription.objects.create(contact=Contact.objects.create(email=address), mailing_list=readers)
    body = {"name": "API test", "subject": "Hi", "from_email": "news@herald.example", "html_body": "<p>Hi</p>",
            "lists": [readers.pk], "test_share": 40, "winner_metric": "clicks", "winner_wait": 7200,
            "variants": [{"number": 1, "subject": "One"}]}
    answer = client.post("/api/v1/campaigns", body, content_type="application/json", **headers)
    assert answer.status_code == 422 and "2 to 5 variants" in answer.json()["detail"]
    body["variants"].append({"number": 2, "subject": "Two {{ broken"})
    answer = client.post("/api/v1/campaigns", body, content_type="application/json", **headers)
    assert answer.status_code == 422 and "variants[2].subject" in answer.json()["detail"]
    body["variants"][1]["subject"] = "Two"
    answer = client.post("/api/v1/campaigns", body, content_type="application/json", **headers)
    assert answer.status_code == 201, answer.json()
    made = answer.json()
    assert [v["letter"] for v in made["variants"]] == ["A", "B"] and made["winner_wait"] is not None

    campaign = Campaign.objects.get(pk=made["id"])
    answer = client.post(f"/api/v1/campaigns/{campaign.pk}/winner", {"variant": 2}, content_type="application/json",
                         **headers)
    assert answer.status_code == 409 and "draft" in answer.json()["detail"]
    lifecycle.start_campaign(campaign.pk)
    answer = client.post(f"/api/v1/campaigns/{campaign.pk}/winner", {"variant": 2}, content_type="application/json",
                         **headers)
    assert answer.status_code == 200 and answer.json()["winner_letter"] == "B"
    stats = client.get(f"/api/v1/campaigns/{campaign.pk}/stats", **headers).json()
    assert [v["letter"] for v in stats["variants"]["variants"]] == ["A", "B"]
    assert stats["variants"]["metric_label"] == "human click rate"


def test_a_segment_picks_the_recipients_of_one_variant(sink, relay, ab):
    from segments.compiler import compile_rules
    from segments.rules import validate as check

    by_variant = started(ab, sink)
    rules = {"match": "all", "rules": [{"type": "variant", "campaign": ab.pk, "variant": "B"}]}
    assert check(rules) == []
    chosen = set(Contact.objects.filter(compile_rules(rules)).values_list("id", flat=True))
    assert chosen == {s.contact_id for s in by_variant[2]}
    problems = check({"match": "all", "rules": [{"type": "variant", "campaign": ab.pk, "variant": "Z"}]})
    assert problems and "A to E" in str(problems[0])


def test_the_preview_and_the_test_send_show_each_variant(sink, relay, ab, admin_client, admin_user):
    from campaigns.models import ApiToken

    page = admin_client.get(f"/admin/campaigns/campaign/{ab.pk}/preview/", {"email": "me@example.org", "variant": "2"})
    assert page.status_code == 200 and b"Bravo" in page.content and b"pre Bravo" in page.content
    admin_client.post(f"/admin/campaigns/campaign/{ab.pk}/test/", {"addresses": "me@example.org", "variant": "3"})
    sink.wait_for(1)
    assert subjects(sink) == {"me@example.org": "Charlie"}

    token = ApiToken.issue(admin_user)[1]
    bad = admin_client.get(f"/api/v1/campaigns/{ab.pk}/preview", {"variant": 4}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert bad.status_code == 422
    assert "no variant 4; its variants: 1 (A), 2 (B), 3 (C)" in bad.content.decode()
