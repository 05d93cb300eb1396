"""Relays with STARTTLS, implicit TLS and AUTH, against aiosmtpd with a certificate the test makes."""

import pytest

from campaigns.models import Campaign
from delivery import lifecycle
from delivery.models import Relay, Send
from delivery.relaycheck import check_relay
from tests.delivery.conftest import drain, statuses
from tests.delivery.servers import Authenticator, TLSSink
from tests.support.smtp import Sink
from tests.support.tls import server_context

pytestmark = pytest.mark.django_db


@pytest.fixture
def trusted(settings, certificate):
    settings.HERALD_SMTP_CA_FILE = certificate[0]


@pytest.fixture
def auth():
    return Authenticator()


@pytest.fixture
def starttls_sink(certificate, auth):
    with Sink(tls_context=server_context(*certificate), require_starttls=True, authenticator=auth) as server:
        yield server


def test_starttls_with_auth_delivers(trusted, starttls_sink, auth, make_relay, make_campaign):
    make_relay(starttls_sink.port, security=Relay.Security.STARTTLS, username="herald", password="s3cret-relay-pass")
    campaign = make_campaign(["ann@example.com", "bob@example.com"])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    assert sorted(starttls_sink.recipients()) == ["ann@example.com", "bob@example.com"]
    assert auth.attempts == [("PLAIN", True)]


def test_relay_check_reports_each_step(trusted, starttls_sink, make_relay):
    relay = make_relay(starttls_sink.port, security=Relay.Security.STARTTLS, username="herald", password="s3cret-relay-pass")
    result = check_relay(relay)
    assert result.ok, result.message
    assert any("STARTTLS negotiated" in s and "certificate verified" in s for s in result.steps)
    assert any("authenticated as herald" in s for s in result.steps)


def test_refused_auth_pauses_the_campaign_with_the_servers_words(trusted, starttls_sink, make_relay, make_campaign):
    relay = make_relay(starttls_sink.port, security=Relay.Security.STARTTLS, username="herald", password="wrong")
    result = check_relay(relay)
    assert not result.ok
    assert result.message.startswith("535 5.7.8") and f"from 127.0.0.1:{starttls_sink.port}" in result.message

    campaign = make_campaign(["ann@example.com", "bob@example.com"])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    assert "535 5.7.8" in campaign.status_reason and "test relay" in campaign.status_reason
    # Nothing was burnt: every recipient is still queued, with no attempt counted.
    assert set(statuses(campaign.pk).values()) == {"queued"}
    assert set(Send.objects.filter(campaign=campaign).values_list("attempts", flat=True)) == {0}
    assert starttls_sink.recipients() == []


def test_an_untrusted_certificate_is_refused_and_nothing_goes_in_plaintext(starttls_sink, make_relay, make_campaign):
    relay = make_relay(starttls_sink.port, security=Relay.Security.STARTTLS, username="herald", password="s3cret-relay-pass")
    result = check_relay(relay)
    assert not result.ok and "certificate" in result.message
    assert "name a private CA's certificate in HERALD_SMTP_CA_FILE" in result.message

    campaign = make_campaign(["ann@example.com"])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED and "certificate" in campaign.status_reason
    assert starttls_sink.recipients() == []


def test_starttls_required_but_not_offered_is_refused(sink, make_relay):
    relay = make_relay(sink.port, security=Relay.Security.STARTTLS)
    result = check_relay(relay)
    assert not result.ok and "does not offer STARTTLS" in result.message


def test_unverified_certificate_allowed_when_the_operator_turns_verification_off(starttls_sink, make_relay):
    relay = make_relay(starttls_sink.port, security=Relay.Security.STARTTLS, verify_certificate=False,
                       username="herald", password="s3cret-relay-pass")
    result = check_relay(relay)
    assert result.ok, result.message
    assert any("certificate not verified" in s for s in result.steps)


def test_implicit_tls_delivers(trusted, certificate, make_relay, make_campaign):
    with TLSSink(server_context(*certificate)) as server:
        make_relay(server.port, security=Relay.Security.TLS)
        campaign = make_campaign(["ann@example.com"])
        lifecycle.start_campaign(campaign.pk)
        drain(campaign.pk)
        assert server.recipients() == ["ann@example.com"]


def test_a_relay_that_keeps_refusing_connections_pauses_the_campaign(make_relay, make_campaign, monkeypatch):
    from delivery import engine
    from tests.support.smtp import free_port

    monkeypatch.setattr(engine, "RELAY_DOWN_SECONDS", 0)  # as if it had been down long enough
    make_relay(free_port())  # nothing listens there
    campaign = make_campaign([f"u@d{i}.example" for i in range(6)])  # six domains: six batches
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    assert "cannot connect to 127.0.0.1" in campaign.status_reason
    counts = lifecycle.counts(campaign.pk)
    assert counts["total"] == counts["deferred"] + counts["queued"] == 6
