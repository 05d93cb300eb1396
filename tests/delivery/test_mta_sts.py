"""MTA-STS (RFC 8461) in direct mode: an enforcing domain gets verified TLS or a deferral, never plaintext."""

from pathlib import Path

import pytest

from campaigns.models import Campaign
from delivery import lifecycle, mtasts
from delivery.models import Send
from tests.delivery.conftest import drain
from tests.delivery.servers import DNSServer, DroppingSink, PolicyServer
from tests.support.tls import make_certificate, server_context

pytestmark = pytest.mark.django_db

ENFORCE = "version: STSv1\nmode: enforce\nmx: *.sts.test\nmax_age: 86400\n"


@pytest.fixture
def mx_certificates(tmp_path):
    """A good certificate for mx.sts.test (its own CA), and an expired one for the same name."""
    return {
        "good": make_certificate(tmp_path, names=("mx.sts.test",)),
        "expired": make_certificate(tmp_path, names=("mx.sts.test",), expired=True),
    }


@pytest.fixture
def sts_world(settings, certificate, tmp_path):
    """DNS for sts.test (MX mx.sts.test, TXT _mta-sts) and an HTTPS server with its policy, on loopback.

    The CA bundle trusts the policy server and, when given, the MX host's certificate ``trust``.
    """

    def start(server, policy=ENFORCE, mx_name="mx.sts.test", txt='"v=STSv1; id=20260101"', trust=None):
        records = {("sts.test", "MX"): [f"10 {mx_name}."], (mx_name, "A"): ["127.0.0.1"]}
        if txt:
            records[("_mta-sts.sts.test", "TXT")] = [txt]
        dns = DNSServer(records).__enter__()
        policies = PolicyServer({"sts.test": policy}, server_context(*certificate)).__enter__()
        opened.extend([dns, policies])
        policies.dns = dns
        settings.HERALD_DNS_NAMESERVERS = [dns.address]
        settings.HERALD_DIRECT_PORT = server.port
        settings.HERALD_MTA_STS_POLICY_URL_TEMPLATE = policies.url_template
        bundle = tmp_path / "trusted.pem"
        bundle.write_text("".join(Path(path).read_text() for path in [certificate[0]] + ([trust] if trust else [])))
        settings.HERALD_MTA_STS_CA_FILE = str(bundle)
        return policies

    opened = []
    yield start
    for item in reversed(opened):
        item.__exit__(None, None, None)


def send(make_campaign, addresses):
    campaign = make_campaign(addresses)
    lifecycle.start_campaign(campaign.pk)
    drain(campaign.pk)
    campaign.refresh_from_db()
    return campaign


def test_an_enforcing_domain_whose_mx_has_a_bad_certificate_is_deferred_never_sent_in_plaintext(
        sts_world, mx_certificates, make_campaign):
    with DroppingSink(tls_context=server_context(*mx_certificates["expired"])) as server:
        sts_world(server, trust=mx_certificates["expired"][0])
        campaign = send(make_campaign, ["ann@sts.test"])
        assert server.recipients() == []
        ann = Send.objects.get(email="ann@sts.test")
        assert ann.status == "deferred"
        assert "MTA-STS" in ann.smtp_reply and "expired" in ann.smtp_reply
        assert campaign.status == Campaign.Status.SENDING  # waiting for the retry, not paused


def test_an_enforcing_domain_whose_mx_offers_no_starttls_is_deferred(sts_world, make_campaign):
    with DroppingSink() as server:
        sts_world(server)
        send(make_campaign, ["ann@sts.test"])
        assert server.recipients() == []
        ann = Send.objects.get(email="ann@sts.test")
        assert ann.status == "deferred" and "MTA-STS" in ann.smtp_reply


def test_an_enforcing_domain_with_a_good_certificate_is_delivered_over_verified_tls(
        sts_world, mx_certificates, make_campaign):
    with DroppingSink(tls_context=server_context(*mx_certificates["good"])) as server:
        policies = sts_world(server, trust=mx_certificates["good"][0])
        campaign = send(make_campaign, ["ann@sts.test", "bob@sts.test"])
        assert sorted(server.recipients()) == ["ann@sts.test", "bob@sts.test"]
        assert server.tls_sessions == [True, True]
        assert campaign.status == Campaign.Status.FINISHED
        assert policies.requests == ["sts.test"]  # fetched once, then cached


def test_an_mx_host_the_policy_does_not_name_is_not_used(sts_world, mx_certificates, make_campaign):
    with DroppingSink(tls_context=server_context(*mx_certificates["good"])) as server:
        sts_world(server, mx_name="mx.elsewhere.test", trust=mx_certificates["good"][0])
        send(make_campaign, ["ann@sts.test"])
        assert server.recipients() == []
        ann = Send.objects.get(email="ann@sts.test")
        assert ann.status == "deferred" and "MTA-STS" in ann.smtp_reply


def test_a_testing_policy_reports_a_bad_certificate_but_delivers_over_tls(
        sts_world, mx_certificates, make_campaign, caplog):
    with DroppingSink(tls_context=server_context(*mx_certificates["expired"])) as server:
        sts_world(server, policy=ENFORCE.replace("enforce", "testing"), trust=mx_certificates["expired"][0])
        campaign = send(make_campaign, ["ann@sts.test"])
        assert server.recipients() == ["ann@sts.test"]
        assert server.tls_sessions == [True]
        assert campaign.status == Campaign.Status.FINISHED
    assert any("MTA-STS policy of sts.test (testing)" in r.getMessage() and "expired" in r.getMessage()
               for r in caplog.records)


def test_without_a_txt_record_no_policy_is_fetched(sts_world, make_campaign):
    with DroppingSink() as server:
        policies = sts_world(server, txt=None)
        send(make_campaign, ["ann@sts.test"])
        assert server.recipients() == ["ann@sts.test"]
        assert policies.requests == []


def test_a_policy_is_cached_and_fetched_again_when_its_id_changes(sts_world, redis_client):
    with DroppingSink() as server:
        policies = sts_world(server)
        assert mtasts.policy_for("sts.test").mode == "enforce"
        assert mtasts.policy_for("sts.test").id == "20260101"
        assert policies.requests == ["sts.test"]
        assert 0 < redis_client.ttl(mtasts._key("sts.test")) <= 86400
        mtasts.clear_cache()
        policies.policies["sts.test"] = ENFORCE.replace("enforce", "none")
        # Same id in DNS: the cached policy stands.
        assert mtasts.policy_for("sts.test").mode == "enforce"
        assert policies.requests == ["sts.test"]
        # A new id: the new policy is fetched.
        policies.dns.records[("_mta-sts.sts.test", "TXT")] = ['"v=STSv1; id=20260202"']
        mtasts.clear_cache()
        assert mtasts.policy_for("sts.test").mode == "none"
        assert policies.requests == ["sts.test", "sts.test"]


@pytest.mark.parametrize(("host", "allowed"), [
    ("mx.sts.test", True), ("a.b.sts.test", False), ("sts.test", False), ("mx.sts.test.evil", False),
])
def test_mx_patterns_match_one_label_for_a_wildcard(host, allowed):
    policy = mtasts.parse(ENFORCE, "1")
    assert policy.allows(host) is allowed


def test_a_malformed_policy_is_refused():
    with pytest.raises(ValueError):
        mtasts.parse("version: STSv1\nmode: enforce\nmax_age: 86400\n", "1")  # no mx
    with pytest.raises(ValueError):
        mtasts.parse("mode: enforce\nmx: mx.sts.test\nmax_age: 1\n", "1")  # no version


def test_a_domain_that_is_not_a_host_name_never_builds_a_policy_url(sts_world):
    with DroppingSink() as server:
        policies = sts_world(server)
        assert mtasts.policy_for("sts.test/../evil") is None
        assert mtasts.policy_for("sts.test@127.0.0.1") is None
        assert policies.requests == []


def test_the_relays_ca_bundle_does_not_vouch_for_an_mx_host(settings, sts_world, mx_certificates, make_campaign):
    """HERALD_SMTP_CA_FILE is the relay's private CA; MTA-STS checks MX hosts against its own bundle."""
    settings.HERALD_SMTP_CA_FILE = mx_certificates["good"][0]
    with DroppingSink(tls_context=server_context(*mx_certificates["good"])) as server:
        sts_world(server)
        send(make_campaign, ["ann@sts.test"])
        assert server.recipients() == []
        assert Send.objects.get(email="ann@sts.test").status == "deferred"
