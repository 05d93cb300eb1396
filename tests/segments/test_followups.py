"""Follow-ups: a draft for the recipients of a sent campaign who did not open, did not click or clicked.

Only a person's open counts unless the operator says machines' do too; the
confirmation says how many that changes; whoever unsubscribed, bounced or
complained since is left out, and nobody who did not get the original gets it.
"""

import datetime

import pytest
from django.utils import timezone

from campaigns.models import Campaign, CampaignVariant, Contact, FollowUp, MailingList, Subscription
from delivery import lifecycle, planner
from delivery.models import Send
from segments import followups
from tracking.models import Event

pytestmark = pytest.mark.django_db


@pytest.fixture
def original():
    """Sent to ann, bob, cat, dan, eve, fay and gus; hal is on the list but joined after it went out."""
    news = MailingList.objects.create(name="News")
    c = Campaign.objects.create(name="Spring", subject="Spring is here", from_email="news@herald.example",
                                html_body="<p>Spring</p>", status=Campaign.Status.FINISHED,
                                started_at=timezone.now() - datetime.timedelta(days=2),
                                finished_at=timezone.now() - datetime.timedelta(days=2))
    c.lists.add(news)
    people = {}
    for name in ("ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal"):
        people[name] = Contact.objects.create(email=f"{name}@example.com", first_name=name)
        Subscription.objects.create(contact=people[name], mailing_list=news)
        if name != "hal":
            Send.objects.create(campaign=c, contact=people[name], email=f"{name}@example.com", domain="example.com",
                                status=Send.Status.SENT if name != "gus" else Send.Status.BOUNCED,
                                sent_at=c.started_at)

    def event(name, kind, machine=False):
        Event.objects.create(type=kind, contact=people[name], campaign=c, email=people[name].email, machine=machine)

    event("ann", "open")  # a person opened
    event("bob", "open", machine=True)  # only Apple's proxy fetched the pixel
    event("cat", "open", machine=True)
    event("cat", "click")  # a person clicked: she saw it
    event("dan", "click", machine=True)  # only a link scanner
    event("eve", "unsubscribe")  # left since
    Subscription.objects.filter(contact=people["eve"]).update(status="unsubscribed")
    # fay did nothing at all; gus's copy bounced, so he never got it.
    return c


def recipients(follow):
    planner.snapshot_range(follow, 0, planner.highest_contact_id())
    return sorted(Send.objects.filter(campaign=follow).values_list("email", flat=True))


def names(*people):
    return [f"{p}@example.com" for p in people]


def test_did_not_open_counts_only_peoples_opens(original):
    follow = followups.create(original, "not_opened", subject="Did you miss spring?")
    assert follow.status == Campaign.Status.DRAFT and follow.subject == "Did you miss spring?"
    assert follow.html_body == "<p>Spring</p>"
    # bob and dan had only machine opens or clicks; eve left; gus never got it; hal was not sent it.
    assert recipients(follow) == names("bob", "dan", "fay")
    assert followups.left_out_by_machines(follow) == (
        2, "2 recipient(s) included although a machine opened, since machine activity does not count")


def test_machine_opens_count_when_the_operator_says_so(original):
    follow = followups.create(original, "not_opened", machine_opens=True)
    assert recipients(follow) == names("fay")
    count, sentence = followups.left_out_by_machines(follow)
    assert count == 2 and sentence.startswith("2 recipient(s) left out because only a machine opened")


def test_did_not_click_and_clicked(original):
    assert recipients(followups.create(original, "not_clicked")) == names("ann", "bob", "dan", "fay")
    clicked = followups.create(original, "clicked")
    assert recipients(clicked) == names("cat")
    assert followups.left_out_by_machines(clicked)[1].startswith("1 recipient(s) left out because only a machine clicked")


def test_the_count_on_the_confirmation_is_what_is_sent(original):
    follow = followups.create(original, "not_opened")
    assert planner.count_audience(follow) == 3


def test_a_complaint_or_bounce_since_leaves_people_out(original):
    fay = Contact.objects.get(email="fay@example.com")
    Event.objects.create(type="complaint", contact=fay, email=fay.email)
    assert recipients(followups.create(original, "not_opened")) == names("bob", "dan")


def test_it_does_not_start_before_the_chosen_delay(original):
    follow = followups.create(original, "not_opened", delay=datetime.timedelta(days=3))
    assert follow.not_before == original.finished_at + datetime.timedelta(days=3)
    with pytest.raises(lifecycle.LifecycleError, match="may not start before"):
        lifecycle.start_campaign(follow.pk)
    with pytest.raises(lifecycle.LifecycleError, match="may not start before"):
        lifecycle.schedule_campaign(follow.pk, timezone.now())
    lifecycle.schedule_campaign(follow.pk, follow.not_before + datetime.timedelta(minutes=1))


def test_only_a_sent_campaign_can_be_followed_up(original):
    draft = Campaign.objects.create(name="Draft", subject="x", from_email="news@herald.example", html_body="<p>x</p>")
    with pytest.raises(followups.FollowUpError, match="only a campaign that was sent"):
        followups.create(draft, "not_opened")


def test_unsubscribing_from_a_follow_up_leaves_the_originals_lists(original):
    from tracking.unsubscribe import unsubscribe

    follow = followups.create(original, "not_opened")
    planner.snapshot_range(follow, 0, planner.highest_contact_id())
    send = Send.objects.get(campaign=follow, email="fay@example.com")
    unsubscribe(send)
    fay = Contact.objects.get(email="fay@example.com")
    assert fay.status == Contact.Status.ACTIVE
    assert list(fay.subscriptions.values_list("status", flat=True)) == ["unsubscribed"]


def test_a_follow_up_of_one_variant_goes_to_its_recipients_with_its_content(original, admin_client):
    for number, subject in ((1, "Spring A"), (2, "Spring B")):
        CampaignVariant.objects.create(campaign=original, number=number, subject=subject, html_body=f"<p>{subject}</p>")
    original.freeze_content()
    # A got ann, cat and eve; B bob, dan and fay (gus bounced).
    for letter, people in ((1, ("ann", "cat", "eve")), (2, ("bob", "dan", "fay", "gus"))):
        Send.objects.filter(campaign=original, email__in=names(*people)).update(variant=letter)

    with pytest.raises(followups.FollowUpError, match="no variant 3; its variants: 1 \\(A\\), 2 \\(B\\)"):
        followups.create(original, FollowUp.NOT_OPENED, variant=3)
    # Through the admin's form, as an operator does it: B's recipients who did not open.
    page = admin_client.get(f"/admin/herald/campaigns/{original.pk}/follow-up/")
    assert b"any variant" in page.content
    admin_client.post(f"/admin/herald/campaigns/{original.pk}/follow-up/",
                      {"audience": FollowUp.NOT_OPENED, "delay_hours": "0", "variant": "2"})
    follow = Campaign.objects.get(follow_up_of=original)
    assert follow.follow_up_variant == 2 and follow.subject == "Spring B" and follow.html_body == "<p>Spring B</p>"
    # bob's only open was a machine's; dan clicked only by a scanner; fay did nothing.
    assert recipients(follow) == names("bob", "dan", "fay")
