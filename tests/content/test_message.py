"""What each campaign message is, read back with the email package."""

from email import message_from_bytes, policy

import pytest

from campaigns.models import Campaign, CampaignLink, Contact
from delivery import tokens
from delivery.message import compile_campaign, list_links
from tests.content.conftest import FakeSend


def parse(built):
    return message_from_bytes(built.data, policy=policy.default)


@pytest.fixture
def newsletter(db, layout):
    return Campaign.objects.create(
        name="Newsletter", subject="Grüße, {{ contact.first_name }}!", from_name="Zoë from Herald",
        from_email="news@example.com", reply_to="editor@example.com", template=layout,
        html_body='<p>Hi {{ contact.first_name }}</p>'
                  '<p><a href="https://example.com/a?x=1&amp;y=2">A</a> <a href="https://example.com/b">B</a>'
                  ' <a href="https://example.com/a?x=1&amp;y=2">A again</a> <a href="mailto:help@example.com">mail</a>'
                  ' <a href="{{ view_in_browser_url }}">view</a>'
                  ' <a href="https://example.com/u/{{ contact.attributes.plan }}">plan</a></p>',
    )


def test_headers_parts_and_envelope(newsletter, alice):
    built = compile_campaign(newsletter).build(FakeSend(41, alice.email), alice)
    msg = parse(built)
    assert built.mail_from == tokens.verp_address(41)
    assert built.mail_from.startswith("bounces+") and built.mail_from.endswith("@bounces.herald.localhost")
    assert built.rcpt == "alice@example.com"
    assert msg["To"] == "alice@example.com"
    assert msg["From"].addresses[0].display_name == "Zoë from Herald"
    assert msg["From"].addresses[0].addr_spec == "news@example.com"
    assert "=?utf-8?" in built.data.split(b"\r\nTo:")[0].decode(), "non-ASCII display names travel as encoded words"
    assert msg["Subject"] == "Grüße, Alice!"
    assert msg["Reply-To"] == "editor@example.com"
    assert msg["Message-ID"] == f"<{built.message_id}>" and built.message_id.endswith("@example.com")
    assert msg["Date"].datetime is not None
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Unsubscribe"] == f"<{tokens.unsubscribe_url(41)}>, <mailto:{tokens.unsubscribe_mailto(41)}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Precedence"] == "bulk"
    assert msg["X-Herald-Campaign"] == str(newsletter.pk)
    assert msg["Feedback-ID"] == f"{newsletter.pk}:campaign:herald:example.com"
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        assert len(msg.get_all(name)) == 1
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.get_payload()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert text["Content-Transfer-Encoding"] == html["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Hi Alice" in text.get_content()
    assert "Hi Alice" in html.get_content()
    for line in built.data.split(b"\r\n"):
        assert len(line) <= 998


def test_every_message_id_is_unique(newsletter, alice):
    compiled = compile_campaign(newsletter)
    ids = {compiled.build(FakeSend(n, alice.email), alice).message_id for n in range(50)}
    assert len(ids) == 50


def test_css_is_inlined_and_text_derived_from_html(newsletter, alice):
    html = parse(compile_campaign(newsletter).build(FakeSend(1, alice.email), alice)).get_payload()[1].get_content()
    assert '<p style="color: #333;">Hi Alice</p>' in html
    assert "<style>" not in html
    text = parse(compile_campaign(newsletter).build(FakeSend(1, alice.email), alice)).get_payload()[0].get_content()
    assert "<p" not in text and "Hi Alice" in text


def test_links_are_tracked_with_stable_indexes(newsletter, alice):
    built = compile_campaign(newsletter).build(FakeSend(7, alice.email), alice)
    html = parse(built).get_payload()[1].get_content()
    links = dict((url, index) for index, url in CampaignLink.objects.filter(campaign=newsletter).values_list("index", "url"))
    assert links["https://example.com/a?x=1&y=2"] == 0
    assert links["https://example.com/b"] == 1
    assert links["https://example.com/u/{{ contact.attributes.plan }}"] == 2, \
        "a link with expressions is tracked by its source, rendered for the recipient when clicked"
    assert html.count(tokens.click_url(7, 0)) == 2
    assert tokens.click_url(7, 1) in html and tokens.click_url(7, 2) in html
    assert "https://example.com/b" not in html
    assert 'href="mailto:help@example.com"' in html
    assert f'href="{tokens.view_url(7)}"' in html, "the view-in-browser link is never rewritten"
    assert f'href="{tokens.unsubscribe_url(7)}"' in html, "neither is the unsubscribe link"
    assert f'src="{tokens.open_url(7)}"' in html and html.index(tokens.open_url(7)) < html.index("</body>")
    # Compiling again (another worker) gives the same indexes and no new rows.
    from delivery import message

    message._compiled.clear()
    compile_campaign(newsletter).build(FakeSend(8, alice.email), alice)
    assert CampaignLink.objects.filter(campaign=newsletter).count() == 3
    assert list_links(newsletter) == [(0, "https://example.com/a?x=1&y=2"), (1, "https://example.com/b"),
                                      (2, "https://example.com/u/{{ contact.attributes.plan }}")]


def test_tracking_can_be_turned_off(newsletter, alice):
    newsletter.track_clicks = False
    newsletter.track_opens = False
    newsletter.save()
    html = parse(compile_campaign(newsletter).build(FakeSend(3, alice.email), alice)).get_payload()[1].get_content()
    assert 'href="https://example.com/b"' in html
    assert "/t/c/" not in html and "/t/o/" not in html


def test_missing_variables_render_empty_or_default(db, alice):
    campaign = Campaign.objects.create(
        name="m", subject="{{ contact.attributes.nothing }}Hi {{ contact.nickname | default('friend') }}",
        from_email="news@example.com", html_body="<p>[{{ contact.attributes.shoe.size }}]</p>")
    bob = Contact.objects.create(email="bob@example.com")
    msg = parse(compile_campaign(campaign).build(FakeSend(2, bob.email), bob))
    assert msg["Subject"] == "Hi friend"
    assert "<p>[]</p>" in msg.get_payload()[1].get_content()


def test_long_lines_and_non_ascii_bodies_are_quoted_printable(db, alice):
    campaign = Campaign.objects.create(name="l", subject="x", from_email="news@example.com",
                                       html_body="<p>" + "ünïcødé " * 500 + "</p>", text_body="y" * 5000)
    built = compile_campaign(campaign).build(FakeSend(2, alice.email), alice)
    assert max(len(line) for line in built.data.split(b"\r\n")) <= 78
    text, html = parse(built).get_payload()
    assert text.get_content().replace("\r\n", "\n") == f"{'y' * 5000}\n\nUnsubscribe: {tokens.unsubscribe_url(2)}\n"
    assert "ünïcødé " * 500 in html.get_content()


def test_long_non_ascii_subjects_become_short_encoded_words(db, alice):
    import re

    campaign = Campaign.objects.create(name="s", subject="Ünïcödé newsletter — " * 8 + "{{ contact.first_name }}",
                                       from_name="Ça va? Société Générale de l'Écriture très longue",
                                       from_email="news@example.com", html_body="<p>x</p>")
    built = compile_campaign(campaign).build(FakeSend(4, alice.email), alice)
    head = built.data.split(b"\r\n\r\n")[0].decode("ascii")
    words = re.findall(r"=\?utf-8\?[bq]\?[^?]*\?=", head)
    assert words and all(len(w) <= 75 for w in words)
    assert all(len(line) <= 78 for line in head.split("\r\n"))
    msg = parse(built)
    assert msg["Subject"] == "Ünïcödé newsletter — " * 7 + "Ünïcödé newsletter — Alice"
    # CPython's parser puts a space between a display name's encoded words; RFC 2047 decoders do not.
    name = msg["From"].addresses[0].display_name
    assert " ".join(name.split()) == "Ça va? Société Générale de l'Écriture très longue"


def test_text_only_campaigns_are_a_single_text_part(db, alice):
    campaign = Campaign.objects.create(name="t", subject="s", from_email="news@example.com",
                                       text_body="Hi {{ contact.first_name }}\n{{ unsubscribe_url }}\n")
    msg = parse(compile_campaign(campaign).build(FakeSend(6, alice.email), alice))
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().replace("\r\n", "\n") == f"Hi Alice\n{tokens.unsubscribe_url(6)}\n"
