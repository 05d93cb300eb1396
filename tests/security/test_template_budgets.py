"""Template authors cannot exhaust memory or CPU: every render runs under output, loop, size and time budgets.

A runaway template is refused at save with a message naming the budget, and a
campaign whose template runs away at send time (saved before the budgets, or
blowing up on one contact's data) pauses with that reason; its rows go back
to the queue untouched, so resuming after a fix sends them all.
"""

import gc
import signal
import time
import tracemalloc

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth.models import Permission, User
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError

from campaigns.models import ApiToken, Campaign, Contact, MailingList, Subscription
from campaigns.rendering import ContactData, check_template, html_env
from campaigns.sandbox import BUILD_FACTOR, BudgetExceeded, render_budget
from delivery import engine, lifecycle, routing, tasks
from delivery.models import Relay, Send
from delivery.smtp import pool
from delivery.throttle import throttles
from tests.delivery.conftest import drain

pytestmark = pytest.mark.timeout(60)

OUTPUT = "HERALD_TEMPLATE_MAX_OUTPUT"
LOOPS = "more than 100,000 loop iterations (HERALD_TEMPLATE_MAX_LOOP)"
# Each ran away on the sandbox without budgets (memory or CPU until the worker died).
RUNAWAYS = {
    "center": ("{{ 'x'|center(900000000) }}", OUTPUT),
    "format width": ("{{ '{:>900000000}'.format('x') }}", OUTPUT),
    "replace by itself": ("{% set s = 'a' * 100000 %}{{ s|replace('a', s) }}", OUTPUT),
    "list doubling": ("{% set ns = namespace(l=[0]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}"
                      "{% endfor %}{{ ns.l|length }}", OUTPUT),
    "chained powers": ("{{ 9 ** 64 ** 64 ** 64 ** 64 }}", "a number of more than 4,300 digits"),
    "nested ranges": ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", LOOPS),
    "output": ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
               "template output exceeds 2 MB (HERALD_TEMPLATE_MAX_OUTPUT)"),
}
MORE_RUNAWAYS = [
    "{{ 'x'.ljust(900000000) }}", "{{ 'x'.rjust(900000000) }}", "{{ 'x'.zfill(900000000) }}",
    "{{ '%900000000s'|format('x') }}", "{{ '%900000000s' % 'x' }}", "{{ '{:.900000000f}'.format(1.5) }}",
    "{{ '{:{}}'.format('x', 900000000) }}", "{{ ['x'] * 900000000 }}", "{{ 'x' * 900000000 }}",
    "{{ 'x'|indent(900000000, true) }}", "{{ ('x' * 1000)|wordwrap(1, true, 'y' * 100000) }}",
    "{{ range(100000)|join('x' * 100000) }}", "{{ 'x'|truncate(10, end='y' * 900000000) }}",
    "{{ (10).to_bytes(900000000, 'big') }}", "{{ range(900000000)|list }}", "{{ [1]|batch(900000000, 'x') }}",
    "{{ range(10)|slice(900000000) }}", "{{ ('\t' * 1000).expandtabs(900000000) }}",
    "{% set a = ['x' * 1000000, 'x' * 1000000] %}{% set b = [a, a] %}{% set c = [b, b] %}{{ c }}",
    "{% set a = ('x', 'x') %}{% set b = (a, a) %}{% set c = (b, b) %}{% set d = (c, c) %}{% set e = (d, d) %}"
    "{% set f = (e, e) %}{% set g = (f, f) %}{% set h = (g, g) %}{% set i = (h, h) %}{% set j = (i, i) %}"
    "{% set k = (j, j) %}{% set l = (k, k) %}{% set m = (l, l) %}{% set n = (m, m) %}{% set o = (n, n) %}"
    "{% set p = (o, o) %}{% set q = (p, p) %}{% set r = (q, q) %}{% set s = (r, r) %}{% set t = (s, s) %}{{ t }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(60) }}",
    "{% for x in range(100000) recursive %}{{ loop(range(100000)) }}{% endfor %}",
    "{% for a in range(100000) %}{% for b in range(100000) if b < 0 %}{% endfor %}{% endfor %}",
    "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "{% set x %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}{{ x|length }}",
    "{% filter center(900000000) %}x{% endfilter %}",
    "{{ 'x'.center(900000000) }}", "{{ 'ab'.replace('', 'x' * 1000000) }}",
    "{{ ('www.example.com ' * 100)|urlize(target='x' * 100000) }}", "{{ dict.fromkeys(range(100000), 'x' * 1000000) }}",
]


def budget_error(source):
    """The error a render of ``source`` stops with."""
    with pytest.raises(BudgetExceeded) as exc:
        html_env.from_string(source).render(contact=ContactData("a@example.com"))
    return str(exc.value)


@pytest.mark.parametrize("name", RUNAWAYS)
def test_each_runaway_stops_with_the_budget_it_went_over(name):
    source, expected = RUNAWAYS[name]
    assert expected in budget_error(source)


@pytest.mark.parametrize("source", MORE_RUNAWAYS)
def test_other_ways_to_ask_for_too_much_stop_too(source):
    try:
        check_template(source, "html_body", html_env)
    except Exception as exc:  # noqa: BLE001 - any refusal with a message is what we want
        assert str(exc)
    else:
        pytest.fail(f"{source!r} was accepted")


def test_normal_templates_are_unaffected():
    source = ("{% set items = contact.attributes.tags|default([]) %}"
              "{% for t in items if t %}{{ loop.index }}. {{ t|title|center(12) }}{% endfor %}"
              " {{ '%05.1f'|format(3.14159) }} {{ '{:>6}'.format(contact.first_name) }} {{ (2 ** 10) * 3 }}"
              " {{ contact.email|replace('@', ' at ') }} {{ range(3)|join(', ') }} {{ [1, 2] + [3] }}"
              " {% macro greet(n) %}hi {{ n }}{% endmacro %}{{ greet('Ann') }} {{ 'ab' * 3 }}")
    out = html_env.from_string(source).render(contact=ContactData("ann@example.com", "Ann", "", {"tags": ["a", "b"]}))
    assert out == ("1.      A      2.      B       003.1    Ann 3072 ann at example.com 0, 1, 2 [1, 2, 3]"
                   " hi Ann ababab")


def test_a_large_but_honest_newsletter_renders(settings):
    item = "<tr><td>{{ loop.index }}</td><td>{{ row.name|e }}</td><td>{{ '%.2f'|format(row.price) }}</td></tr>\n"
    source = "<table>{% for row in contact.attributes.rows %}" + item + "{% endfor %}</table>"
    rows = [{"name": f"Item {i} <b>", "price": i * 1.5} for i in range(20000)]
    with render_budget(seconds=None):  # the size and loop budgets, whatever the machine's speed
        out = html_env.from_string(source).render(contact=ContactData("a@example.com", attributes={"rows": rows}))
    assert out.count("<tr>") == 20000 and len(out) < settings.HERALD_TEMPLATE_MAX_OUTPUT


def test_the_budgets_follow_the_settings(settings):
    settings.HERALD_TEMPLATE_MAX_LOOP = 100
    assert "more than 100 loop iterations" in budget_error("{% for i in range(50) %}{% for j in range(3) %}"
                                                           "{% endfor %}{% endfor %}")
    settings.HERALD_TEMPLATE_MAX_OUTPUT = 10 * 1024
    assert "template output exceeds 10 KB (HERALD_TEMPLATE_MAX_OUTPUT)" in budget_error(
        "{% for i in range(99) %}{{ 'x' * 200 }}{% endfor %}")


# --- save time: the API and the admin refuse, naming the budget ----------------------------------

@pytest.fixture
def api(client, db):
    editor = User.objects.create_user("editor", password="x")
    editor.user_permissions.set(Permission.objects.filter(content_type__app_label="campaigns",
                                                          codename__regex=r"_(campaign|template)$"))
    token = ApiToken.issue(editor)[1]

    def post(path, data):
        return client.post(f"/api/v1{path}", data, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {token}")

    return post


CAMPAIGN = {"name": "Spring", "subject": "Hello", "from_name": "Herald", "from_email": "news@example.com"}


@pytest.mark.parametrize("name", RUNAWAYS)
def test_the_api_refuses_a_runaway_campaign_body(api, name):
    source, expected = RUNAWAYS[name]
    response = api("/campaigns", CAMPAIGN | {"html_body": f"<p>Hi</p>\n{source}"})
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["field"] == "html_body" and error["line"] == 2 and expected in error["message"]
    assert not Campaign.objects.exists()


@pytest.mark.parametrize("name", ["center", "nested ranges"])
def test_the_api_refuses_a_runaway_layout_and_subject(api, name):
    source, expected = RUNAWAYS[name]
    response = api("/templates", {"name": "L", "html": "<body>{{ content }}" + source + "</body>"})
    assert response.status_code == 422 and expected in response.json()["detail"]
    response = api("/campaigns", CAMPAIGN | {"subject": source, "html_body": "<p>Hi</p>"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "subject"


@pytest.mark.parametrize("name", ["format width", "list doubling"])
def test_the_admin_shows_the_budget_on_the_field(client, db, name):
    source, expected = RUNAWAYS[name]
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    response = client.post("/admin/campaigns/campaign/add/", CAMPAIGN | {
        "reply_to": "", "text_body": "", "html_body": source, "track_opens": "on", "track_clicks": "on"})
    assert response.status_code == 200
    assert expected in response.content.decode()
    assert not Campaign.objects.exists()


# --- send time: the campaign pauses, its rows wait in the queue ------------------------------------

@pytest.fixture
def engine_state(redis_client):
    routing.forget_relay()
    throttles.invalidate()
    engine._compiled.clear()
    yield
    pool.close_all()
    routing.forget_relay()
    throttles.invalidate()


@pytest.fixture
def relay(db, sink, engine_state):
    relay = Relay.objects.create(name="test relay", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    return relay


def make_campaign(html_body, first_names=None):
    """A running campaign to Ann, Bob and Cy, saved as it was before the budgets (no validation)."""
    lst = MailingList.objects.create(name="Budget list")
    for name in ("ann", "bob", "cy"):
        contact = Contact.objects.create(email=f"{name}@example.com",
                                         first_name=(first_names or {}).get(name, name.title()))
        Subscription.objects.create(contact=contact, mailing_list=lst)
    campaign = Campaign.objects.create(name="Runaway", subject="Hello {{ contact.first_name }}",
                                       from_email="news@herald.example", html_body=html_body)
    campaign.lists.add(lst)
    lifecycle.start_campaign(campaign.pk)
    return campaign


def assert_paused_and_untouched(campaign, reason):
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    assert reason in campaign.status_reason
    rows = Send.objects.filter(campaign=campaign)
    assert rows.count() == 3
    assert set(rows.values_list("status", "attempts")) == {("queued", 0)}, "released, never failed"


def fix_and_resume(campaign, sink):
    Campaign.objects.filter(pk=campaign.pk).update(html_body="<p>Hi {{ contact.first_name }}</p>")
    lifecycle.resume_campaign(campaign.pk)
    drain(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED
    assert sorted(sink.recipients()) == ["ann@example.com", "bob@example.com", "cy@example.com"]


@pytest.mark.parametrize("name", RUNAWAYS)
def test_a_runaway_template_pauses_its_campaign_at_send_time(relay, sink, name):
    source, expected = RUNAWAYS[name]
    campaign = make_campaign(f"<p>Hi</p>{source}")
    drain(campaign.pk)
    assert_paused_and_untouched(campaign, expected)
    assert sink.recipients() == []
    fix_and_resume(campaign, sink)


def test_a_contacts_data_that_blows_a_budget_pauses_the_campaign(relay, sink):
    """The trial render at save has no contact data; a width made from one contact's name stops at send time."""
    campaign = make_campaign("<p>{{ 'x'|center((contact.first_name|length) ** 9) }}</p>", {"bob": "Bartholomew"})
    drain(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    assert "bob@example.com" in campaign.status_reason and OUTPUT in campaign.status_reason
    statuses = dict(Send.objects.filter(campaign=campaign).values_list("email", "status"))
    # Ann went out before Bob's render stopped; Bob and Cy wait for the fix.
    assert statuses == {"ann@example.com": "sent", "bob@example.com": "queued", "cy@example.com": "queued"}
    assert set(Send.objects.filter(campaign=campaign, status="queued").values_list("attempts", flat=True)) == {0}
    # Ann got the content, so it stays as it is (frozen): the fix is Bob's data.
    Contact.objects.filter(email="bob@example.com").update(first_name="Bob")
    lifecycle.resume_campaign(campaign.pk)
    drain(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED
    assert sorted(sink.recipients()) == ["ann@example.com", "bob@example.com", "cy@example.com"]


def soft_time_limit_after(seconds):
    """Celery raises SoftTimeLimitExceeded in the worker from a signal handler; so does this, from SIGALRM."""

    def raise_soft_limit(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, raise_soft_limit)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return lambda: (signal.setitimer(signal.ITIMER_REAL, 0), signal.signal(signal.SIGALRM, previous))


@pytest.fixture
def endless(settings, monkeypatch):
    """Bob's render loops for good: only the task's time limit can stop it."""
    settings.HERALD_TEMPLATE_MAX_LOOP = 10**12
    monkeypatch.setattr(engine, "RENDER_SECONDS", 600.0)
    enqueued = []
    monkeypatch.setattr(tasks.dispatch, "enqueue_sends", lambda ids, countdown=0.0: enqueued.append(list(ids)))
    campaign = make_campaign("{% set n = (contact.first_name|length) ** 5 %}"
                             "{% for a in range(n) %}{% for b in range(n) %}{% endfor %}{% endfor %}",
                             {"bob": "Bartholomew"})
    ids = list(Send.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True))
    return campaign, ids, enqueued


def test_a_render_stuck_at_the_soft_time_limit_pauses_and_loses_nothing(relay, sink, endless, monkeypatch):
    campaign, ids, enqueued = endless
    monkeypatch.setattr(engine, "STUCK_RENDER_SECONDS", 0.2)
    restore = soft_time_limit_after(1.5)
    try:
        tasks.send_batch(ids)
    finally:
        restore()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED and "time limit" in campaign.status_reason
    assert "bob@example.com" in campaign.status_reason
    statuses = dict(Send.objects.filter(campaign=campaign).values_list("email", "status"))
    assert statuses == {"ann@example.com": "sent", "bob@example.com": "queued", "cy@example.com": "queued"}
    assert sink.recipients() == ["ann@example.com"]
    assert set(Send.objects.filter(campaign=campaign, status="queued").values_list("attempts", flat=True)) == {0}
    # Ann got the content, so it stays as it is (frozen): the fix is Bob's data.
    Contact.objects.filter(email="bob@example.com").update(first_name="Bob")
    lifecycle.resume_campaign(campaign.pk)
    drain(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.FINISHED
    assert sorted(sink.recipients()) == ["ann@example.com", "bob@example.com", "cy@example.com"]


def test_a_batch_stopped_at_the_soft_time_limit_goes_back_to_the_queue(relay, sink, endless, monkeypatch):
    """When the time went elsewhere than one render, nothing is paused: the rows are released and enqueued again."""
    campaign, ids, enqueued = endless
    monkeypatch.setattr(engine, "STUCK_RENDER_SECONDS", 3600.0)
    restore = soft_time_limit_after(1.5)
    try:
        tasks.send_batch(ids)
    finally:
        restore()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    assert not Send.objects.filter(campaign=campaign, status="sending").exists(), "no row is left claimed"
    assert enqueued == [ids]


# --- fuzz: no template goes far over its memory or time budget -------------------------------------

NUMBER = st.sampled_from([0, 1, 3, 80, 1000, 65536, 10**6, 2**31, 900000000, 10**18])
TEXT = st.sampled_from(["'x'", "'a b\\tc\\n'", "s", "ns.v", "contact.email", "'€'"])
SEQUENCE = st.sampled_from(["range(N)", "[s, s, s]", "(ns.v, ns.v)", "s|list", "[1, 2, 3]", "{'k': s}"])


def _fill(template, n):
    return template.replace("N", str(n))


def expression(depth=2):
    leaf = st.one_of(TEXT, SEQUENCE.flatmap(lambda q: NUMBER.map(lambda n: _fill(q, n))), NUMBER.map(str))
    if depth == 0:
        return leaf
    inner = expression(depth - 1)

    def combine(kind, a, b, n):
        return {
            "center": f"({a})|center({n})", "indent": f"({a})|indent({n}, true)", "wordwrap": f"({a})|wordwrap(1, true, {b})",
            "truncate": f"({a})|truncate({n}, end={b})", "replace": f"({a})|replace('x', {b})", "join": f"({a})|join({b})",
            "format": f"'%{n}s%s'|format({a}, {b})", "batch": f"({a})|batch({n}, {b})", "slice": f"({a})|slice({n})",
            "ljust": f"({a}|string).ljust({n})", "zfill": f"({a}|string).zfill({n})",
            "mreplace": f"({a}|string).replace('', {b}|string)",
            "mjoin": f"({a}|string).join({b})", "fmt": f"'{{:>{n}}}{{}}'.format({a}, {b})", "times": f"({a}) * {n}",
            "plus": f"({a}) + ({b})", "pow": f"{n} ** {n} ** {n}", "tilde": f"{a} ~ {b} ~ {a}", "percent": f"'%*s' % ({n}, {a})",
            "list": f"({a})|list", "string": f"({a})|string", "tojson": f"({a})|tojson", "map": f"({a})|map('string')|list",
            "urlize": f"({a}|string)|urlize(target={b})", "expandtabs": f"({a}|string).expandtabs({n})",
            "nest": f"[{a}, {b}, {a}, {b}]",
        }[kind]

    return st.builds(combine, st.sampled_from(["center", "indent", "wordwrap", "truncate", "replace", "join", "format",
                                               "batch", "slice", "ljust", "zfill", "mreplace", "mjoin", "fmt", "times",
                                               "plus", "pow", "tilde", "percent", "list", "string", "tojson", "map",
                                               "urlize", "expandtabs", "nest"]),
                     inner, inner, NUMBER)


def statement(depth=2):
    expr = expression()
    simple = st.one_of(expr.map(lambda e: "{{ " + e + " }}"), expr.map(lambda e: "{% set ns.v = " + e + " %}"),
                       st.just("{{ m(30) }}"), st.just("{% set x %}{{ ns.v }}{{ ns.v }}{% endset %}{% set ns.v = x %}"))
    if depth == 0:
        return simple
    body = st.lists(statement(depth - 1), min_size=1, max_size=3).map("".join)
    loop = st.builds(lambda n, b, test: "{% for i in range(" + str(n) + ")" + (" if i >= 0" if test else "") + " %}"
                     + b + "{% endfor %}", NUMBER.filter(lambda n: n < 10**7), body, st.booleans())
    return st.one_of(simple, loop)


PRELUDE = ("{% set s = 'xy' * 100 %}{% set ns = namespace(v='ab') %}"
           "{% macro m(k) %}{% if k > 0 %}{{ m(k - 1) }}{{ m(k - 1) }}{% endif %}{% endmacro %}")
FUZZ_OUTPUT = 64 * 1024
FUZZ_SECONDS = 0.2


@pytest.fixture
def small_budgets(settings):
    """Budgets scaled down so that each example is quick; the checks scale with them."""
    settings.HERALD_TEMPLATE_MAX_OUTPUT = FUZZ_OUTPUT
    settings.HERALD_TEMPLATE_MAX_LOOP = 2_000


@given(body=st.lists(statement(), min_size=1, max_size=4).map("".join))
@pytest.mark.timeout(120)
@hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
def test_no_template_goes_far_over_its_memory_or_time_budget(small_budgets, body):
    source = PRELUDE + body
    try:
        template = html_env.from_string(source)
    except TemplateSyntaxError:
        return
    memory_budget = (BUILD_FACTOR + 1) * FUZZ_OUTPUT  # new values, plus the output itself
    gc.collect()
    tracemalloc.start()
    # CPU time, so that other processes on the machine do not count; the
    # render's own deadline is wall-clock, which only stops it sooner.
    started = time.process_time()
    try:
        with render_budget(FUZZ_SECONDS):
            template.render(contact=ContactData("ann@example.com", "Ann"))
    except Exception:  # noqa: BLE001, S110 - refusals of every kind are fine; only the cost is judged
        pass
    spent = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak <= 4 * memory_budget, f"{peak:,} bytes at peak for {source!r}"
    assert spent <= 4 * FUZZ_SECONDS, f"{spent:.2f} s of CPU for {source!r}"
