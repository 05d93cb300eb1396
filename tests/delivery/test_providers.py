"""Direct mode counts a provider's domains as one destination, from the MX host suffixes it ships."""

import pytest
from django.urls import reverse

from delivery import engine, lifecycle, routing, throttle
from delivery.models import DomainThrottle, ProviderRule, Send
from tests.delivery.conftest import drain
from tests.delivery.servers import DNSServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenants(settings, sink):
    """Two Microsoft 365 tenants, two Google Workspace domains with different host subsets, and a small host."""
    records = {
        ("contoso.test", "MX"): ["0 contoso-test.mail.protection.outlook.com."],
        ("fabrikam.test", "MX"): ["0 fabrikam-test.mail.protection.outlook.com."],
        ("contoso-test.mail.protection.outlook.com", "A"): ["127.0.0.1"],
        ("fabrikam-test.mail.protection.outlook.com", "A"): ["127.0.0.1"],
        ("studio.test", "MX"): ["1 aspmx.l.google.com.", "5 alt1.aspmx.l.google.com."],
        ("bakery.test", "MX"): ["1 aspmx.l.google.com.", "10 aspmx2.googlemail.com."],
        ("aspmx.l.google.com", "A"): ["127.0.0.1"],
        ("alt1.aspmx.l.google.com", "A"): ["127.0.0.1"],
        ("aspmx2.googlemail.com", "A"): ["127.0.0.1"],
        ("smallhost.test", "MX"): ["10 mail.smallhost.test."],
        ("mail.smallhost.test", "A"): ["127.0.0.1"],
    }
    with DNSServer(records) as server:
        settings.HERALD_DNS_NAMESERVERS = [server.address]
        settings.HERALD_DIRECT_PORT = sink.port
        yield server


def test_the_default_rules_ship_for_the_large_providers():
    rules = dict(ProviderRule.objects.values_list("mx_suffix", "name"))
    assert rules["mail.protection.outlook.com"] == rules["olc.protection.outlook.com"] == "microsoft"
    assert rules["google.com"] == rules["googlemail.com"] == "google"
    assert {rules["yahoodns.net"], rules["mail.icloud.com"], rules["gmx.net"], rules["web.de"]} == {"yahoo", "apple", "gmx"}


def test_tenants_of_one_provider_share_one_throttle_group(tenants):
    assert routing.group_of("contoso.test") == routing.group_of("fabrikam.test") == "domain:microsoft"
    assert routing.group_of("studio.test") == routing.group_of("bakery.test") == "domain:google"
    assert routing.group_of("smallhost.test") == "domain:mail.smallhost.test"


def test_a_throttle_naming_the_provider_holds_across_all_its_domains(tenants, make_campaign):
    DomainThrottle.objects.create(name="Microsoft", domains="microsoft", rate=2, period="hour")
    throttle.throttles.invalidate()
    campaign = make_campaign(["ann@contoso.test", "bob@fabrikam.test", "cat@contoso.test", "dan@fabrikam.test"])
    lifecycle.start_campaign(campaign.pk)
    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    # Two an hour for the whole provider, whichever tenant the addresses are at.
    assert Send.objects.filter(status="sent").count() == 2
    assert Send.objects.filter(status="queued").count() == 2


def test_an_operator_rule_groups_another_provider(tenants):
    assert routing.group_of("smallhost.test") != "domain:smallhost"
    ProviderRule.objects.create(name="SmallHost", mx_suffix=".smallhost.test")
    assert routing.group_of("smallhost.test") == "domain:smallhost"


def test_provider_tenants_still_get_their_own_connections(tenants, sink, make_campaign):
    """One limit, but never a connection to one tenant's MX host carrying another tenant's mail."""
    assert routing.route_for("contoso.test").pool_key != routing.route_for("fabrikam.test").pool_key
    campaign = make_campaign(["ann@contoso.test", "bob@fabrikam.test"])
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    assert sorted(sink.recipients()) == ["ann@contoso.test", "bob@fabrikam.test"]


def test_an_operator_adds_a_rule_in_the_admin_and_it_applies_at_once(tenants, admin_client):
    response = admin_client.post(reverse("admin:delivery_providerrule_add"),
                                 {"name": "SmallHost", "mx_suffix": "*.smallhost.test", "enabled": "on"})
    assert response.status_code == 302
    assert routing.group_of("smallhost.test") == "domain:smallhost"
    again = admin_client.post(reverse("admin:delivery_providerrule_add"),
                              {"name": "other", "mx_suffix": ".SmallHost.test.", "enabled": "on"})
    assert again.status_code == 200 and "already exists" in again.content.decode()
