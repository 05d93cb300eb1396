"""The figures kept as sends and events are written equal those counted from the sends and events themselves."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection

from campaigns.models import Campaign, CampaignLink, Contact
from delivery.models import Relay, Send
from tracking import rollups
from tracking.dashboard import sends_per_hour
from tracking.events import record
from tracking.models import Event, Tally
from tracking.stats import REPORT_METRICS, campaign_rates, campaign_stats, delivery_outcomes

pytestmark = pytest.mark.django_db

EVERY_METRIC = (*REPORT_METRICS, "sent_at", "series")
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def kept(campaign):
    """The figures as the triggers kept them."""
    return rollups.tallies([campaign.pk], EVERY_METRIC)


def counted(campaign):
    """The same figures counted from the ledger."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM ({rollups.ledger_sql(connection.vendor, str(campaign.pk))}) AS t", [])
        rows = cursor.fetchall()
    minute = {str: lambda at: datetime.fromisoformat(at).replace(tzinfo=UTC)}  # SQLite's text
    return {(*row[:4], minute.get(type(row[4]), lambda at: at)(row[4])): int(row[5]) for row in rows if row[5]}


def changes(campaign):
    """The changes the triggers added that no fold has moved into Tally yet."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tracking_tallydelta WHERE campaign_id = %s", [campaign.pk])
        return cursor.fetchone()[0]


@pytest.fixture
def campaign():
    campaign = Campaign.objects.create(name="Spring", subject="News", from_email="news@herald.example",
                                       started_at=START, status="sending")
    CampaignLink.objects.bulk_create([CampaignLink(campaign=campaign, index=i, url=f"https://shop.example/{i}")
                                      for i in range(2)])
    return campaign


def sends(campaign, *addresses, **fields):
    rows = []
    for address in addresses:
        contact = Contact.objects.create(email=address)
        rows.append(Send(campaign=campaign, contact=contact, email=address, domain=address.split("@")[1], **fields))
    return Send.objects.bulk_create(rows)


def deliver(*rows, at=START, attempts=1, relay=None):
    """The engine's write-back: one statement for the batch."""
    Send.objects.filter(pk__in=[r.pk for r in rows]).update(status="sent", sent_at=at + timedelta(minutes=3),
                                                            attempts=attempts, relay=relay)
    for row in rows:
        row.refresh_from_db()


def event(type, send, at, **fields):
    created, _ = record(type, send, **fields)
    Event.objects.filter(pk=created.pk).update(created_at=at)
    return created


def test_every_figure_kept_as_it_happens_equals_the_ledgers_count(campaign):
    relay = Relay.objects.create(name="sink", host="127.0.0.1", port=2525, security=Relay.Security.NONE)
    ann, ben, cat, dan, eve = sends(campaign, "ann@example.com", "ben@example.com", "cat@example.org",
                                    "dan@example.org", "eve@example.net")
    deliver(ann, ben, cat, relay=relay)
    deliver(dan, attempts=2)  # greylisted once, then accepted directly
    Send.objects.filter(pk=eve.pk).update(status="bounced", attempts=1)  # refused at RCPT
    late = START + timedelta(hours=2)
    # ann: opened by a person twice and by a proxy, clicked link 0 twice and link 1 once.
    event("open", ann, late)
    event("open", ann, late + timedelta(minutes=1))
    event("open", ann, late, machine=True)
    event("click", ann, late, link_index=0, url="https://shop.example/0")
    event("click", ann, late + timedelta(minutes=5), link_index=0, url="https://shop.example/0")
    event("click", ann, late, link_index=1, url="https://shop.example/1")
    # ben: only a proxy's open and a scanner's click: no person opened or clicked.
    event("open", ben, late, machine=True)
    event("click", ben, late, link_index=0, machine=True, url="https://shop.example/0")
    # cat: a person's open, a complaint and an unsubscribe (each reported twice).
    event("open", cat, late)
    for _ in range(2):
        event("complaint", cat, late + timedelta(days=1))
        event("unsubscribe", cat, late + timedelta(days=1))
    # dan: accepted, then a DSN: bounced after delivery, twice reported.
    event("bounce", dan, late + timedelta(minutes=30))
    event("bounce", dan, late + timedelta(minutes=31))
    # A click found afterwards to be a link scanner's, and an open withdrawn.
    scanned = event("click", cat, late, link_index=1, url="https://shop.example/1")
    Event.objects.filter(pk=scanned.pk).update(machine=True)
    withdrawn = event("open", ben, late)
    Event.objects.filter(pk=withdrawn.pk).delete()

    assert kept(campaign) == counted(campaign)
    stats = campaign_stats(campaign)
    assert stats["recipients"] == 5
    assert stats["outcomes"]["delivered"]["count"] == 3
    assert stats["outcomes"]["bounced_after_delivery"]["count"] == 1
    assert stats["outcomes"]["bounced"]["count"] == 1
    assert stats["deferred_at_least_once"]["count"] == 1
    assert {key: figure["count"] for key, figure in stats["engagement"].items()} == {
        "human_opens": 2, "machine_opens": 2, "unique_clicks": 1, "unsubscribes": 1, "complaints": 1}
    assert stats["totals"] == {"opens": 5, "clicks": 3, "machine_clicks": 2}
    assert [(link["clicks"], link["unique_clicks"], link["machine_clicks"]) for link in stats["links"]] == [
        (2, 1, 1), (1, 1, 1)]
    assert stats["relays"] == [{"relay_id": relay.pk, "relay": "sink", "sent": 3, "bounced": 0},
                               {"relay_id": None, "relay": "direct", "sent": 1, "bounced": 1}]
    assert sum(bucket["sent"] for bucket in stats["timeline"]["buckets"]) == 4
    assert sum(bucket["bounces"] for bucket in stats["timeline"]["buckets"]) == 2
    assert campaign_rates([campaign.pk])[campaign.pk] == stats["rates"]
    assert delivery_outcomes(campaign)["outcomes"] == stats["outcomes"]

    # Folding the rows changes no figure, and neither does counting them afresh.
    if connection.vendor == "postgresql":  # SQLite counts from the ledger each time
        waiting = changes(campaign)
        assert waiting and not Tally.objects.filter(campaign=campaign).exists()
        assert rollups.fold([campaign.pk]) == waiting
        assert not changes(campaign) and Tally.objects.filter(campaign=campaign).exists()
    assert kept(campaign) == counted(campaign)
    call_command("rebuild_tallies", verbosity=0)
    assert kept(campaign) == counted(campaign)
    assert campaign_stats(campaign) == stats


def test_a_report_before_the_send_is_written_back_counts_once_it_is(campaign):
    """A DSN that arrives before the engine records the 250 still makes the send bounced after delivery."""
    (ann,) = sends(campaign, "ann@example.com", status="sending", attempts=0)
    event("bounce", ann, START)
    assert delivery_outcomes(campaign)["outcomes"]["bounced_after_delivery"]["count"] == 0
    deliver(ann)
    outcomes = delivery_outcomes(campaign)["outcomes"]
    assert (outcomes["delivered"]["count"], outcomes["bounced_after_delivery"]["count"]) == (0, 1)
    assert kept(campaign) == counted(campaign)


def test_deleting_a_campaigns_sends_takes_their_figures_with_them(campaign):
    ann, ben = sends(campaign, "ann@example.com", "ben@example.com")
    deliver(ann, ben)
    event("open", ann, START)
    event("bounce", ben, START)
    Send.objects.filter(pk=ben.pk).delete()  # its events stay, without a send
    assert kept(campaign) == counted(campaign)
    stats = campaign_stats(campaign)
    assert (stats["recipients"], stats["engagement"]["human_opens"]["count"]) == (1, 1)
    assert stats["outcomes"]["bounced_after_delivery"]["count"] == 0


def test_sends_per_hour_count_campaigns_and_mail_without_one(campaign):
    now = datetime.now(UTC)
    (ann,) = sends(campaign, "ann@example.com")
    deliver(ann, at=now - timedelta(hours=2))
    Send.objects.create(email="app@example.com", domain="example.com", status="sent", attempts=1,
                        sent_at=now - timedelta(hours=1))
    Send.objects.create(email="old@example.com", domain="example.com", status="sent", attempts=1,
                        sent_at=now - timedelta(days=5))
    assert sends_per_hour(now)["total"] == 2
    rollups.fold()
    assert sends_per_hour(now)["total"] == 2


def test_deleting_a_campaign_takes_its_figures_and_leaves_the_others(campaign):
    other = Campaign.objects.create(name="Summer", subject="News", from_email="news@herald.example", started_at=START)
    (ann,) = sends(campaign, "ann@example.com")
    (ben,) = sends(other, "ben@example.com")
    deliver(ann)
    deliver(ben)
    event("open", ann, START)
    event("open", ben, START)
    event("bounce", ben, START)
    campaign.delete()
    rollups.fold()
    assert not Tally.objects.filter(campaign_id=campaign.pk).exists()
    assert kept(other) == counted(other)
    assert campaign_stats(other)["engagement"]["human_opens"]["count"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_report_racing_the_write_back_of_its_send_counts_once(campaign):
    """The engine writes the 250 back while the bounce server records the DSN of the same message: whichever
    commits first, the message counts as bounced after delivery."""
    import threading

    from django.db import connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("the triggers, and so the race, exist on PostgreSQL")
    (ann,) = sends(campaign, "ann@example.com", status="sending", attempts=0)
    with transaction.atomic():
        deliver(ann)  # the write-back, not yet committed
        done = threading.Event()

        def report():
            try:
                event("bounce", ann, START)
            finally:
                connections.close_all()
                done.set()

        thread = threading.Thread(target=report)
        thread.start()
        # The report waits for the write-back's lock rather than reading the send as still 'sending'.
        assert not done.wait(1.0)
    thread.join(30)
    assert done.is_set()
    outcomes = delivery_outcomes(campaign)["outcomes"]
    assert (outcomes["delivered"]["count"], outcomes["bounced_after_delivery"]["count"]) == (0, 1)
    assert kept(campaign) == counted(campaign)
