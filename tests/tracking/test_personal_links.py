"""Links whose URL is personal (it has expressions): tracked by their place in the template, rendered at click time."""

import re
from email import message_from_bytes, policy

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns import rendering
from campaigns.models import Campaign, CampaignLink, Contact
from delivery.message import compile_campaign
from tests.tracking.conftest import make_send
from tracking.models import Event

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def referral(newsletter):
    campaign = Campaign.objects.create(
        name="Referral", subject="Your code", from_email="news@shop.example",
        html_body='<p>Hello</p><a href="https://shop.example/spring">Spring</a>'
                  ' <a href="https://shop.example/r/{{ contact.attributes.code }}?m={{ contact.email }}">Invite</a>'
                  ' <a href="{{ contact.attributes.site }}">Your site</a>',
    )
    campaign.lists.add(newsletter)
    return campaign


@pytest.fixture
def carol(newsletter):
    return Contact.objects.create(email="carol@example.org", attributes={"code": "C42", "site": "https://carol.example/"})


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def clicks_of(built):
    html = message_from_bytes(built.data, policy=policy.default).get_body(preferencelist=("html",)).get_content()
    return re.findall(r'href="([^"]*/t/c/[^"]+)"', html), html


def test_building_messages_with_personal_links_makes_no_query_per_message(referral):
    compiled = compile_campaign(referral)
    people = [rendering.ContactData(f"p{n}@example.org", attributes={"code": f"K{n}", "site": f"https://p{n}.example/"})
              for n in range(40)]
    with CaptureQueriesContext(connection) as queries:
        for n, person in enumerate(people):
            built = compiled.build(make_fake(1000 + n, person.email), person)
            assert len(clicks_of(built)[0]) == 3
    assert [q["sql"] for q in queries.captured_queries] == [], "no lock on the campaign, no scan of its links"
    assert CampaignLink.objects.filter(campaign=referral).count() == 3, "one row per link of the template, not per URL"


def test_click_on_a_personal_link_goes_to_the_recipients_own_url(client, referral, carol):
    send = make_send(referral, carol)
    clicks, _ = clicks_of(compile_campaign(referral).build(send, carol))
    targets = []
    for url in clicks:
        response = client.get(local(url), HTTP_USER_AGENT=BROWSER)
        assert response.status_code == 302
        targets.append(response["Location"])
    assert targets == ["https://shop.example/spring", "https://shop.example/r/C42?m=carol@example.org",
                       "https://carol.example/"]
    events = Event.objects.filter(type=Event.Type.CLICK).order_by("link_index")
    assert [(e.url, e.send_id) for e in events] == [(t, send.pk) for t in targets]
    assert len({e.link_index for e in events}) == 3


def test_personal_link_that_no_longer_renders_a_web_address_is_refused(client, referral, carol):
    send = make_send(referral, carol)
    clicks, _ = clicks_of(compile_campaign(referral).build(send, carol))
    Contact.objects.filter(pk=carol.pk).update(attributes={"code": "C42", "site": "javascript:alert(1)"})
    assert client.get(local(clicks[2]), HTTP_USER_AGENT=BROWSER).status_code == 404
    assert not Event.objects.exists()


def test_personal_link_rendering_no_web_address_is_left_untracked(referral):
    person = rendering.ContactData("dan@example.org", attributes={"code": "D1", "site": "mailto:dan@example.org"})
    clicks, html = clicks_of(compile_campaign(referral).build(make_fake(7, person.email), person))
    assert len(clicks) == 2 and 'href="mailto:dan@example.org"' in html


def make_fake(pk, email):
    from tests.content.conftest import FakeSend

    return FakeSend(pk, email)
