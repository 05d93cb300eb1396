"""Real workers against a relay that fails: killed workers, dropped connections, 421s, stalls, bad TLS, refused AUTH.

After each fault the campaign finishes, or pauses with a reason a person can act
on; the ledger counts every recipient once and the receiving server's log has
nobody missing and duplicates only within the in-flight bound.
"""


import pytest

from campaigns.models import Campaign
from delivery import lifecycle
from delivery.models import Relay, Send
from tests.delivery.servers import Authenticator
from tests.resilience.conftest import BATCH, account, addresses, finished, in_flight, make_campaign, relay_to, status_of
from tests.resilience.relay import FaultRelay
from tests.support.smtp import Sink
from tests.support.tls import make_certificate, server_context
from tests.support.wait import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def delivered(relay, n):
    return lambda: len(relay.recipients()) >= n


def test_workers_sigkilled_three_times_mid_campaign_lose_nobody(stack):
    expected = addresses(450)
    injected, bound = [], 0
    with FaultRelay(reply_delay=0.01) as relay:
        relay_to(relay.port)
        campaign = make_campaign(expected)
        stack.start_workers("a", "b")
        stack.start(campaign)
        for victim, at in (("a", 80), ("b", 200), ("a", 320)):
            wait_until(delivered(relay, at), timeout=60, message=f"{at} messages delivered")
            stack.workers[victim].kill()
            flying = in_flight()
            # A killed worker (concurrency 1) held at most one claimed batch.
            bound += BATCH
            injected.append(f"SIGKILL worker {victim} after {len(relay.recipients())} delivered ({flying} rows in flight)")
            stack.start_workers(victim)
        wait_until(lambda: finished(campaign), timeout=90, message="campaign finished")
        account(campaign, expected, relay.recipients(), injected, bound)


def test_connection_dropped_after_data_is_retried(stack):
    expected = addresses(300)
    with FaultRelay() as relay:
        relay_to(relay.port)
        campaign = make_campaign(expected)
        stack.start_workers("a")
        relay.drop_after_data(3)
        stack.start(campaign)
        wait_until(lambda: finished(campaign), timeout=60, message="campaign finished")
        # Each dropped message was read whole but never answered: its retry is the only possible duplicate.
        dups = account(campaign, expected, relay.recipients(), relay.injected, bound=relay.unanswered())
        assert relay.unanswered() == 3
    assert Send.objects.filter(campaign=campaign, attempts__gt=1).count() >= 1
    print(f"duplicates caused by the drops: {dups}")


def test_relay_answering_421_to_everything_for_a_while(stack):
    expected = addresses(300)
    with FaultRelay(reply_delay=0.005) as relay:
        relay_to(relay.port)
        campaign = make_campaign(expected)
        stack.start_workers("a", "b")
        stack.start(campaign)
        wait_until(delivered(relay, 60), timeout=60, message="60 delivered")
        relay.refuse_for(4)
        sessions_before = relay.sessions
        wait_until(lambda: finished(campaign), timeout=90, message="campaign finished after the 421s")
        print(f"sessions refused or opened after the fault: {relay.sessions - sessions_before}")
        account(campaign, expected, relay.recipients(), relay.injected, bound=relay.unanswered())
    assert Send.objects.filter(campaign=campaign, attempts__gt=1).exists(), "some sends were deferred by the 421s"


def test_relay_stalling_past_the_timeouts(stack):
    expected = addresses(300)
    with FaultRelay(reply_delay=0.005) as relay:
        relay_to(relay.port)
        campaign = make_campaign(expected)
        stack.start_workers("a", "b")
        stack.start(campaign)
        wait_until(delivered(relay, 60), timeout=60, message="60 delivered")
        relay.stall_for(5)  # the workers' SMTP timeout is 2 s
        wait_until(lambda: finished(campaign), timeout=90, message="campaign finished after the stall")
        # A message whose final dot went unanswered is an unknown outcome (RFC 5321 6.1): it may come twice.
        account(campaign, expected, relay.recipients(), relay.injected, bound=relay.unanswered())


@pytest.fixture(scope="module")
def untrusted_certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("untrusted"))


def test_invalid_certificate_pauses_and_nothing_goes_in_plaintext(stack, untrusted_certificate):
    cert, key = untrusted_certificate
    expected = addresses(120)
    # The server offers STARTTLS with a certificate no CA vouches for, and would take plaintext mail too.
    with Sink(tls_context=server_context(cert, key), require_starttls=False) as sink:
        relay_to(sink.port, security=Relay.Security.STARTTLS)
        campaign = make_campaign(expected)
        stack.start_workers("a")
        stack.start(campaign)
        wait_until(lambda: status_of(campaign) == Campaign.Status.PAUSED, timeout=60, message="campaign paused")
        counts = lifecycle.counts(campaign.pk)
        print(f"\ninjected: untrusted certificate on STARTTLS; campaign paused: {campaign.status_reason}; counts {counts}")
        assert "certificate" in campaign.status_reason and "fault relay" in campaign.status_reason
        assert sink.recipients() == [], "nothing may be sent when the certificate is not valid"
        assert counts["queued"] + counts["sending"] == len(expected) == counts["total"]
        assert set(Send.objects.filter(campaign=campaign).values_list("attempts", flat=True)) == {0}

        # The operator installs the CA that signed the relay's certificate and resumes.
        stack.workers["a"].stop()
        stack.env["HERALD_SMTP_CA_FILE"] = cert
        stack.start_workers("a")
        lifecycle.resume_campaign(campaign.pk)
        wait_until(lambda: finished(campaign), timeout=60, message="campaign finished after resume")
        account(campaign, expected, sink.recipients(), ["untrusted certificate, then the CA installed"], bound=0)


def test_refused_auth_pauses_with_the_servers_words_then_resumes(stack):
    auth = Authenticator()
    expected = addresses(120)
    with Sink(authenticator=auth, auth_require_tls=False) as sink:
        relay = relay_to(sink.port, username="herald", password="wrong")
        campaign = make_campaign(expected)
        stack.start_workers("a")
        stack.start(campaign)
        wait_until(lambda: status_of(campaign) == Campaign.Status.PAUSED, timeout=60, message="campaign paused")
        counts = lifecycle.counts(campaign.pk)
        print(f"\ninjected: AUTH refused; campaign paused: {campaign.status_reason}; counts {counts}")
        assert "535" in campaign.status_reason
        assert sink.recipients() == []
        assert counts["queued"] == len(expected)

        relay.password = "s3cret-relay-pass"
        relay.save()
        lifecycle.resume_campaign(campaign.pk)
        wait_until(lambda: finished(campaign), timeout=60, message="campaign finished after resume")
        account(campaign, expected, sink.recipients(), ["AUTH refused, then the password corrected"], bound=0)
