"""The text part carries what the HTML part carries, for every recipient.

A campaign without a text body gets its text part derived per recipient from
that recipient's HTML. The reference here is the definition itself:
``html_to_text`` of the recipient's HTML part (before click tracking), plus the
unsubscribe URL when the HTML does not show it. Herald's faster derivation
(rendering.DerivedText) must give exactly that, on every layout Herald ships
and on templates that put expressions where converters lose them: attributes,
``<title>``, ``<img alt>``, comments, ``<style>``, captured blocks.
"""

from email import message_from_bytes, policy
from pathlib import Path

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from campaigns import rendering
from campaigns.models import Campaign, Contact, Template
from campaigns.rendering import ContactData, DerivedText, html_to_text, with_unsubscribe
from delivery import tokens
from delivery.message import compile_campaign
from tests.content.conftest import FakeSend

SHIPPED = sorted((Path(settings.BASE_DIR) / "templates" / "email").glob("*.html"))

BODY = ("<h1>Hi {{ contact.first_name }}!</h1>\n"
        "{% if contact.attributes.vip %}<p>Thanks for being a VIP, {{ contact.last_name }}.</p>"
        "{% else %}<p>Upgrade to VIP today.</p>{% endif %}\n"
        '<p><a href="https://example.com/offers/{{ contact.attributes.plan | default(\'free\') }}">Your offers</a></p>\n'
        '<p><img src="https://example.com/banner.png" alt="Banner for {{ contact.first_name }}"></p>')

ADVERSARIAL = {
    "attributes": '<p class="c-{{ contact.attributes.plan }}" title="{{ contact.first_name }}" '
                  'style="color: {{ contact.attributes.color }}">Plan</p>'
                  '<a href="{{ contact.attributes.url }}" title="{{ contact.last_name }}">{{ contact.attributes.url }}</a>'
                  '<a href="mailto:{{ contact.email }}?subject={{ contact.first_name }}">write</a>',
    "title": "<html><head><title>{{ contact.email }} {% if contact.first_name %}{{ contact.first_name }}"
             "{% endif %}</title></head><body><p>Hello {{ contact.first_name }}</p></body></html>",
    "img": '<img alt="{{ contact.first_name }}" src="https://example.com/{{ contact.email }}.png">'
           '<a href="{{ view_in_browser_url }}"><img alt="{{ contact.last_name }}" src="x.png"></a>'
           '<img alt="{{ contact.attributes.url }}" src="y.png">',
    "comments": "<!-- {{ contact.email }} -->{# a note #}<p>{{ contact.first_name }}</p>"
                "<!-- {% if contact.attributes.vip %} -->VIP<!-- {% endif %} -->",
    "style": "<style>.x { color: {{ contact.attributes.color | default('red') }}; }</style>"
             '<p style="background: url({{ contact.attributes.url }})">{{ contact.attributes.color }}</p>',
    "line starts": "<p>{{ contact.attributes.n }}. place</p><p>{{ contact.first_name }}</p>\n<p>{{ contact.last_name }}"
                   "</p><ul>{% for t in contact.attributes.tags %}<li>{{ loop.index }}. {{ t }}</li>{% endfor %}</ul>"
                   "<p>\\{{ contact.first_name }} - {{ contact.last_name }}</p><p>1{{ contact.attributes.n }}. x</p>",
    "automatic links": '<a href="{{ unsubscribe_url }}">{{ unsubscribe_url }}</a> '
                       '<a href="{{ contact.attributes.url }}">{{ contact.attributes.url }}</a> '
                       '<a href="https://example.com/{{ contact.first_name }}">https://example.com/{{ contact.first_name }}</a>',
    "emphasis": "<p><em>{{ contact.first_name }}</em>{{ contact.last_name }}<strong>{{ contact.attributes.n }}</strong>"
                "{{ contact.first_name }}</p><blockquote>{{ contact.last_name }}</blockquote>",
    "pre and markup": "<pre>{{ contact.attributes.note }}</pre><p>{{ contact.attributes.html | safe }}</p>"
                      "{% autoescape false %}<p>{{ contact.attributes.html }}</p>{% endautoescape %}",
    "captured": "{% set greeting %}Hi {{ contact.first_name }}{% endset %}"
                "{% if greeting | length > 4 %}<p>{{ greeting }}</p>{% else %}<p>short</p>{% endif %}"
                "{% filter upper %}<p>{{ contact.last_name }}</p>{% endfilter %}"
                "{% macro badge(x) %}<b>{{ x }}</b>{% endmacro %}<p>{{ badge(contact.email) }}</p>",
    "no unsubscribe link": "<p>Just {{ contact.first_name }}</p>",
    "table": "<table><tr><td>{{ contact.first_name }}</td><td>{{ contact.attributes.n }}</td></tr>"
             "<tr><th>{{ contact.last_name }}</th></tr></table>",
}

CONTACTS = [
    ContactData("ann@example.com", "Ann", "Lee", {"vip": True, "plan": "gold", "url": "https://example.com/p?a=1&b=2",
                                                  "n": 3, "tags": ["x", "y"], "color": "blue", "note": "a\n b",
                                                  "html": "<b>bold</b> &amp;"}),
    ContactData("bob.smith+tag@example.org"),
    ContactData("zoe@example.net", "Zoë", "O'Neil & <Co>", {"plan": "- dash", "url": "javascript:alert(1)",
                                                            "n": "1. x", "tags": ["+ plus", "#hash", "3"],
                                                            "color": "\\*not*", "note": "[link](x)"}),
    ContactData("x_y@example.com", "  spaced  ", "42", {"url": "https://example.com/a_b-c", "n": "-1", "vip": False,
                                                         "tags": [], "html": "Smith &amp; Sons"}),
]


def _context(data, send_id=7):
    return {"contact": data, "unsubscribe_url": tokens.unsubscribe_url(send_id),
            "view_in_browser_url": tokens.view_url(send_id)}


def reference_text(source, context):
    """The definition: the text of the recipient's HTML, with the unsubscribe URL."""
    return with_unsubscribe(html_to_text(rendering.html_env.from_string(source).render(context)),
                            context["unsubscribe_url"])


def _parts(built):
    msg = message_from_bytes(built.data, policy=policy.default)
    text = html = None
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and text is None:
            text = part.get_content().replace("\r\n", "\n")
        elif part.get_content_type() == "text/html" and html is None:
            html = part.get_content().replace("\r\n", "\n")
    return text, html


def _campaign(html_body, layout=None, **extra):
    return Campaign.objects.create(name="text part", subject="Hi", from_email="news@example.com",
                                   html_body=html_body, template=layout, **extra)


@pytest.mark.django_db
def test_the_starter_layout_keeps_names_branches_and_links_in_the_text_part():
    layout = Template.objects.create(name="Starter", html=SHIPPED[0].read_text(encoding="utf-8"))
    campaign = _campaign(BODY, layout)
    ann = Contact.objects.create(email="ann@example.com", first_name="Ann", last_name="Lee",
                                 attributes={"vip": True, "plan": "gold"})
    text, _ = _parts(compile_campaign(campaign).build(FakeSend(7, ann.email), ann))
    assert "# Hi Ann!" in text
    assert "Thanks for being a VIP, Lee." in text and "Upgrade" not in text
    assert "[Your offers](https://example.com/offers/gold)" in text
    assert "Banner for Ann" in text
    assert "because ann@example.com subscribed" in text
    assert f"[Unsubscribe]({tokens.unsubscribe_url(7)})" in text
    assert f"[View in your browser]({tokens.view_url(7)})" in text
    assert "]()" not in text

    bob = Contact.objects.create(email="bob@example.org")
    text, _ = _parts(compile_campaign(campaign).build(FakeSend(8, bob.email), bob))
    assert "# Hi !" in text and "Upgrade to VIP today." in text and "Thanks" not in text
    assert "[Your offers](https://example.com/offers/free)" in text
    assert f"[Unsubscribe]({tokens.unsubscribe_url(8)})" in text


@pytest.mark.django_db
@pytest.mark.parametrize("layout_path", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("body", [BODY, *ADVERSARIAL.values()], ids=["body", *ADVERSARIAL])
def test_built_text_part_is_the_text_of_the_recipients_html(layout_path, body):
    """Through the real builder: the text part of each message is the text of that message's HTML part."""
    layout = Template.objects.create(name="Shipped", html=layout_path.read_text(encoding="utf-8"))
    campaign = _campaign(body, layout, track_clicks=False, track_opens=False)
    compiled = compile_campaign(campaign)
    assert compiled.content.text_derived
    for n, data in enumerate(CONTACTS, start=1):
        text, html = _parts(compiled.build(FakeSend(n, data.email), data))
        context = _context(data, n)
        # Without tracking, the HTML part is exactly the HTML the text is derived from.
        assert html.rstrip("\n") == rendering.html_env.from_string(compiled.content.text.source).render(context).rstrip("\n")
        assert text == reference_text(compiled.content.text.source, context)
        assert tokens.unsubscribe_url(n) in text


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_templates_alone(name):
    derived = DerivedText(ADVERSARIAL[name])
    for data in CONTACTS:
        context = _context(data)
        assert derived.render(context) == reference_text(ADVERSARIAL[name], context)


VALUES = st.one_of(
    st.text(alphabet="aZé9 .,;:@'\"&/?=%+~$!#-_\\*[]()<>`{}|\n\t\u00a0", max_size=12),
    st.sampled_from(["", "42", "1. x", "- x", "+ x", "https://example.com/a?b=1", "x://y", "#top", "Ann-Marie",
                     "O'Neil", "A & B", "A & 1. x", "A & 42", "3rd", "4.5", ".5", "a\\b"]),
    st.integers(-100, 100),
)


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(list(ADVERSARIAL) + ["body"]), first=VALUES, last=VALUES, n=VALUES, url=VALUES,
       plan=VALUES, tags=st.lists(VALUES, max_size=3), vip=st.booleans())
def test_any_contact_data_gives_the_text_of_its_html(name, first, last, n, url, plan, tags, vip):
    source = BODY if name == "body" else ADVERSARIAL[name]
    data = ContactData("p@example.com", str(first), str(last),
                       {"n": n, "url": url, "plan": plan, "tags": tags, "vip": vip, "color": plan, "note": last,
                        "html": first})
    context = _context(data)
    assert _derived(source).render(context) == reference_text(source, context)


_DERIVED = {}


def _derived(source):
    if source not in _DERIVED:
        _DERIVED[source] = DerivedText(source)
    return _DERIVED[source]


@pytest.mark.django_db
def test_author_text_without_unsubscribe_link_gets_one(alice):
    campaign = Campaign.objects.create(name="t", subject="s", from_email="news@example.com",
                                       html_body="<p>Hi</p>", text_body="Hi {{ contact.first_name }}\n")
    text, _ = _parts(compile_campaign(campaign).build(FakeSend(5, alice.email), alice))
    assert text == f"Hi Alice\n\nUnsubscribe: {tokens.unsubscribe_url(5)}\n"


@pytest.mark.django_db
def test_test_sends_carry_the_derived_text_part(sink, alice):
    from delivery.models import Relay
    from delivery.testsend import send_test

    Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    layout = Template.objects.create(name="Starter", html=SHIPPED[0].read_text(encoding="utf-8"))
    campaign = _campaign(BODY, layout)
    [result] = send_test(campaign, [alice.email])
    assert result.ok, result.detail
    sink.wait_for(1, timeout=10)
    text = sink.received[0].message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    assert "# Hi Alice!" in text and "Upgrade to VIP today." in text
    assert "because alice@example.com subscribed" in text
    assert f"[Unsubscribe]({tokens.unsubscribe_url(0)})" in text


@pytest.fixture
def staff(client, db):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


CAMPAIGN_FORM = {"name": "Spring", "subject": "Hi", "from_name": "Herald", "from_email": "news@example.com",
                 "reply_to": "", "text_body": "", "track_opens": "on", "track_clicks": "on"}
SHOWN_NOWHERE = '<p>Hi {{ contact.first_name }}</p>\n<img src="https://example.com/{{ contact.email }}.png" alt="">'


def test_saving_warns_of_what_the_text_part_cannot_show(staff):
    response = staff.post("/admin/campaigns/campaign/add/", CAMPAIGN_FORM | {"html_body": SHOWN_NOWHERE}, follow=True)
    page = response.content.decode()
    assert Campaign.objects.count() == 1, "a warning never stops the save"
    assert "HTML body, line 2: {{ contact.email }} is in the src of &lt;img&gt;" in page
    assert "contact.first_name }} is" not in page

    response = staff.post("/admin/campaigns/campaign/add/", CAMPAIGN_FORM | {"name": "Plain", "html_body": "<p>Hi</p>",
                                                                           "text_body": "Hi\n"}, follow=True)
    assert "The text part has no {{ unsubscribe_url }}" in response.content.decode()


def test_the_starter_layout_saves_without_warnings(staff):
    response = staff.post("/admin/campaigns/template/add/", {
        "name": "Starter", "html": SHIPPED[0].read_text(encoding="utf-8"), "text": ""}, follow=True)
    assert Template.objects.count() == 1
    assert "cannot show" not in response.content.decode()
    response = staff.post("/admin/campaigns/template/add/", {
        "name": "Avatar", "html": '<body>{{ content }}<img src="{{ contact.attributes.avatar }}"></body>', "text": ""},
        follow=True)
    assert "Layout &#x27;Avatar&#x27;, line 1: {{ contact.attributes.avatar }} is in the src of &lt;img&gt;" in (
        response.content.decode())


def test_warnings_name_exactly_the_expressions_the_text_part_lacks():
    assert rendering.text_part_warnings(ADVERSARIAL["attributes"], "") == [
        "HTML, line 1: {{ contact.first_name }} is in the title of <p>, which the text part cannot show.",
        "HTML, line 1: {{ contact.last_name }} is in the title of <a>, which the text part cannot show.",
    ]
    assert rendering.text_part_warnings(ADVERSARIAL["img"], "") == [
        "HTML, line 1: {{ contact.email }} is in the src of <img>, which the text part cannot show."]
    # The head, comments, style and classes show nowhere; links and alt texts reach the text part.
    for name in ("title", "comments", "style", "automatic links", "captured", "line starts"):
        assert rendering.text_part_warnings(ADVERSARIAL[name], "") == [], name


@pytest.mark.django_db
def test_preview_shows_the_text_part_and_its_warnings(staff, alice):
    layout = Template.objects.create(name="Starter", html=SHIPPED[0].read_text(encoding="utf-8"))
    campaign = _campaign(BODY + '\n<img src="https://example.com/{{ contact.email }}.png" alt="">', layout)
    page = staff.get(f"/admin/campaigns/campaign/{campaign.pk}/preview/", {"contact": alice.pk}).content.decode()
    assert 'id="text-warnings"' in page and "{{ contact.email }} is in the src of &lt;img&gt;" in page
    text = page.split('id="text-part"')[1].split("</pre>")[0]
    assert "# Hi Alice!" in text and "Upgrade to VIP today." in text
    assert f"[Unsubscribe]({tokens.unsubscribe_url(0)})" in text


def test_each_way_of_deriving_is_among_those_tested():
    """Statement-free templates skip the skeleton render; captured blocks are checked per recipient."""
    plain = [name for name, source in ADVERSARIAL.items() if "{%" not in source and "{#" not in source]
    assert len(plain) >= 5
    for name in plain:
        assert DerivedText(ADVERSARIAL[name]).plain is not None, name
    assert DerivedText(BODY).plain is None
    assert DerivedText(ADVERSARIAL["captured"]).checked
    # A plain template whose split the fast path would get wrong falls back to the render.
    assert DerivedText('<p>{{ "}}" ~ contact.first_name }}</p>').plain is None
