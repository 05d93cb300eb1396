"""Templates in Markdown and MJML: compiled once, Jinja2 rendered per recipient; errors name the line."""

import re
from email import message_from_bytes, policy

import pytest

from campaigns import formats, rendering
from campaigns.models import Campaign, Template
from delivery.lifecycle import begin_start
from delivery.message import compile_campaign
from tests.content.conftest import FakeSend

pytestmark = pytest.mark.django_db

MJML_LAYOUT = """<mjml>
  <mj-head><mj-title>News</mj-title></mj-head>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>Hello {{ contact.first_name | default("reader") }}</mj-text>
        <mj-text>
{{ content }}
        </mj-text>
        <mj-button href="{{ unsubscribe_url }}">Unsubscribe</mj-button>
      </mj-column>
    </mj-section>
    {% if contact.attributes.plan == "gold" %}
    <mj-section><mj-column><mj-text>Gold members: early access.</mj-text></mj-column></mj-section>
    {% endif %}
  </mj-body>
</mjml>
"""

MARKDOWN = """# Hi {{ contact.first_name }} *from* {{ contact.attributes.city | default("somewhere") }}

{% if contact.attributes.plan == "gold" %}Thanks for going **gold**.{% else %}Try gold.{% endif %}

{{ content }}

[Unsubscribe]({{ unsubscribe_url }})
"""


def message(campaign, contact):
    from campaigns.rendering import ContactData

    built = compile_campaign(campaign).build(FakeSend(1, contact.email), ContactData.of(contact))
    msg = message_from_bytes(built.data, policy=policy.default)
    return (msg.get_body(("html",)).get_content(), msg.get_body(("plain",)).get_content())


def make(name, fmt, source, body, **fields):
    layout = Template.objects.create(name=name, format=fmt, html=source, **fields)
    return Campaign.objects.create(name=name, subject="Hi", from_email="news@example.com", html_body=body,
                                   template=layout, track_clicks=False, track_opens=False)


def test_an_mjml_template_compiles_to_responsive_html_with_each_recipients_values(alice):
    campaign = make("MJML", "mjml", MJML_LAYOUT, "<p>The spring issue for {{ contact.attributes.city }}.</p>")
    html, text = message(campaign, alice)
    assert "mj-" not in html.replace("mj-column-per", "").replace("mj-outlook", "")  # no MJML left
    assert "@media only screen and (min-width:480px)" in html  # columns stack on phones
    assert "Hello Alice" in html and "The spring issue for Oxford." in html
    assert "Gold members: early access." in html  # the recipient's branch
    assert "Hello Alice" in text and "Gold members" in text


def test_a_value_printed_into_markdown_is_escaped_not_read_as_markdown(alice):
    alice.first_name = "<b>*Al*</b>"
    alice.save()
    layout = Template.objects.create(name="Letter", html="<html><body>{{ content }}</body></html>")
    campaign = make("Markdown", "markdown", MARKDOWN, "A paragraph of *news*.", layout=layout)
    html, text = message(campaign, alice)
    assert "<h1>Hi &lt;b&gt;*Al*&lt;/b&gt; <em>from</em> Oxford</h1>" in html
    assert "Thanks for going <strong>gold</strong>." in html and "Try gold" not in html
    assert "<p>A paragraph of <em>news</em>.</p>" in html
    assert re.search(r'<a href="https?://[^"]+/t/u/1-', html)  # the unsubscribe link, rendered per recipient
    assert "Thanks for going **gold**." in text


def test_markdown_without_a_layout_goes_into_the_default_one(alice):
    campaign = make("Markdown alone", "markdown", "{{ content }}", "Hello *{{ contact.first_name }}*")
    html, _ = message(campaign, alice)
    assert "<em>Alice</em>" in html and "subscribed to our list" in html


def test_the_frozen_content_holds_the_compiled_html(alice):
    campaign = make("Frozen", "mjml", MJML_LAYOUT, "<p>Body</p>")
    from campaigns.models import MailingList, Subscription

    readers = MailingList.objects.create(name="Readers")
    Subscription.objects.create(contact=alice, mailing_list=readers)
    campaign.lists.add(readers)
    begin_start(campaign.pk)
    frozen = Campaign.objects.get(pk=campaign.pk).frozen_content
    assert "<mj-" not in frozen.html_body and "{{ contact.first_name" in frozen.html_body
    assert frozen.template_html == "{{ content }}"


@pytest.mark.parametrize(("fmt", "source", "field", "line", "words"), [
    ("mjml", "<mjml>\n<mj-body>\n<mj-section>\n<mj-colum>\n</mj-colum>\n</mj-section>\n</mj-body>\n</mjml>\n{{ content }}",
     "html", 4, "<mj-colum> is not an MJML element"),
    ("mjml", "<mjml>\n<mj-body>\n<mj-section>\n<mj-column>\n<mj-text>{{ content }}</mj-text>\n</mj-section>\n</mj-body>"
             "\n</mjml>", "html", 4, "<mj-column> is not closed before </mj-section>"),
    ("mjml", "<mjml>\n<mj-body>\n{{ content }\n</mj-body>\n</mjml>", "html", 3, "unexpected '}'"),
    ("markdown", "# Title\n\n{% if x %}\n{{ content }}\n", "html", 4, "Unexpected end of template"),
])
def test_a_template_error_names_what_and_the_line(fmt, source, field, line, words):
    errors = rendering.validate_template_row(source, "", fmt)
    assert errors, source
    assert errors[0].field == field and errors[0].line == line and words in errors[0].message


def test_an_mjml_error_in_a_campaign_body_names_the_body_and_its_line(alice):
    layout = Template.objects.create(name="Sections", format="mjml",
                                     html="<mjml>\n<mj-body>\n{{ content }}\n</mj-body>\n</mjml>")
    body = "<mj-section>\n<mj-column>\n<mj-text>Hi</mj-text>\n</mj-column>\n<mj-section>"
    errors = rendering.check_body_format(layout, body)
    assert [(e.field, e.line) for e in errors] == [("html_body", 5)]
    assert "<mj-section> is not closed before </mj-body>" in errors[0].message


def test_mjml_includes_read_nothing():
    with pytest.raises(formats.FormatError, match="mj-include is not available"):
        formats.mjml_to_html('<mjml><mj-body><mj-include path="/etc/passwd" /></mj-body></mjml>')


def test_the_api_takes_a_template_in_markdown_or_mjml_and_names_the_line_of_an_error(client):
    from django.contrib.auth.models import User

    from campaigns.models import ApiToken

    _, token = ApiToken.issue(User.objects.create_superuser("api", "api@example.com", "pw"))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}", "content_type": "application/json"}
    mjml = client.post("/api/v1/templates", {"name": "Sections", "format": "mjml", "html": MJML_LAYOUT}, **auth)
    assert mjml.status_code == 201 and mjml.json()["format"] == "mjml"
    markdown = client.post("/api/v1/templates", {"name": "Notes", "format": "markdown", "html": "{{ content }}",
                                                 "layout_id": mjml.json()["id"]}, **auth)
    assert markdown.status_code == 201 and markdown.json()["layout_id"] == mjml.json()["id"]
    broken = client.post("/api/v1/templates", {"name": "Broken", "format": "mjml",
                                               "html": "<mjml>\n<mj-body>\n<mj-txt>{{ content }}</mj-txt>\n</mj-body>\n</mjml>"},
                         **auth)
    assert broken.status_code == 422
    assert broken.json()["errors"] == [{"field": "html", "line": 3, "message": "<mj-txt> is not an MJML element"}]
