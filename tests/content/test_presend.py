"""The pre-send check: each warning, and the missing unsubscribe link that blocks the send."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import User

from campaigns import presend
from campaigns.models import ApiToken, Campaign, MailingList, Subscription

pytestmark = pytest.mark.django_db

FOOTER = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
WORDS = "<p>" + "A paragraph of real words that a reader reads. " * 6 + "</p>"


def codes(html_body, subject="Spring news", **kwargs):
    campaign = Campaign(subject=subject, from_email="news@example.com", html_body=html_body)
    return [f.code for f in presend.check(campaign, None, "reader@example.com", **kwargs)]


def test_a_clean_campaign_has_nothing_to_fix():
    assert codes(WORDS + FOOTER, links=False) == []


def test_no_unsubscribe_link_blocks():
    findings = presend.check(Campaign(subject="Hi", from_email="n@example.com", html_body=WORDS), None, "r@example.com",
                             links=False)
    assert [(f.code, f.blocks) for f in findings] == [("no_unsubscribe", True)]
    assert "{{ unsubscribe_url }}" in findings[0].message


def test_a_text_only_campaign_is_not_blocked_as_its_text_part_always_carries_the_link():
    campaign = Campaign(subject="Hi", from_email="n@example.com", text_body="Plain words.")
    assert presend.check(campaign, None, "r@example.com", links=False) == []


def test_html_over_102_kb_warns_that_gmail_clips_it():
    assert codes(WORDS + "<p>" + "x" * 110_000 + "</p>" + FOOTER, links=False) == ["html_size"]


def test_images_without_alt_and_image_only_mail():
    found = codes('<img src="https://example.com/a.png">' + FOOTER, links=False)
    assert found == ["image_alt", "image_only"]
    assert codes('<img src="https://example.com/a.png" alt="Our spring range">' + WORDS + FOOTER, links=False) == []


def test_links_to_plain_http():
    assert codes(WORDS + '<a href="http://example.com/x">x</a>' + FOOTER, links=False) == ["plain_http"]


@pytest.mark.parametrize(("subject", "code"), [
    ("Our spring collection is here, with new colours, new sizes and a few surprises too", "subject_length"),
    ("Act now!!! Free money inside", "subject_spam"),
    ("LAST CHANCE FOR THE SALE", "subject_spam"),
    ("RE: your order", "subject_spam"),
])
def test_subject_too_long_or_spammy(subject, code):
    assert codes(WORDS + FOOTER, subject=subject, links=False) == [code]


@pytest.fixture
def web():
    """A loopback web server: /ok answers 200, anything else 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/ok" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_link_answering_an_error_is_reported(web):
    checker = presend.LinkChecker(timeout=2, allow_private=True)  # the loopback server, allowed for this test only
    html = WORDS + f'<a href="{web}/ok">fine</a> <a href="{web}/gone">gone</a>' + FOOTER
    findings = presend.check(Campaign(subject="Hi", from_email="n@example.com", html_body=html), None, "r@example.com",
                             link_checker=checker)
    assert [(f.code, f.message) for f in findings if f.code == "broken_link"] == [
        ("broken_link", f"{web}/gone answers 404")]


def test_links_to_private_or_loopback_addresses_are_never_fetched(web):
    assert presend.LinkChecker().problem(f"{web}/gone") == \
        "was not checked: its host resolves to a private or local address"
    for address in ("10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "fd00::1"):
        checker = presend.LinkChecker(resolve=lambda host, port, a=address: [a])
        assert "not checked" in checker.problem("https://intranet.example.com/"), address


def test_a_link_whose_host_does_not_resolve():
    def nowhere(host, port):
        raise OSError("Name or service not known")

    assert presend.LinkChecker(resolve=nowhere).problem("https://nowhere.invalid/") == \
        "does not resolve: no address for nowhere.invalid"


@pytest.fixture
def blocked_draft(db):
    readers = MailingList.objects.create(name="Readers")
    campaign = Campaign.objects.create(name="No footer", subject="Hi", from_email="news@example.com", html_body=WORDS)
    from campaigns.models import Contact

    Subscription.objects.create(contact=Contact.objects.create(email="ann@example.com"), mailing_list=readers)
    campaign.lists.add(readers)
    return campaign


def test_the_admin_refuses_to_send_a_campaign_without_an_unsubscribe_link(client, blocked_draft):
    client.force_login(User.objects.create_superuser("olga", "olga@example.com", "pw"))
    page = client.get(f"/admin/campaigns/campaign/{blocked_draft.pk}/change/").content.decode()
    assert 'data-code="no_unsubscribe"' in page
    url = f"/admin/herald/campaigns/{blocked_draft.pk}/send/"
    assert 'data-code="no_unsubscribe"' in client.get(url).content.decode()
    response = client.post(url)
    assert response.status_code == 409 and "no unsubscribe link" in response.content.decode()
    blocked_draft.refresh_from_db()
    assert blocked_draft.status == Campaign.Status.DRAFT


def test_the_api_checks_and_refuses_to_send(client, blocked_draft):
    _, token = ApiToken.issue(User.objects.create_superuser("api", "api@example.com", "pw"))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    found = client.get(f"/api/v1/campaigns/{blocked_draft.pk}/check?links=false", **auth).json()
    assert [(f["code"], f["blocks"]) for f in found] == [("no_unsubscribe", True)]
    response = client.post(f"/api/v1/campaigns/{blocked_draft.pk}/send", **auth)
    assert response.status_code == 422 and "unsubscribe" in response.json()["detail"]
    response = client.post(f"/api/v1/campaigns/{blocked_draft.pk}/schedule", {"scheduled_at": "2031-01-01T09:00:00Z"},
                           content_type="application/json", **auth)
    assert response.status_code == 422
    blocked_draft.refresh_from_db()
    assert blocked_draft.status == Campaign.Status.DRAFT
