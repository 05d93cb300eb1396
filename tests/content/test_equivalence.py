"""The fast builder produces the very bytes the email package produces (policy SMTP, 76-character lines)."""

import re
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.models import Campaign, Contact
from campaigns.rendering import ContactData
from delivery import tokens
from delivery.message import POLICY, _cut_prefix, _qp_escape, _qp_line, _soft_break, compile_campaign, fold_header
from tests.content.conftest import FakeSend


def reference_bytes(built, compiled, send_id, contact):
    """The same message built the ordinary way: EmailMessage + MIMEPart.set_content."""
    raw = built.data.decode("ascii")
    date = re.search(r"^Date: (.*)\r$", raw, re.M).group(1)
    context = compiled.context(send_id, ContactData.of(contact))
    content = compiled.content
    campaign = compiled.campaign
    msg = EmailMessage(policy=POLICY)
    from_name = " ".join(content.from_name.render(context).split())
    msg["From"] = Address(display_name=from_name, addr_spec=campaign.from_email)
    msg["To"] = built.rcpt
    msg["Subject"] = " ".join(content.subject.render(context).split())
    msg["Date"] = date
    msg["Message-ID"] = f"<{built.message_id}>"
    if campaign.reply_to:
        msg["Reply-To"] = campaign.reply_to
    msg["List-Unsubscribe"] = f"<{tokens.unsubscribe_url(send_id)}>, <mailto:{tokens.unsubscribe_mailto(send_id)}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Feedback-ID"] = f"{campaign.pk}:campaign:herald:{campaign.from_email.rpartition('@')[2].lower()}"
    msg["X-Herald-Campaign"] = str(campaign.pk)
    msg["Precedence"] = "bulk"
    msg["MIME-Version"] = "1.0"
    if not content.html_source:
        msg.set_content(content.text.render(context), cte="quoted-printable")
        return msg.as_bytes()
    msg.make_alternative()
    text = MIMEPart(policy=POLICY)
    text.set_content(content.text.render(context), cte="quoted-printable")
    html = MIMEPart(policy=POLICY)
    html.set_content(content.html.render(context), subtype="html", cte="quoted-printable")
    msg.attach(text)
    msg.attach(html)
    msg.set_boundary(compiled.boundary)
    return msg.as_bytes()


def _header_lines(head):
    """[(name, raw value)] with folded lines joined."""
    out = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            out[-1] = (out[-1][0], out[-1][1] + "\r\n" + line)
        else:
            name, _, value = line.partition(":")
            out.append((name, value))
    return out


def assert_same_message(ours, reference, expected):
    """Byte for byte, except that encoded words come from the email package's RFC 2047 encoder
    (email.header, email.charset) rather than the policy's folder, which makes 76-character words
    and can drop spaces: those must decode to the text expected. (CPython's parser puts a space
    between encoded words of a display name, hence the whitespace-insensitive comparison.)"""
    our_head, _, our_body = ours.partition(b"\r\n\r\n")
    ref_head, _, ref_body = reference.partition(b"\r\n\r\n")
    assert our_body == ref_body
    if our_head == ref_head:
        return
    ours_parsed = message_from_bytes(ours, policy=policy.default)
    mine, theirs = _header_lines(our_head.decode("ascii")), _header_lines(ref_head.decode("ascii"))
    assert [n for n, _ in mine] == [n for n, _ in theirs]
    for (name, value), (_, ref_value) in zip(mine, theirs, strict=True):
        if value != ref_value:
            assert "=?" in ref_value + value, f"{name} differs without encoded words: {value!r} != {ref_value!r}"
            words = re.findall(r"=\?utf-8\?[bq]\?[^?]*\?=", value)
            assert words and all(len(w) <= 75 for w in words)
            assert " ".join(str(ours_parsed[name]).split()) == " ".join(expected[name].split())


LONG_WORDS = "x" * 1200
TRICKY = [
    # (subject, from_name, html, text, contact fields)
    ("Hello {{ contact.first_name }}", "Herald News", "<p>Hi {{ contact.first_name }}</p>", "", {}),
    ("Grüße, {{ contact.first_name }} — 50 % off ☀", "Zoë Ünïcode Société", "<p>Ça va, {{ contact.first_name }}? 日本語</p>",
     "", {"first_name": "Jürgen"}),
    ("A subject that goes on and on well beyond seventy-eight characters, {{ contact.first_name }}",
     "A very long display name for the newsletter that needs folding somewhere", "<p>x</p>", "", {}),
    ("Long lines", "News", "<p>" + "word " * 400 + "</p><p>" + LONG_WORDS + "</p>", "plain " * 300 + "\n" + LONG_WORDS, {}),
    ("Trailing spaces ", "News", "<p>a \t\n b  \nc\t</p>\n\n", "line with trailing space \nand tab\t\n=equals= \n", {}),
    ("=?utf-8?q?not_an_encoded_word?=", "Name, with comma", "<p>{{ contact.attributes.note }}</p>", "",
     {"attributes": {"note": "x" * 76 + " \u00a0\u2028end"}}),
    ("{{ contact.attributes.subject }}", "{{ contact.first_name }} from Herald", "<p>{{ contact.email }}</p>",
     "Text {{ contact.email }}", {"first_name": "Ann-Marie O'Neil", "attributes": {"subject": "Für dich\r\nBcc: x@y"}}),
    # A value with a line break and statements: the whole-template path.
    ("Hi", "News", "<p>{{ contact.attributes.address }}</p>\n<p>{{ contact.last_name }}</p>", "", {
        "last_name": "Smith & <Sons>", "attributes": {"address": "1 Main St\nSpringfield =\r\n USA "}}),
    ("Hi", "News", "{% for i in range(3) %}<p>{{ i }} {{ contact.first_name }}</p>\n{% endfor %}", "", {"first_name": "Ann"}),
    ("Empty", "News", "", "", {}),
    ("Text only", "News", "", "Hello {{ contact.first_name }},\n\nplain text only.\n{{ unsubscribe_url }}\n", {}),
    ("Prefix", "News", "<p>" + "a=b " * 60 + "{{ contact.first_name }}" + " tail=" * 30 + "</p>\n<p>" + "é" * 90
     + "{{ contact.email }} </p>", "x" * 150 + "{{ contact.email }}\t", {"first_name": "Zoë " * 10}),
]


@pytest.mark.django_db
@pytest.mark.parametrize("subject,from_name,html,text,fields", TRICKY)
def test_fast_build_matches_email_package(subject, from_name, html, text, fields):
    campaign = Campaign.objects.create(name="eq", subject=subject, from_name=from_name, from_email="news@example.com",
                                       reply_to="replies@example.com" if "Long" in subject else "",
                                       html_body=html, text_body=text)
    contact = Contact.objects.create(email=fields.pop("email", "bob.smith+tag@example.com"), **fields)
    compiled = compile_campaign(campaign)
    if "{%" not in html and html:
        assert compiled.html_plan is not None, "the fast plan should handle templates without statements"
    for send_id in (1, 977, 36**5):
        built = compiled.build(FakeSend(send_id, contact.email), contact)
        context = compiled.context(send_id, ContactData.of(contact))
        expected = {"Subject": compiled.content.subject.render(context),
                    "From": f"{compiled.content.from_name.render(context)} <{campaign.from_email}>"}
        assert_same_message(built.data, reference_bytes(built, compiled, send_id, contact), expected)
        assert max(len(line) for line in built.data.split(b"\r\n")) <= 998


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=90))
def test_header_fast_path_matches_policy(value):
    value = " ".join(value.split())
    for name in ("Subject", "X-Herald-Campaign"):
        expected = POLICY.header_factory(name, value).fold(policy=POLICY)
        if "=?" in value or "=?" in expected:
            # The policy would read "=?...?=" in text as an encoded word (or make some); Herald encodes the
            # text itself so that readers see exactly what was written.
            parsed = message_from_bytes(fold_header(name, value) + b"\r\n", policy=policy.default)
            assert " ".join(str(parsed[name]).split()) == value
        else:
            assert fold_header(name, value) == expected.encode()


@pytest.mark.parametrize("address", ["a@b.c", "bob.smith+tag@example.com", "x_y-z@sub.example.org", "a..b@example.com",
                                     ".a@example.com", "o'neil@example.com", "user@[127.0.0.1]", "ünï@example.com"])
def test_address_fast_path_matches_policy(address):
    expected = POLICY.header_factory("To", address).fold(policy=POLICY).encode("ascii", "surrogateescape")
    assert fold_header("To", address) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_quoted_printable_line_matches_email_package(text):
    from email import quoprimime

    for raw in text.encode("utf-8").splitlines() or [b""]:
        expected = quoprimime.body_encode(raw.decode("latin-1") + "\n", 76).replace("\n", "\r\n")
        assert _qp_line(raw) + b"\r\n" == expected.encode("ascii")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab= \té", max_size=300), st.text(alphabet="ab= \té", max_size=200))
def test_soft_breaks_resume_after_a_precut_prefix(prefix, rest):
    prefix, rest = _qp_escape(prefix), _qp_escape(rest)
    head, start = _cut_prefix(prefix)
    assert _soft_break(prefix + rest, start, head) == _soft_break(prefix + rest)


@pytest.mark.parametrize("expr", [
    "contact.first_name", "contact.first_name | default('friend')", ' contact.last_name|default("x<y") ',
    "contact.email", "contact.name", "contact.attributes.city", "contact.attributes.n | default('none')",
    "contact.attributes.none", "contact.attributes.flag", "contact.attributes.html", "contact.attributes.items",
    "contact.attributes.missing", "contact.nickname | default('nick')",
])
@pytest.mark.parametrize("data", [
    ContactData("a@example.com"),
    ContactData("b@example.com", "Zoë", "O'Neil & <Co>",
                {"city": "Köln", "n": 3, "none": None, "flag": True, "html": "<b>&</b>", "items": "x"}),
])
def test_plain_lookups_print_what_jinja_prints(expr, data):
    from campaigns import rendering
    from delivery.message import _field_getter

    getter = _field_getter(expr)
    if "items" in expr or "nickname" in expr:
        assert getter is None, "dict method names and unknown fields are left to Jinja"
        return
    assert getter is not None
    from markupsafe import escape

    assert str(escape(getter(data))) == rendering.html_env.from_string("{{" + expr + "}}").render(contact=data)
    assert str(getter(data)) == rendering.text_env.from_string("{{" + expr + "}}").render(contact=data)


@pytest.mark.parametrize("send_id", [0, 1, 35, 36, 977, 10**9])
def test_fast_tokens_are_delivery_tokens(send_id):
    from delivery.message import FastTokens

    fast = FastTokens()
    assert fast.ok
    unsub, view, opened, clicks, mailto, verp = fast.for_send(send_id, [0, 1, 36, 1000])
    assert (unsub, view, opened, mailto, verp) == (tokens.unsubscribe_url(send_id), tokens.view_url(send_id),
                                                   tokens.open_url(send_id), tokens.unsubscribe_mailto(send_id),
                                                   tokens.verp_address(send_id))
    assert clicks == [tokens.click_url(send_id, i) for i in (0, 1, 36, 1000)]


@pytest.mark.django_db
@pytest.mark.parametrize("first_name,attributes", [("Ann", {"vip": True, "plan": "gold"}), ("", {}),
                                                   ("Zoë O'Neil & <Co>", {"plan": "a=b " * 30})])
@pytest.mark.parametrize("statements", [True, False])
def test_derived_text_part_matches_email_package(first_name, attributes, statements):
    """The derived text part's encoding plans give the bytes of the email package too."""
    from pathlib import Path

    from django.conf import settings as django_settings

    from campaigns.models import Template
    from tests.content.test_text_part import BODY

    layout = Template.objects.create(name="Starter", html=(
        Path(django_settings.BASE_DIR) / "templates" / "email" / "default_layout.html").read_text(encoding="utf-8"))
    body = BODY if statements else "<h1>Hi {{ contact.first_name }}</h1>\n<p>" + "Plan {{ contact.attributes.plan }}. " * 9
    campaign = Campaign.objects.create(name="eq", subject="Hi", from_name="News", from_email="news@example.com",
                                       html_body=body, template=layout)
    contact = Contact.objects.create(email="bob.smith+tag@example.com", first_name=first_name, attributes=attributes)
    compiled = compile_campaign(campaign)
    for send_id in (1, 977, 36**5, 2):
        built = compiled.build(FakeSend(send_id, contact.email), contact)
        expected = {"Subject": "Hi", "From": f"News <{campaign.from_email}>"}
        assert_same_message(built.data, reference_bytes(built, compiled, send_id, contact), expected)
