"""An A/B test's winner phase survives a SIGKILLed worker: nobody gets two variants, nobody is left out."""

import collections
from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign, CampaignVariant
from delivery import dispatch, engine, ledger, lifecycle
from delivery.models import Send
from tests.delivery.workers import Worker
from tests.support.smtp import Rules, Sink
from tests.support.wait import wait_until
from tracking import winner

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_killed_while_sending_the_winner_leaves_every_recipient_one_variant(tmp_path, make_relay,
                                                                                     make_campaign):
    addresses = [f"w{i:03d}@d{i % 3}.example" for i in range(150)]
    with Sink(rules=Rules(delay=0.02)) as server:
        make_relay(server.port)
        campaign = make_campaign(addresses, test_share=20, winner_wait=timedelta(hours=4))
        CampaignVariant.objects.create(campaign=campaign, number=1, subject="Alpha")
        CampaignVariant.objects.create(campaign=campaign, number=2, subject="Bravo")
        first = Worker("ab-doomed", tmp_path, HERALD_BATCH_SIZE=50).wait_ready()
        second = None
        try:
            lifecycle.start_campaign(campaign.pk)
            tested = Send.objects.filter(campaign=campaign, variant__isnull=False).count()
            assert 10 < tested < 50
            server.wait_for(tested, timeout=60)
            assert ledger.release_dead() == []

            winner.choose_by_hand(campaign.pk, 2)
            server.wait_for(tested + 20, timeout=60)
            first.kill()
            assert len(server.recipients()) < 150, "the worker must die in the winner phase"

            back = []
            wait_until(lambda: back.extend(ledger.release_dead()) or
                       not Send.objects.filter(campaign=campaign, status=Send.Status.SENDING).exists(),
                       timeout=60, interval=0.5, message="the dead worker's claims handed back")
            later = timezone.now() + timedelta(seconds=ledger.orphan_grace() + 1)
            dispatch.enqueue_sends(back + ledger.sweep(now=later))
            second = Worker("ab-survivor", tmp_path, HERALD_BATCH_SIZE=50).wait_ready()
            wait_until(lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.FINISHED,
                       timeout=120, message="campaign finished")
        finally:
            first.stop()
            if second:
                second.stop()
        received = list(server.received)

    subjects = collections.defaultdict(set)
    for item in received:
        subjects[item.rcpt_tos[0]].add(str(item.message["Subject"]))
    assert set(subjects) == set(addresses)
    assert all(len(s) == 1 for s in subjects.values()), "a recipient got two variants"
    variants = dict(Send.objects.filter(campaign=campaign).values_list("email", "variant"))
    assert all(subjects[email] == {"Alpha" if v == 1 else "Bravo"} for email, v in variants.items())
    assert collections.Counter(variants.values())[2] > 150 - tested  # the remainder all got the winner
    counts = collections.Counter(r for item in received for r in item.rcpt_tos)
    assert sum(n - 1 for n in counts.values()) <= engine.WRITE_CHUNK
