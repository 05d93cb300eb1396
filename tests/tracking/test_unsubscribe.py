"""Unsubscribe pages: GET only asks, POST and RFC 8058 one-click unsubscribe; English and German."""

import pytest

from campaigns.models import Contact, Subscription, Suppression
from delivery import tokens
from tracking.models import Event

pytestmark = pytest.mark.django_db


def local(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def statuses(contact):
    return dict(Subscription.objects.filter(contact=contact).values_list("mailing_list__name", "status"))


def test_get_shows_a_confirmation_and_changes_nothing(client, alice, alice_send):
    response = client.get(local(tokens.unsubscribe_url(alice_send.pk)))
    assert response.status_code == 200
    assert b"alice@example.org" in response.content
    assert b'method="post"' in response.content
    assert set(statuses(alice).values()) == {"confirmed"}
    assert not Event.objects.exists() and not Suppression.objects.exists()
    alice.refresh_from_db()
    assert alice.status == Contact.Status.ACTIVE


def test_page_is_german_for_a_german_browser(client, alice_send):
    url = local(tokens.unsubscribe_url(alice_send.pk))
    response = client.get(url, HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9,en;q=0.5")
    text = response.content.decode()
    assert 'lang="de"' in text
    assert "Möchten Sie diese E-Mails an alice@example.org nicht mehr erhalten?" in text
    done = client.post(url, {"scope": "all"}, HTTP_ACCEPT_LANGUAGE="de").content.decode()
    assert "Sie sind abgemeldet" in done
    assert "Abmelden" not in client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()


def test_post_unsubscribes_from_the_campaigns_lists_only(client, alice, alice_send):
    response = client.post(local(tokens.unsubscribe_url(alice_send.pk)), {"scope": "lists"})
    assert response.status_code == 200
    assert b"You are unsubscribed" in response.content
    assert statuses(alice) == {"Newsletter": "unsubscribed", "Offers": "confirmed"}
    alice.refresh_from_db()
    assert alice.status == Contact.Status.ACTIVE
    event = Event.objects.get()
    assert (event.type, event.send_id, event.source) == ("unsubscribe", alice_send.pk, "page")


def test_post_can_unsubscribe_from_everything(client, alice, alice_send):
    client.post(local(tokens.unsubscribe_url(alice_send.pk)), {"scope": "all"})
    alice.refresh_from_db()
    assert alice.status == Contact.Status.UNSUBSCRIBED
    assert set(statuses(alice).values()) == {"unsubscribed"}
    assert Suppression.objects.get().reason == Suppression.Reason.UNSUBSCRIBE


def test_one_click_post_unsubscribes_at_once(client, alice, alice_send):
    response = client.post(local(tokens.unsubscribe_url(alice_send.pk)), "List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert statuses(alice)["Newsletter"] == "unsubscribed"
    assert Event.objects.get().source == "one-click"
    # The provider may retry: the second POST records nothing new.
    client.post(local(tokens.unsubscribe_url(alice_send.pk)), "List-Unsubscribe=One-Click",
                content_type="application/x-www-form-urlencoded")
    assert Event.objects.count() == 1


def test_one_click_as_multipart_form_data(client, alice, alice_send):
    client.post(local(tokens.unsubscribe_url(alice_send.pk)), {"List-Unsubscribe": "One-Click"})
    assert statuses(alice)["Newsletter"] == "unsubscribed"


def test_unknown_scope_is_refused_with_a_clear_message(client, alice, alice_send):
    response = client.post(local(tokens.unsubscribe_url(alice_send.pk)), {"scope": "forever"})
    assert response.status_code == 400
    assert b"scope must be" in response.content
    assert set(statuses(alice).values()) == {"confirmed"}


@pytest.mark.parametrize("method", ["get", "post"])
def test_forged_unsubscribe_token_is_404(client, alice, alice_send, method):
    token = tokens.sign("unsubscribe", alice_send.pk)
    forged = tokens.sign("open", alice_send.pk)
    for bad in (token[:-2], forged, token.replace(token.split("-")[0], "zz")):
        response = getattr(client, method)(f"/t/u/{bad}", {"List-Unsubscribe": "One-Click"} if method == "post" else None)
        assert response.status_code == 404
    assert set(statuses(alice).values()) == {"confirmed"}
    assert not Event.objects.exists()
