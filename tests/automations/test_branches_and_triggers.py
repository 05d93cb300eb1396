"""Branching on an open, a birthday in each contact's own time zone, a custom event's payload in the mail."""

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest

from automations import sweep, triggers
from automations.enrol import enrol
from automations.models import Automation, Enrolment, Message, Step
from delivery.models import Send
from tests.automations.conftest import automation_with, contact, template
from tracking.hotpath import record_open

pytestmark = pytest.mark.django_db
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"


def received(email):
    return sorted(Message.objects.filter(contact__email=email).values_list("template__slug", flat=True))


def test_branch_on_open_sends_each_contact_down_their_path(t0):
    steps = [
        {"kind": Step.Kind.EMAIL, "template": template("news", "News")},
        {"kind": Step.Kind.WAIT, "wait_seconds": 2 * 86400},
        {"kind": Step.Kind.BRANCH, "condition": Step.Condition.OPENED, "else_position": 60},
        {"kind": Step.Kind.EMAIL, "template": template("thanks", "Thanks for reading")},
        {"kind": Step.Kind.END},
        {"kind": Step.Kind.EMAIL, "template": template("missed", "Did you miss it?")},
    ]
    auto = automation_with(steps)
    reader, skipper = contact("reader@example.com"), contact("skipper@example.com")
    enrol(auto, [reader.pk, skipper.pk], now=t0)
    sweep.advance(now=t0)
    # Both were sent; a while later the reader opens theirs in a browser.
    Send.objects.update(status=Send.Status.SENT, sent_at=t0 - timedelta(minutes=10))
    assert record_open(Message.objects.get(contact=reader).send_id, BROWSER)

    sweep.advance(now=t0 + timedelta(days=2, seconds=1))
    assert received("reader@example.com") == ["news", "thanks"]
    assert received("skipper@example.com") == ["missed", "news"]
    assert set(Enrolment.objects.values_list("status", flat=True)) == {Enrolment.Status.DONE}


def test_birthday_mail_arrives_on_the_day_where_each_contact_lives():
    birthday = template("birthday", "Happy birthday, {{ contact.first_name }}")
    auto = automation_with([{"kind": Step.Kind.EMAIL, "template": birthday}], trigger=Automation.Trigger.DATE,
                           date_attribute="birthday", date_yearly=True, date_hour=9)
    tokyo = contact("kenji@example.jp", attributes={"birthday": "1990-06-15", "timezone": "Asia/Tokyo"})
    la = contact("lupe@example.com", attributes={"birthday": "1985-06-15", "timezone": "America/Los_Angeles"})
    contact("later@example.com", attributes={"birthday": "1970-06-16", "timezone": "Asia/Tokyo"})

    def enrolled():
        return sorted(Enrolment.objects.filter(automation=auto).values_list("contact_id", flat=True))

    # 00:30 UTC: 09:30 on 15 June in Tokyo, still 14 June in Los Angeles.
    triggers.poll(now=datetime(2026, 6, 15, 0, 30, tzinfo=UTC))
    assert enrolled() == [tokyo.pk]
    # 16:30 UTC: 09:30 in Los Angeles; Tokyo's birthday is already celebrated.
    triggers.poll(now=datetime(2026, 6, 15, 16, 30, tzinfo=UTC))
    triggers.poll(now=datetime(2026, 6, 15, 16, 31, tzinfo=UTC))
    assert enrolled() == sorted([tokyo.pk, la.pk])
    # A year later, again, with the automation's re-entry rule allowing it once a year.
    Automation.objects.filter(pk=auto.pk).update(reentry=Automation.Reentry.INTERVAL, reentry_days=300)
    triggers.poll(now=datetime(2027, 6, 15, 0, 30, tzinfo=UTC))
    assert Enrolment.objects.filter(contact=tokyo).count() == 2


def test_a_posted_event_enrols_and_its_payload_reaches_the_template(api, sink, relay, t0):
    receipt = template("receipt", "Your order {{ data.order }}",
                       body="<p>{{ data.products|length }} items, total {{ data.total }}</p>")
    auto = automation_with([{"kind": Step.Kind.EMAIL, "template": receipt}], trigger=Automation.Trigger.EVENT,
                           event_name="purchase", reentry=Automation.Reentry.ALWAYS)
    buyer = contact("buyer@example.com")
    response = api.post(f"/api/v1/contacts/{buyer.pk}/events", {"name": "purchase", "payload": {
        "order": "A-17", "products": ["tea", "cups"], "total": "12.50"}}, content_type="application/json")
    assert response.status_code == 201 and response.json()["enrolled"] == 1
    sweep.advance()
    from delivery import engine

    engine.send_batch(list(Send.objects.values_list("id", flat=True)))
    (got,) = sink.received
    assert got.message["Subject"] == "Your order A-17"
    assert "2 items, total 12.50" in got.message.get_body(("html",)).get_content()
    assert Enrolment.objects.get(automation=auto).status == Enrolment.Status.DONE


def test_automations_api_builds_steps_and_shows_their_statistics(api):
    tpl = template("hello", "Hello")
    response = api.post("/api/v1/automations", {
        "name": "Onboarding", "trigger": "manual", "status": "active",
        "steps": [{"kind": "email", "template_id": tpl.pk}, {"kind": "wait", "wait_seconds": 60},
                  {"kind": "email", "template_id": tpl.pk}],
    }, content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert [s["kind"] for s in body["steps"]] == ["email", "wait", "email"]
    response = api.post("/api/v1/automations", {"name": "Broken", "trigger": "manual",
                                                "steps": [{"kind": "email"}]}, content_type="application/json")
    assert response.status_code == 422 and "steps[0].template" in response.json()["detail"]
    person = contact("ann@example.com")
    assert api.post(f"/api/v1/automations/{body['id']}/enrol", {"contact_ids": [person.pk]},
                    content_type="application/json").json() == {"enrolled": 1}
    sweep.advance()
    steps = api.get(f"/api/v1/automations/{body['id']}").json()["steps"]
    assert [(s["entered"], s["kind"]) for s in steps] == [(1, "email"), (1, "wait"), (0, "email")]


def test_contacts_mid_way_keep_their_version_until_moved(api, t0):
    tpl, other = template("one", "One"), template("two", "Two")
    auto = automation_with([{"kind": Step.Kind.WAIT, "wait_seconds": 60}, {"kind": Step.Kind.EMAIL, "template": tpl}])
    enrol(auto, [contact("early@example.com").pk], now=t0)
    sweep.advance(now=t0)
    response = api.patch(f"/api/v1/automations/{auto.pk}", {"steps": [
        {"kind": "wait", "wait_seconds": 60}, {"kind": "email", "template_id": other.pk}]},
        content_type="application/json")
    assert response.json()["version"] == 2
    auto.refresh_from_db()
    enrol(auto, [contact("late@example.com").pk], now=t0)
    sweep.advance(now=t0)
    sweep.advance(now=t0 + timedelta(minutes=2))
    assert received("early@example.com") == ["one"] and received("late@example.com") == ["two"]


def test_a_click_in_an_automation_email_is_tracked_and_triggers_another(t0):
    offer = template("offer", "Our offer",
                     body='<p><a href="https://shop.example/spring?c={{ contact.first_name }}">See it</a></p>')
    automation_with([{"kind": Step.Kind.EMAIL, "template": offer}], name="Offer")
    follow = automation_with([{"kind": Step.Kind.EMAIL, "template": template("thanks", "Thanks")}], name="Clicked",
                             trigger=Automation.Trigger.CLICKED, link_url="https://shop.example/spring?c=Zoe")
    zoe = contact("zoe@example.com")
    enrol(Automation.objects.get(name="Offer"), [zoe.pk], now=t0)
    sweep.advance(now=t0)
    send = Send.objects.get()
    from automations.builder import build_for_send
    from tracking.hotpath import record_click

    html = message_from_bytes(build_for_send(send).data, policy=policy.default).get_body(("html",)).get_content()
    assert "/t/c/" in html and "shop.example" not in html, "the link is rewritten to the click redirect"
    Send.objects.update(status=Send.Status.SENT, sent_at=t0 - timedelta(minutes=10))
    assert record_click(send.pk, 0, BROWSER) == "https://shop.example/spring?c=Zoe"
    triggers.poll()
    assert Enrolment.objects.filter(automation=follow, contact=zoe).exists()


def test_steps_edited_while_nobody_is_on_them_take_effect_in_a_running_sweeper(t0):
    auto = automation_with([{"kind": Step.Kind.EMAIL, "template": template("hello", "Hello")}])
    enrol(auto, [contact("first@example.com").pk], now=t0)
    sweep.advance(now=t0)
    # A step added in place (no one is part-way), as the admin in another process does.
    Step.objects.create(automation=auto, version=auto.version, position=20, kind=Step.Kind.EMAIL,
                        template=template("tips", "Tips"))
    enrol(auto, [contact("second@example.com").pk], now=t0)
    sweep.advance(now=t0)
    assert received("first@example.com") == ["hello"] and received("second@example.com") == ["hello", "tips"]


def test_two_steps_at_one_position_run_once_and_the_contact_goes_on(t0):
    auto = automation_with([{"kind": Step.Kind.EMAIL, "template": template("first", "First")},
                            {"kind": Step.Kind.EMAIL, "template": template("next", "Next")}])
    Step.objects.create(automation=auto, version=auto.version, position=10, kind=Step.Kind.EMAIL,
                        template=template("twin", "Twin"))
    enrol(auto, [contact("ann@example.com").pk], now=t0)
    assert sweep.advance(now=t0) == 1
    assert received("ann@example.com") == ["first", "next"]
    assert Enrolment.objects.get().status == Enrolment.Status.DONE
