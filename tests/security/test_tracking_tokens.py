"""Tracking and unsubscribe URLs with guessed or altered tokens: 404, nothing recorded, nothing about the contact shown."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.models import Campaign, CampaignLink, Contact, MailingList, Subscription
from delivery.models import Send
from delivery.tokens import sign
from tracking.models import Event

pytestmark = pytest.mark.django_db

SECRETS = ("alice.secret@example.com", "Alicesecret", "Liddellsecret", "Spring subject secret")


@pytest.fixture
def send(db):
    lst = MailingList.objects.create(name="Readers")
    alice = Contact.objects.create(email=SECRETS[0], first_name=SECRETS[1], last_name=SECRETS[2])
    Subscription.objects.create(contact=alice, mailing_list=lst)
    campaign = Campaign.objects.create(name="Spring", subject=SECRETS[3], from_email="news@example.com",
                                       html_body=f"<p>{SECRETS[1]}</p>", status=Campaign.Status.FINISHED)
    campaign.lists.add(lst)
    CampaignLink.objects.create(campaign=campaign, index=0, url="https://shop.example/spring")
    return Send.objects.create(campaign=campaign, contact=alice, email=alice.email, domain="example.com", status="sent")


def urls(send_id, link=0):
    return {
        "open": f"/t/o/{sign('open', send_id)}.gif",
        "click": f"/t/c/{sign('click', send_id, link)}",
        "unsubscribe": f"/t/u/{sign('unsubscribe', send_id)}",
        "view": f"/t/v/{sign('view', send_id)}",
    }


def assert_reveals_nothing(response):
    assert response.status_code == 404, (response.status_code, response.content[:200])
    body = response.content.decode("utf-8", "replace")
    for secret in SECRETS:
        assert secret.lower() not in body.lower()


def assert_nothing_changed(send):
    assert Event.objects.count() == 0
    contact = Contact.objects.get(pk=send.contact_id)
    assert contact.status == Contact.Status.ACTIVE
    assert set(contact.subscriptions.values_list("status", flat=True)) == {"confirmed"}


def hit(client, kind, url):
    if kind == "unsubscribe":
        return [client.get(url), client.post(url, {"List-Unsubscribe": "One-Click"}), client.post(url, {"scope": "all"})]
    return [client.get(url)]


def test_valid_tokens_work(client, send):
    u = urls(send.pk)
    assert client.get(u["open"]).status_code == 200
    assert client.get(u["click"])["Location"] == "https://shop.example/spring"
    assert client.get(u["view"]).status_code == 200
    assert client.get(u["unsubscribe"]).status_code == 200


@pytest.mark.parametrize("kind", ["open", "click", "unsubscribe", "view"])
def test_tokens_for_another_purpose_a_missing_send_or_a_missing_link_are_refused(client, send, kind):
    other_purpose = {"open": "view", "click": "open", "unsubscribe": "bounce", "view": "unsubscribe"}[kind]
    forged = urls(send.pk)[kind].replace(sign(kind, *((send.pk, 0) if kind == "click" else (send.pk,))),
                                         sign(other_purpose, *((send.pk, 0) if kind == "click" else (send.pk,))))
    for url in (forged, urls(send.pk + 1)[kind], urls(send.pk, link=7)[kind] if kind == "click" else forged):
        for response in hit(client, kind, url):
            assert_reveals_nothing(response)
    assert_nothing_changed(send)


@given(kind=st.sampled_from(["open", "click", "unsubscribe", "view"]), position=st.integers(0, 60),
       char=st.sampled_from("0123456789abcdefghijklmnopqrstuvwxyz-_.%~ABC"), guess=st.integers(1, 10**6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_altered_and_guessed_tokens_reveal_and_change_nothing(client, send, kind, position, char, guess):
    url = urls(send.pk)[kind]
    prefix, _, token = url.rpartition("/")
    suffix = ".gif" if token.endswith(".gif") else ""
    token = token.removesuffix(suffix)
    position %= len(token)
    if token[position].lower() != char.lower():
        altered = token[:position] + char + token[position + 1:]
        for response in hit(client, kind, f"{prefix}/{altered}{suffix}"):
            assert_reveals_nothing(response)
    # A guessed send id with a made-up MAC of the right shape.
    for response in hit(client, kind, f"{prefix}/{guess:x}-{'a' * 16}{suffix}"):
        assert_reveals_nothing(response)
    assert_nothing_changed(send)
