"""Campaign templates: the sandbox, syntax errors with line numbers, missing variables."""

import pytest

from campaigns import rendering
from campaigns.models import Campaign, Template
from campaigns.rendering import ContactData, ContentError, check_template, missing_variables
from delivery.message import compile_campaign
from tests.content.conftest import FakeSend

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ contact['__class__'] }}",
    "{{ contact._sa_instance_state }}",
    "{% import 'os' as os %}",
    "{% include '/etc/passwd' %}",
    "{% extends 'base.html' %}",
    "{{ __builtins__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_are_refused_at_save(source):
    with pytest.raises(ContentError) as exc:
        check_template(source, "html_body")
    assert exc.value.field == "html_body" and exc.value.line == 1


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}", "{{ contact|attr('__class__') }}",
                                    "{{ (contact|attr('__init__')).__globals__ }}", "{{ range.__self__ }}"])
def test_sandbox_gives_nothing_away_at_render(source):
    """Even a template that skipped validation cannot reach Python internals."""
    env = rendering.html_env
    try:
        out = env.from_string(source).render(contact=ContactData("a@example.com"))
    except Exception as exc:  # SecurityError or UndefinedError: refused
        assert type(exc).__name__ in {"SecurityError", "UndefinedError"}
        return
    assert "class" not in out and "function" not in out and "module" not in out


def test_loops_conditionals_and_filters_work():
    env = rendering.html_env
    source = ("{% for item in contact.attributes.tags %}[{{ item | upper }}]{% endfor %}"
              "{% if contact.attributes.vip %}VIP{% else %}regular{% endif %} {{ contact.first_name | default('friend') }}")
    out = env.from_string(source).render(contact=ContactData("a@x.org", "", "", {"tags": ["a", "b"], "vip": True}))
    assert out == "[A][B]VIP friend"


def test_html_is_autoescaped():
    out = rendering.html_env.from_string("<p>{{ contact.first_name }}</p>").render(
        contact=ContactData("a@x.org", "<script>alert(1)</script>"))
    assert out == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"


def test_syntax_errors_name_field_and_line():
    with pytest.raises(ContentError) as exc:
        check_template("<p>one</p>\n<p>two</p>\n<p>{{ contact.first_name }</p>\n", "html_body")
    assert exc.value.line == 3
    assert str(exc.value).startswith("html_body, line 3: ")
    with pytest.raises(ContentError) as exc:
        check_template("{% if x %}\nnever closed\n", "text_body")
    assert exc.value.field == "text_body" and "endif" in exc.value.message


def test_literal_header_fields_must_be_single_lines():
    errors = rendering.validate_campaign_fields("Hello\r\nBcc: x@y", "Eve\nX", "", "", "a@b.c\r\nBcc: z", "r@b.c\n")
    assert {e.field for e in errors} == {"subject", "from_name", "from_email", "reply_to"}


def test_layout_needs_content_marker():
    errors = rendering.validate_template_row("<html><body>no marker</body></html>", "")
    assert [e.field for e in errors] == ["html"] and "{{ content }}" in errors[0].message


@pytest.mark.django_db
def test_preview_reports_variables_the_contact_lacks():
    layout = Template.objects.create(name="l", html="<body>{{ content }} {{ contact.attributes.footer_note }}</body>")
    campaign = Campaign.objects.create(
        name="p", subject="Hi {{ contact.first_name }}", from_email="n@example.com", template=layout,
        html_body="{{ contact.attributes.city }} {{ contact.attributes.plan | default('free') }} {{ contact.nickname }}")
    bob = ContactData("bob@example.com", "Bob", "", {"plan": "gold"})
    assert missing_variables(campaign, bob) == ["contact.attributes.city", "contact.nickname",
                                                "contact.attributes.footer_note"]
    nobody = ContactData("x@example.com")
    assert "contact.attributes.plan" in missing_variables(campaign, nobody)


@pytest.mark.django_db
def test_a_missing_variable_never_stops_a_campaign(alice):
    campaign = Campaign.objects.create(name="m", subject="{{ contact.attributes.a.b.c }}x", from_email="n@example.com",
                                       html_body="{{ contact.attributes.nested.deeper | upper }}{{ nothing.at.all }}ok")
    built = compile_campaign(campaign).build(FakeSend(5, alice.email), alice)
    assert b"Subject: x\r\n" in built.data and b"ok" in built.data


@pytest.mark.parametrize("source", ["{{ 'x' * 100000000 }}", "{{ [1] * 10**8 }}", "{{ 10 ** 100000 }}"])
def test_templates_cannot_exhaust_memory(source):
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        rendering.html_env.from_string(source).render(contact=ContactData("a@example.com"))


def test_an_empty_cycler_does_not_stop_a_campaign():
    out = rendering.text_env.from_string("{% set c = cycler() %}[{{ c.next() }}]").render()
    assert out == "[]"


def test_errors_that_do_not_depend_on_data_are_reported_at_save():
    with pytest.raises(ContentError) as exc:
        check_template("<p>fine</p>\n<p>{{ 1 / 0 }}</p>", "html_body", rendering.html_env)
    assert exc.value.line == 2 and "ZeroDivisionError" in exc.value.message
    with pytest.raises(ContentError):
        check_template("{{ 'x' * 10**9 }}", "subject")
