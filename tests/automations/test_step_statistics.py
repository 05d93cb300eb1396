"""Per-step figures add up: everyone who reached a step is still at it, left the automation there, or went on."""

from datetime import timedelta

import pytest

from audience.gdpr import erase
from automations import sweep
from automations.enrol import enrol
from automations.models import Enrolment, Message, Step
from campaigns.models import Contact, Suppression
from delivery.models import Send
from tests.automations.conftest import automation_with, contact, template
from tracking.hotpath import record_open

pytestmark = pytest.mark.django_db
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
DAY = timedelta(days=1)


def test_each_step_counts_who_entered_waits_was_sent_and_left_there(api, t0):
    auto = automation_with([
        {"kind": Step.Kind.EMAIL, "template": template("news", "News")},                    # 10
        {"kind": Step.Kind.WAIT, "wait_seconds": int(DAY.total_seconds())},                 # 20
        {"kind": Step.Kind.BRANCH, "condition": Step.Condition.OPENED, "else_position": 60},  # 30
        {"kind": Step.Kind.EMAIL, "template": template("thanks", "Thanks for reading")},    # 40
        {"kind": Step.Kind.END},                                                            # 50
        {"kind": Step.Kind.EMAIL, "template": template("missed", "Did you miss it?")},      # 60
    ])
    ann, ben, cat, dan, fay = (contact(f"{name}@example.com") for name in ("ann", "ben", "cat", "dan", "fay"))
    enrol(auto, [ann.pk, ben.pk, cat.pk, dan.pk, fay.pk], now=t0)
    sweep.advance(now=t0)
    # Sent a while ago: an open seconds after delivery would be a machine's.
    Send.objects.update(status=Send.Status.SENT, sent_at=t0 - timedelta(minutes=10))
    assert record_open(Message.objects.get(contact=ann).send_id, BROWSER)

    # During the wait: Cat unsubscribes from everything, Fay has her data erased, Eve joins later.
    Contact.objects.filter(pk=cat.pk).update(status=Contact.Status.UNSUBSCRIBED)
    assert sweep.exit_unmailable(now=t0 + timedelta(hours=1)) == 1
    erase(fay)
    eve = contact("eve@example.com")
    enrol(auto, [eve.pk], now=t0 + timedelta(hours=12))
    sweep.advance(now=t0 + timedelta(hours=12))
    # Dan's address bounces elsewhere just before his wait ends: he leaves when the sweep reaches him.
    Suppression.objects.create(email="dan@example.com", reason=Suppression.Reason.HARD_BOUNCE)

    sweep.advance(now=t0 + DAY + timedelta(seconds=1))
    Send.objects.filter(sent_at=None, status=Send.Status.QUEUED).update(status=Send.Status.SENT, sent_at=t0 + DAY)

    steps = api.get(f"/api/v1/automations/{auto.pk}").json()["steps"]
    figures = {s["position"]: (s["entered"], s["waiting"], s["exited"], s["sent"], s["opened"]) for s in steps}
    assert figures == {
        10: (6, 0, 0, 5, 1),  # Fay's message went with her data
        20: (6, 1, 3, 0, 0),  # Eve still waits; Cat, Dan and Fay left during the wait
        30: (2, 0, 0, 0, 0),
        40: (1, 0, 0, 1, 0),  # Ann opened: thanked
        50: (1, 0, 1, 0, 0),  # and ended there
        60: (1, 0, 1, 1, 0),  # Ben did not: reminded, and finished there
    }
    for s in steps:
        went_on = s["entered"] - s["waiting"] - s["exited"]
        following = [t for t in steps if t["position"] > s["position"]]
        if s["kind"] != "branch" and s["kind"] != "end" and following:
            assert went_on == following[0]["entered"], s
    assert set(Enrolment.objects.filter(automation=auto).values_list("contact__email", "status")) == {
        ("ann@example.com", "done"), ("ben@example.com", "done"), ("cat@example.com", "exited"),
        ("dan@example.com", "exited"), ("eve@example.com", "active")}
