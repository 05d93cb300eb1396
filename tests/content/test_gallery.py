"""The starter gallery: every starter renders for a contact, with a text part, working links, unsubscribe and preferences."""

import re
from email import message_from_bytes, policy

import pytest

from campaigns import gallery, presend
from campaigns.models import Campaign, Template
from campaigns.rendering import ContactData
from delivery import tokens
from delivery.message import compile_campaign
from tests.content.conftest import FakeSend

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("starter", gallery.STARTERS, ids=lambda s: s.key)
def test_every_starter_renders_for_a_contact_with_its_links(starter, alice):
    layout = Template.objects.create(name=starter.name, format=starter.format, html=starter.source)
    campaign = Campaign.objects.create(name=starter.name, subject="News for {{ contact.first_name }}",
                                       from_email="news@example.com", html_body=starter.sample, template=layout)
    built = compile_campaign(campaign).build(FakeSend(7, alice.email), ContactData.of(alice))
    msg = message_from_bytes(built.data, policy=policy.default)
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()

    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "@media" in html  # it adapts to a phone's width
    assert "{{" not in html and "{%" not in html and "<mj-" not in html
    assert "Alice" in html and "Alice" in text
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs and all(h.startswith(("http://", "https://")) for h in hrefs), hrefs
    for url in (tokens.unsubscribe_url(7), tokens.preferences_url(7)):
        assert f'href="{url}"' in html and f"({url})" in text  # a link in both parts
    assert "Unsubscribe" in text and "preferences" in text.lower()
    assert len(text.split()) > 30  # the text part reads as the message, not a stub


@pytest.mark.parametrize("starter", gallery.STARTERS, ids=lambda s: s.key)
def test_every_starter_passes_the_pre_send_check(starter, alice):
    layout = Template(name=starter.name, format=starter.format, html=starter.source)
    campaign = Campaign(subject="News for {{ contact.first_name }}", from_email="news@example.com",
                        html_body=starter.sample, template=layout)
    assert presend.check(campaign, alice, links=False) == []
