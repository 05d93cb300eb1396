"""A campaign's content is frozen when it starts: a paused campaign edited anyway, or its layout edited, sends
what the first recipients got; "view in browser" shows what was sent; the admin and the API refuse the edit."""

import pytest
from django.contrib.auth.models import User

from campaigns.models import ApiToken, Campaign, Template
from delivery import engine, lifecycle
from delivery.models import Send
from delivery.tokens import view_url
from tests.delivery.conftest import drain

pytestmark = pytest.mark.django_db

ADDRESSES = [f"f{i}@example.com" for i in range(6)]


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def part(message, kind):
    return message.get_body(preferencelist=(kind,)).get_content()


@pytest.fixture
def layout():
    return Template.objects.create(name="Frame", html="<div class='frame'>Spring frame {{ content }}</div>",
                                   text="Spring frame\n{{ content }}")


@pytest.fixture
def spring(make_campaign, layout):
    return make_campaign(ADDRESSES, subject="Spring sale for {{ contact.first_name }}",
                         html_body="<p>Twenty percent off</p>", text_body="Twenty percent off", template=layout)


def edit_behind_the_admins_back(campaign, layout):
    """What an edit of a paused campaign (or of its shared layout) would change, done on the rows themselves."""
    Campaign.objects.filter(pk=campaign.pk).update(subject="Autumn sale", html_body="<p>Fifty percent off</p>",
                                                   text_body="Fifty percent off", from_email="autumn@herald.example")
    layout.html = "<div>Autumn frame {{ content }}</div>"
    layout.text = "Autumn frame\n{{ content }}"
    layout.save()


def test_a_paused_campaign_edited_sends_its_remaining_recipients_the_frozen_content(sink, relay, spring, layout):
    lifecycle.start_campaign(spring.pk)
    ids = list(Send.objects.filter(campaign=spring).order_by("id").values_list("id", flat=True))
    engine.send_batch(ids[:2])
    lifecycle.pause_campaign(spring.pk)

    edit_behind_the_admins_back(spring, layout)
    lifecycle.resume_campaign(spring.pk)
    drain(spring.pk)

    assert sorted(sink.recipients()) == sorted(ADDRESSES)
    for item in sink.received:
        message = item.message
        assert message["Subject"].startswith("Spring sale for f"), message["Subject"]
        assert message["From"].endswith("<news@herald.example>")
        assert "Twenty percent off" in part(message, "html") and "Spring frame" in part(message, "html")
        assert "Twenty percent off" in part(message, "plain") and "Spring frame" in part(message, "plain")
        assert "Autumn" not in item.data.decode() and "Fifty" not in item.data.decode()


def test_view_in_browser_shows_the_message_as_sent_not_the_current_draft(client, sink, relay, spring, layout):
    lifecycle.start_campaign(spring.pk)
    drain(spring.pk)
    send = Send.objects.filter(campaign=spring).order_by("id").first()

    edit_behind_the_admins_back(spring, layout)
    page = client.get(local(view_url(send.pk)))

    assert page.status_code == 200
    html = page.content.decode()
    assert "Twenty percent off" in html and "Spring frame" in html
    assert "Fifty" not in html and "Autumn" not in html


def test_a_draft_is_seen_in_the_browser_as_it_is_now(client, spring, make_campaign):
    """No frozen copy before the start: an unstarted campaign has only its current content."""
    contact = spring.lists.get().subscriptions.first().contact
    send = Send.objects.create(campaign=spring, contact=contact, email=contact.email, domain=contact.domain)
    Campaign.objects.filter(pk=spring.pk).update(html_body="<p>Rewritten draft</p>")
    assert "Rewritten draft" in client.get(local(view_url(send.pk))).content.decode()


@pytest.mark.parametrize("status", ["starting", "sending", "paused", "finished"])
def test_the_api_refuses_to_edit_a_started_campaign_and_says_why(client, spring, status):
    lifecycle.start_campaign(spring.pk)
    Campaign.objects.filter(pk=spring.pk).update(status=status)
    user = User.objects.create_superuser("ed", "ed@herald.example", "a long passphrase 42")
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)[1]}"}

    response = client.patch(f"/api/v1/campaigns/{spring.pk}", {"subject": "Autumn sale"},
                            content_type="application/json", **bearer)

    assert response.status_code == 409
    detail = response.json()["detail"]
    assert detail.startswith(f"status: campaign {spring.pk} is {status}")
    assert "frozen when it starts" in detail and "new campaign" in detail
    spring.refresh_from_db()
    assert spring.subject == "Spring sale for {{ contact.first_name }}"


def test_the_admin_shows_a_paused_campaign_read_only_and_keeps_its_content(client, spring):
    lifecycle.start_campaign(spring.pk)
    lifecycle.pause_campaign(spring.pk)
    client.force_login(User.objects.create_superuser("olga", "olga@herald.example", "a long passphrase 42"))
    url = f"/admin/campaigns/campaign/{spring.pk}/change/"

    page = client.get(url).content.decode()
    assert 'name="subject"' not in page and 'name="html_body"' not in page
    assert "frozen when it started" in page and 'id="herald-duplicate"' in page

    client.post(url, {"name": "Renamed", "subject": "Autumn sale", "html_body": "<p>Fifty percent off</p>",
                      "from_email": "news@herald.example"})
    spring.refresh_from_db()
    assert spring.subject == "Spring sale for {{ contact.first_name }}"
    assert spring.html_body == "<p>Twenty percent off</p>"
