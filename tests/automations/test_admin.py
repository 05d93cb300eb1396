"""The automation page: steps listed, added and edited inline; an edit leaves contacts mid-way on their steps."""

import pytest

from automations import sweep
from automations.enrol import enrol
from automations.models import Automation, Step
from tests.automations.conftest import automation_with, contact, template

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def form_data(auto, steps):
    data = {"name": auto.name, "status": auto.status, "trigger": auto.trigger, "reentry": auto.reentry,
            "reentry_days": auto.reentry_days, "date_hour": 9,
            "steps-TOTAL_FORMS": len(steps), "steps-INITIAL_FORMS": sum(1 for s in steps if s.get("id")),
            "steps-MIN_NUM_FORMS": 0, "steps-MAX_NUM_FORMS": 1000}
    for n, step in enumerate(steps):
        for key, value in step.items():
            data[f"steps-{n}-{key}"] = value
        data[f"steps-{n}-automation"] = auto.pk
    return data


def test_steps_are_edited_inline_and_contacts_mid_way_keep_theirs(staff, t0):
    first, second = template("first", "First"), template("second", "Second")
    auto = automation_with([{"kind": Step.Kind.WAIT, "wait_seconds": 60}, {"kind": Step.Kind.EMAIL, "template": first}])
    page = staff.get(f"/admin/automations/automation/{auto.pk}/change/")
    assert page.status_code == 200 and b"steps-0-kind" in page.content
    enrol(auto, [contact("early@example.com").pk], now=t0)
    sweep.advance(now=t0)

    wait, email = auto.current_steps()
    response = staff.post(f"/admin/automations/automation/{auto.pk}/change/", form_data(auto, [
        {"id": wait.pk, "position": 10, "kind": "wait", "wait_seconds": 60},
        {"id": email.pk, "position": 30, "kind": "email", "template": second.pk, "wait_seconds": 0},
        {"position": 20, "kind": "email", "template": first.pk, "wait_seconds": 0},
    ]))
    assert response.status_code == 302, [f.errors for f in response.context["inline_admin_formsets"][0].formset.forms]
    auto.refresh_from_db()
    assert auto.version == 2
    assert [(s.position, s.template_id) for s in auto.current_steps()] == [(10, None), (20, first.pk), (30, second.pk)]
    # The contact already waiting finishes the version they started: one email, the first.
    sweep.advance(now=t0.replace(year=t0.year + 1))
    from automations.models import Message

    assert list(Message.objects.values_list("template__slug", flat=True)) == ["first"]
    assert Automation.objects.get().status == "active"
