"""Campaign statistics add up: each recipient counted once, the same figures on the page, the API and the dashboard."""

import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import F

from campaigns.models import ApiToken, Campaign, Contact, MailingList, Subscription
from campaigns.suppression import suppress
from delivery import engine, ledger, lifecycle, routing, tokens
from delivery.models import Relay, Send
from tests.delivery.conftest import fresh_engine_state  # noqa: F401 (fixture)
from tests.support.smtp import Rules, Sink
from tests.tracking import samples
from tracking.feedback import process_message
from tracking.models import Event
from tracking.stats import OUTCOME_KEYS, STATUS_OUTCOME, campaign_stats, delivery_outcomes, shares

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
PROXY = "Mozilla/5.0"  # how Apple's and Google's image proxies present themselves

DELIVERED = ["ann@example.com", "ben@example.com", "cat@example.com"]
LATE_BOUNCE = "dsn@example.org"  # accepted, then a DSN
GREYLISTED = "grey@example.org"  # 451 once, then delivered
BUSY = "busy@example.org"  # 451 on every try, still within the give-up age
GONE = "gone@example.net"  # 550 at RCPT
NEVER = "never@example.net"  # 451 until the give-up age: failed
LEFT = "left@example.com"  # suppressed after the start: skipped
WAITING = "wait@example.com"  # not tried yet: queued
CLAIMED = "claim@example.com"  # held by a worker: sending


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def start(addresses, port, **fields):
    """A campaign to ``addresses`` through a relay on ``port``, started."""
    Relay.objects.create(name="sink", host="127.0.0.1", port=port, security=Relay.Security.NONE)
    routing.forget_relay()
    readers = MailingList.objects.create(name="Readers")
    for address in addresses:
        Subscription.objects.create(contact=Contact.objects.create(email=address), mailing_list=readers)
    campaign = Campaign.objects.create(name="Spring", subject="Spring news", from_email="news@herald.example",
                                       html_body='<p>Hi</p><a href="https://shop.example/spring">Spring</a>', **fields)
    campaign.lists.add(readers)
    lifecycle.start_campaign(campaign.pk)
    return campaign


def send_now(ids, now=None, rounds=20):
    """Run the engine on these sends until none of them waits for a token."""
    for _ in range(rounds):
        queued = list(Send.objects.filter(id__in=ids, status=Send.Status.QUEUED).values_list("id", flat=True))
        if not queued:
            return
        engine.send_batch(queued, now=now)
    raise AssertionError("sends still queued")


@pytest.fixture
def every_outcome(client, settings):
    """A campaign still sending, with a recipient in each outcome, and opens, clicks, an unsubscribe and a complaint."""
    settings.HERALD_GIVE_UP_AFTER = 3600
    rules = Rules(rcpt={GONE: "550 5.1.1 <gone@example.net>: no such user"},
                  data={BUSY: "451 4.3.0 busy, try later", NEVER: "451 4.3.0 busy, try later"},
                  defer_first={GREYLISTED})
    everyone = [*DELIVERED, LATE_BOUNCE, GREYLISTED, BUSY, GONE, NEVER, LEFT, WAITING, CLAIMED]
    with Sink(rules=rules) as server:
        campaign = start(everyone, server.port)
        ids = dict(Send.objects.filter(campaign=campaign).values_list("email", "id"))
        suppress(LEFT, "manual", "asked by phone")
        send_now([ids[a] for a in [*DELIVERED, LATE_BOUNCE, GREYLISTED, GONE, NEVER, LEFT]])
        # Past the give-up age of the first tries: the greylisted one goes through, the other gives up.
        later = Send.objects.get(email=NEVER).first_attempt_at + timedelta(seconds=3601)
        assert set(ledger.due_retries(now=later)) == {ids[GREYLISTED], ids[NEVER]}
        send_now([ids[GREYLISTED], ids[NEVER], ids[BUSY]], now=later)
        ledger.claim([ids[CLAIMED]])
    # Read ten minutes later: a fetch within seconds of sending would be a prefetch, not a reader.
    Send.objects.filter(campaign=campaign, sent_at__isnull=False).update(sent_at=F("sent_at") - timedelta(minutes=10))

    sends = {s.email: s for s in Send.objects.filter(campaign=campaign)}
    ann, ben, cat, late = sends["ann@example.com"], sends["ben@example.com"], sends["cat@example.com"], sends[LATE_BOUNCE]
    verp = tokens.verp_address(late.pk)
    process_message(samples.postfix(verp, late.email, late.message_id), verp)
    for send, agent in [(ann, BROWSER), (ann, BROWSER), (ben, PROXY)]:
        client.get(local(tokens.open_url(send.pk)), HTTP_USER_AGENT=agent)
    client.get(local(tokens.click_url(ann.pk, 0)), HTTP_USER_AGENT=BROWSER)
    client.post(local(tokens.unsubscribe_url(cat.pk)), "List-Unsubscribe=One-Click",
                content_type="application/x-www-form-urlencoded")
    verp = tokens.verp_address(ben.pk)
    process_message(samples.arf(verp, ben.email, ben.message_id), verp)
    return campaign


def from_the_ledger(campaign):
    """The partition counted row by row from the Send rows and the reports on them, to check the aggregates against."""
    undelivered = set(Event.objects.filter(campaign=campaign, type__in=["bounce", "soft_bounce", "rejected"])
                      .values_list("send_id", flat=True))
    counts = dict.fromkeys(OUTCOME_KEYS, 0)
    for send in Send.objects.filter(campaign=campaign):
        if send.status == "sent":
            counts["bounced_after_delivery" if send.pk in undelivered else "delivered"] += 1
        else:
            counts[send.status] += 1
    return counts


def test_every_outcome_is_counted_once_and_the_outcomes_add_up(every_outcome):
    campaign = every_outcome
    assert dict(Send.objects.filter(campaign=campaign).values_list("email", "status")) == {
        "ann@example.com": "sent", "ben@example.com": "sent", "cat@example.com": "sent", LATE_BOUNCE: "sent",
        GREYLISTED: "sent", BUSY: "deferred", GONE: "bounced", NEVER: "failed", LEFT: "skipped", WAITING: "queued",
        CLAIMED: "sending",
    }
    stats = campaign_stats(campaign)
    counts = {key: figure["count"] for key, figure in stats["outcomes"].items()}
    assert counts == {"delivered": 4, "bounced_after_delivery": 1, "bounced": 1, "failed": 1, "deferred": 1,
                      "queued": 1, "sending": 1, "skipped": 1, "cancelled": 0}
    assert counts == from_the_ledger(campaign)
    assert sum(counts.values()) == stats["recipients"] == Send.objects.filter(campaign=campaign).count() == 11
    rates = [figure["rate"] for figure in stats["outcomes"].values()]
    assert sum(round(rate * 10_000) for rate in rates) == 10_000
    # The greylisted recipient (delivered), the busy one (deferred now) and the one given up on (failed).
    assert stats["deferred_at_least_once"]["count"] == 3
    engagement = {key: figure["count"] for key, figure in stats["engagement"].items()}
    assert engagement == {"human_opens": 1, "machine_opens": 1, "unique_clicks": 1, "unsubscribes": 1, "complaints": 1}
    assert stats["engagement"]["human_opens"]["rate"] == 0.25  # of the delivered
    domains = {d["domain"]: d for d in stats["domains"]}
    assert {name: sum(d[key] for key in OUTCOME_KEYS) == d["recipients"] for name, d in domains.items()} == {
        "example.com": True, "example.org": True, "example.net": True}
    assert (domains["example.org"]["delivered"], domains["example.org"]["bounced_after_delivery"],
            domains["example.org"]["deferred"], domains["example.org"]["deferred_at_least_once"]) == (1, 1, 1, 2)
    assert sum(bucket["sent"] for bucket in stats["timeline"]["buckets"]) == 5  # accepted with a 250


def page_outcomes(html):
    rows = re.findall(r'<tr[^>]* data-outcome="(\w+)">.*?data-count="(\d+)">\d+</td><td class="num">([\d.]*) ?%?</td>',
                      html, re.S)
    return {key: (int(count), Decimal(percent or "0")) for key, count, percent in rows}


def test_the_page_the_api_and_the_dashboard_show_the_same_numbers(every_outcome, admin_client, admin_user, client):
    campaign = every_outcome
    stats = campaign_stats(campaign)

    _, token = ApiToken.issue(admin_user)
    api = client.get(f"/api/v1/campaigns/{campaign.pk}/stats", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    for name in ("recipients", "outcomes", "deferred_at_least_once", "engagement", "domains"):
        assert api[name] == stats[name], name

    page = admin_client.get(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/").content.decode()
    shown = page_outcomes(page)
    total = shown.pop("recipients")
    assert total == (11, Decimal("100.00"))
    # Every outcome the campaign has (here all but "cancelled"), with the same count.
    assert {key: count for key, (count, _) in shown.items()} == {
        k: f["count"] for k, f in stats["outcomes"].items() if f["count"]}
    assert sum(percent for _, percent in shown.values()) == Decimal("100.00")
    assert re.search(r'id="stats-deferred-once" data-count="3"', page)
    assert "Bounced after delivery" in page and "Deferred at least once" in page

    dashboard = admin_client.get("/admin/").content.decode()
    row = dashboard[dashboard.index(f'data-campaign="{campaign.pk}"'):]
    row = row[:row.index("</tr>")]
    figures = {key: int(n) for key, n in re.findall(r'data-outcome="(\w+)" data-count="(\d+)"', row)}
    assert figures == {"recipients": 11, "deferred_at_least_once": 3,
                       **{key: f["count"] for key, f in stats["outcomes"].items() if f["count"]}}
    assert delivery_outcomes(campaign) == {name: stats[name] for name in ("recipients", "outcomes",
                                                                           "deferred_at_least_once")}


def test_a_cancelled_campaign_counts_what_it_never_sent(admin_client):
    with Sink() as server:
        campaign = start(["one@example.com", "two@example.com", "three@example.com"], server.port)
        send_now([Send.objects.get(email="one@example.com").pk])
        lifecycle.cancel_campaign(campaign.pk)
    figures = delivery_outcomes(campaign)
    assert figures["outcomes"]["delivered"]["count"] == 1 and figures["outcomes"]["cancelled"]["count"] == 2
    assert (figures["outcomes"]["delivered"]["rate"], figures["outcomes"]["cancelled"]["rate"]) == (0.3333, 0.6667)
    # The dashboard lists it among the campaigns finished lately.
    dashboard = admin_client.get("/admin/").content.decode()
    assert 'id="dash-finished"' in dashboard and 'data-outcome="cancelled" data-count="2"' in dashboard


def test_every_send_status_has_its_outcome():
    assert set(STATUS_OUTCOME) == set(Send.Status.values)
    assert set(STATUS_OUTCOME.values()) | {"bounced_after_delivery"} == set(OUTCOME_KEYS)


def test_shares_add_up_to_exactly_one_and_stay_within_a_hundredth_of_a_percent():
    rng = random.Random(5)
    for _ in range(500):
        counts = {key: rng.choice([0, 1, 2, 3, 7, 150, 1350, rng.randrange(10**6)]) for key in OUTCOME_KEYS}
        total = sum(counts.values())
        rates = shares(counts, total)
        assert sum(round(rate * 10_000) for rate in rates.values()) == (10_000 if total else 0)
        assert all(abs(rates[key] - counts[key] / total) < 0.0001 for key in counts) if total else True
    assert shares({"a": 1, "b": 1, "c": 1}, 3) == {"a": 0.3334, "b": 0.3333, "c": 0.3333}


# --- over time -------------------------------------------------------------------

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday; 15:30 in India


@pytest.fixture
def india(settings):
    settings.TIME_ZONE = "Asia/Kolkata"


def sent_at(campaign, *moments):
    for i, moment in enumerate(moments):
        contact = Contact.objects.create(email=f"r{i}@example.com")
        Send.objects.create(campaign=campaign, contact=contact, email=contact.email, domain="example.com",
                            status=Send.Status.SENT, sent_at=moment)


def test_a_campaign_of_minutes_is_charted_by_minute_in_the_operators_time_zone(india, campaign, admin_client):
    Campaign.objects.filter(pk=campaign.pk).update(status="finished", started_at=START,
                                                   finished_at=START + timedelta(minutes=4, seconds=30))
    campaign.refresh_from_db()
    sent_at(campaign, START + timedelta(seconds=20), START + timedelta(seconds=70), START + timedelta(seconds=239))
    timeline = campaign_stats(campaign)["timeline"]
    assert (timeline["unit"], timeline["time_zone"]) == ("minute", "Asia/Kolkata")
    assert [(b["label"], b["sent"]) for b in timeline["buckets"]] == [("15:30", 1), ("15:31", 1), ("15:32", 0),
                                                                      ("15:33", 1)]
    assert timeline["buckets"][0]["start"] == "2026-03-02T15:30:00+05:30"
    page = admin_client.get(f"/admin/tracking/campaignstatistics/{campaign.pk}/change/").content.decode()
    assert "per minute, from 15:30 to 15:33 (Asia/Kolkata)" in page
    assert re.search(r"<text [^>]*>15:30</text>", page)


def test_a_campaign_of_hours_is_charted_by_hour(india, campaign):
    # Never started through Herald (no start time): grouped by minute, then made coarser.
    sent_at(campaign, START + timedelta(minutes=10), START + timedelta(hours=4, minutes=50))
    timeline = campaign_stats(campaign)["timeline"]
    assert timeline["unit"] == "hour"
    # India is 5:30 ahead: 10:10 UTC is 15:40 there, in the bucket of 15:00.
    assert [(b["label"], b["sent"]) for b in timeline["buckets"]] == [
        ("15:00", 1), ("16:00", 0), ("17:00", 0), ("18:00", 0), ("19:00", 0), ("20:00", 1)]


def test_opens_over_weeks_are_charted_by_day(india, campaign, alice_send):
    Campaign.objects.filter(pk=campaign.pk).update(status="finished", started_at=START,
                                                   finished_at=START + timedelta(minutes=5))
    Send.objects.filter(pk=alice_send.pk).update(sent_at=START)
    campaign.refresh_from_db()
    for days in (0, 9):
        event = Event.objects.create(type="open", send=alice_send, campaign=campaign, email=alice_send.email)
        Event.objects.filter(pk=event.pk).update(created_at=START + timedelta(days=days, hours=12))
    timeline = campaign_stats(campaign)["timeline"]
    assert timeline["unit"] == "day"
    labels = [b["label"] for b in timeline["buckets"]]
    assert labels[0] == "Mon 2 Mar" and labels[-1] == "Thu 12 Mar" and len(labels) == 11
    assert [b["opens"] for b in timeline["buckets"]] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert timeline["buckets"][0]["sent"] == 1
