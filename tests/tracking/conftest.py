from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign, CampaignLink, Contact, MailingList, Subscription
from delivery.models import Send


@pytest.fixture
def newsletter():
    return MailingList.objects.create(name="Newsletter")


@pytest.fixture
def offers():
    return MailingList.objects.create(name="Offers")


@pytest.fixture
def campaign(newsletter):
    campaign = Campaign.objects.create(
        name="Spring", subject="Spring news", from_email="news@shop.example",
        html_body='<p>Hello {{ contact.first_name }}</p><a href="https://shop.example/spring">Spring</a>',
        text_body="Hello {{ contact.first_name }}",
    )
    campaign.lists.add(newsletter)
    CampaignLink.objects.create(campaign=campaign, index=0, url="https://shop.example/spring")
    CampaignLink.objects.create(campaign=campaign, index=1, url="https://shop.example/sale?utm=1")
    return campaign


def make_send(campaign, contact, sent_ago=timedelta(hours=1), **fields):
    sent_at = timezone.now() - sent_ago if sent_ago is not None else None
    fields.setdefault("status", Send.Status.SENT)
    return Send.objects.create(
        campaign=campaign, contact=contact, email=contact.email, domain=contact.domain, sent_at=sent_at, **fields
    )


@pytest.fixture
def alice(newsletter, offers):
    contact = Contact.objects.create(email="alice@example.org", first_name="Alice")
    Subscription.objects.create(contact=contact, mailing_list=newsletter)
    Subscription.objects.create(contact=contact, mailing_list=offers)
    return contact


@pytest.fixture
def bob(newsletter):
    contact = Contact.objects.create(email="bob@example.net", first_name="Bob")
    Subscription.objects.create(contact=contact, mailing_list=newsletter)
    return contact


@pytest.fixture
def alice_send(campaign, alice):
    return make_send(campaign, alice, message_id="spring-alice@shop.example")


@pytest.fixture
def bob_send(campaign, bob):
    return make_send(campaign, bob, message_id="spring-bob@shop.example")
