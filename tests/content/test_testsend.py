"""Test sends go the way campaign sends go: real SMTP servers on loopback, real Redis for the limits."""


import pytest
from aiosmtpd.smtp import AuthResult
from django.contrib.auth.models import Permission, User
from django.test import Client

from campaigns.models import ApiToken, Suppression
from delivery import routing
from delivery.models import DomainThrottle, Period, Relay
from delivery.testsend import TestSendLimited, send_test
from delivery.throttle import throttles
from tests.support.smtp import Rules, Sink, free_port
from tests.support.tls import make_certificate, server_context


@pytest.fixture(autouse=True)
def fresh_limits(redis_client):
    """Empty buckets and the relay re-read, as on a fresh installation."""
    routing.forget_relay()
    throttles.invalidate()
    yield
    routing.forget_relay()
    throttles.invalidate()


def relay_for(sink, **extra):
    return Relay.objects.create(name=extra.pop("name", f"relay {sink.port}"), host="127.0.0.1", port=sink.port,
                                security=extra.pop("security", Relay.Security.NONE), **extra)


@pytest.fixture
def writer(db):
    """A user who may change campaigns, and so send tests."""
    user = User.objects.create_user("writer", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="campaigns",
                                                        codename__in=["view_campaign", "change_campaign"]))
    return user


@pytest.mark.django_db
def test_sends_the_real_message_to_each_address(sink, campaign, alice):
    relay_for(sink)
    results = send_test(campaign, ["alice@example.com", "stranger@example.org"])
    assert [r.ok for r in results] == [True, True], results
    sink.wait_for(2, timeout=10)
    by_rcpt = {item.rcpt_tos[0]: item.message for item in sink.received}
    assert by_rcpt["alice@example.com"]["Subject"] == "Hello Alice", "an existing contact's fields are used"
    assert by_rcpt["stranger@example.org"]["Subject"] == "Hello", "an unknown address gets empty fields"
    assert by_rcpt["alice@example.com"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert sink.received[0].mail_from.startswith("bounces+")


@pytest.mark.django_db
def test_per_address_errors_and_bad_input(campaign):
    with Sink(rules=Rules(rcpt={"gone@example.com": "550 5.1.1 no such user"})) as server:
        relay_for(server)
        results = send_test(campaign, ["ok@example.com", "gone@example.com", "not an address"])
        by_address = {r.address: r for r in results}
        assert by_address["ok@example.com"].ok
        assert not by_address["gone@example.com"].ok
        assert by_address["gone@example.com"].detail == f"550 5.1.1 no such user from 127.0.0.1:{server.port}"
        assert by_address["not an address"].detail.startswith("not a valid address")
        server.wait_for(1, timeout=10)
    with pytest.raises(ValueError, match="at most 10"):
        send_test(campaign, [f"a{i}@example.com" for i in range(11)])


@pytest.mark.django_db
def test_relay_authentication_failure_is_reported(campaign):
    def refuse(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=False, handled=False)

    with Sink(authenticator=refuse, auth_require_tls=False) as server:
        relay_for(server, username="herald", password="wrong")
        [result] = send_test(campaign, ["alice@example.com"])
    assert not result.ok
    assert result.detail.startswith("535 5.7.8") and result.detail.endswith(f"from 127.0.0.1:{server.port}")


@pytest.mark.django_db
def test_without_relay_goes_straight_to_the_mx_like_the_engine(settings, sink, campaign):
    from tests.delivery.servers import DNSServer

    with DNSServer({("shop.example.net", "MX"): ["10 mx.shop.example.net."], ("mx.shop.example.net", "A"): ["127.0.0.1"]}) as dns:
        settings.HERALD_DNS_NAMESERVERS = [dns.address]
        settings.HERALD_DIRECT_PORT = sink.port
        [result] = send_test(campaign, ["ann@shop.example.net"])
    assert result.ok, result
    assert "(MX of shop.example.net)" in result.detail
    sink.wait_for(1, timeout=10)


@pytest.mark.django_db
def test_unreachable_relay(campaign):
    from tests.support.smtp import free_port

    Relay.objects.create(name="down", host="127.0.0.1", port=free_port(), security=Relay.Security.NONE)
    [result] = send_test(campaign, ["alice@example.com"])
    assert not result.ok and result.detail.startswith("cannot connect to 127.0.0.1:")


@pytest.fixture
def tls_context(tmp_path):
    return server_context(*make_certificate(tmp_path))


@pytest.mark.django_db
def test_starttls_relay_checks_the_certificate(tls_context, campaign):
    with Sink(tls_context=tls_context, require_starttls=True) as server:
        relay = relay_for(server, security=Relay.Security.STARTTLS, verify_certificate=True)
        [refused] = send_test(campaign, ["alice@example.com"])
        assert not refused.ok and "certificate" in refused.detail.lower()
        relay.verify_certificate = False
        relay.save()
        [accepted] = send_test(campaign, ["alice@example.com"])
        assert accepted.ok, accepted
        server.wait_for(1, timeout=10)


@pytest.mark.django_db
def test_test_sends_take_the_engines_relay(sink, campaign):
    # The engine sends through the first enabled relay by name; so do test sends.
    Relay.objects.create(name="b-backup", host="127.0.0.1", port=free_port(), security=Relay.Security.NONE)
    relay_for(sink, name="a-main")
    assert routing.active_relay().name == "a-main"
    [result] = send_test(campaign, ["alice@example.com"])
    assert result.ok, result
    sink.wait_for(1, timeout=10)


@pytest.mark.django_db
def test_the_relay_certificate_is_checked_against_herald_smtp_ca_file(settings, tmp_path, campaign):
    cert, key = make_certificate(tmp_path)  # the relay's own CA, unknown to the system
    with Sink(tls_context=server_context(cert, key), require_starttls=True) as server:
        relay_for(server, security=Relay.Security.STARTTLS, verify_certificate=True)
        settings.HERALD_SMTP_CA_FILE = ""
        [refused] = send_test(campaign, ["alice@example.com"])
        assert (refused.ok, refused.status) == (False, "failed")
        assert refused.detail.startswith(f"TLS certificate of 127.0.0.1:{server.port} not accepted: ")
        assert "HERALD_SMTP_CA_FILE" in refused.detail, refused.detail  # says where a private CA goes
        settings.HERALD_SMTP_CA_FILE = cert
        [accepted] = send_test(campaign, ["alice@example.com"])
        assert accepted.ok, accepted
        server.wait_for(1, timeout=10)
    assert server.recipients() == ["alice@example.com"]


@pytest.mark.django_db
def test_a_suppressed_address_is_reported_and_not_mailed(sink, campaign):
    relay_for(sink)
    Suppression.objects.create(email="Gone@Example.com", reason=Suppression.Reason.HARD_BOUNCE)
    results = send_test(campaign, ["gone@example.com", "ok@example.com"])
    assert [(r.address, r.ok, r.status) for r in results] == [
        ("gone@example.com", False, "suppressed"), ("ok@example.com", True, "sent")]
    assert "suppressed (hard_bounce)" in results[0].detail
    sink.wait_for(1, timeout=10)
    assert sink.recipients() == ["ok@example.com"]


@pytest.mark.django_db
def test_test_sends_take_tokens_from_the_domain_and_relay_buckets(campaign):
    DomainThrottle.objects.create(name="slow", domains="slow.example", rate=2, period=Period.HOUR)
    with Sink() as server:
        relay_for(server, rate=3, rate_period=Period.HOUR)
        first = send_test(campaign, ["a@slow.example", "b@slow.example", "c@slow.example"])
        assert [r.status for r in first] == ["sent", "sent", "throttled"]
        assert first[2].detail.startswith("throttled: the rate limit for slow.example; try again in ")
        # The relay allows three an hour: two went to slow.example, one is left for everyone else.
        second = send_test(campaign, ["d@fast.example", "e@fast.example"])
        assert [r.status for r in second] == ["sent", "throttled"]
        assert "the rate of relay" in second[1].detail
        server.wait_for(3, timeout=10)
        assert sorted(server.recipients()) == ["a@slow.example", "b@slow.example", "d@fast.example"]


@pytest.mark.django_db
def test_each_user_mails_at_most_the_hourly_limit_of_recipients(sink, campaign, writer):
    relay_for(sink)
    for batch in range(5):  # HERALD_TEST_SEND_LIMIT: 50 recipients per user per hour by default
        results = send_test(campaign, [f"r{batch}-{i}@example.com" for i in range(10)], user=writer)
        assert all(r.ok for r in results), results
    with pytest.raises(TestSendLimited, match="at most 50 recipients per user per hour") as limited:
        send_test(campaign, ["one-more@example.com"], user=writer)
    assert 60 <= limited.value.retry_after <= 80  # one recipient more every 72 s
    sink.wait_for(50, timeout=30)
    assert len(sink.received) == 50

    # Through the API: 429 with Retry-After, and nothing sent.
    api = Client(headers={"Authorization": f"Bearer {ApiToken.issue(writer)[1]}"})
    response = api.post(f"/api/v1/campaigns/{campaign.pk}/test", {"addresses": ["one-more@example.com"]},
                        content_type="application/json")
    assert response.status_code == 429, response.content
    assert 60 <= int(response["Retry-After"]) <= 80
    assert "test send limit reached" in response.json()["detail"]
    # Another user has their own allowance.
    other = User.objects.create_user("other", is_staff=True)
    other.user_permissions.set(writer.user_permissions.all())
    api = Client(headers={"Authorization": f"Bearer {ApiToken.issue(other)[1]}"})
    response = api.post(f"/api/v1/campaigns/{campaign.pk}/test", {"addresses": ["one-more@example.com"]},
                        content_type="application/json")
    assert response.status_code == 200 and response.json()[0]["status"] == "sent"


@pytest.mark.django_db
def test_the_admin_says_when_the_test_send_limit_is_reached(sink, campaign, writer):
    relay_for(sink)
    staff = Client()
    staff.force_login(writer)
    url = f"/admin/campaigns/campaign/{campaign.pk}/test/"
    for batch in range(5):
        staff.post(url, {"addresses": ", ".join(f"r{batch}-{i}@example.com" for i in range(10))})
    page = staff.post(url, {"addresses": "one-more@example.com"}, follow=True).content.decode()
    assert "test send limit reached" in page and "try again in" in page
    sink.wait_for(50, timeout=30)
    assert "one-more@example.com" not in sink.recipients()
