"""The send_campaign command: start with a progress bar, pause, resume, cancel, clear errors."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from campaigns.models import Campaign, Suppression

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command("send_campaign", *[str(a) for a in args], stdout=out)
    return out.getvalue()


def test_start_pause_resume_cancel(make_campaign):
    campaign = make_campaign(["a@example.com", "b@example.com"])
    assert "sending to 2 recipients" in run(campaign.pk)
    assert "is paused" in run(campaign.pk, "--pause")
    progress = run(campaign.pk, "--progress")
    assert "0/2 paused" in progress and "[" in progress
    assert "is sending" in run(campaign.pk, "--resume")
    assert "is cancelled" in run(campaign.pk, "--cancel")
    assert Campaign.objects.get().status == Campaign.Status.CANCELLED


def test_wait_shows_progress_until_done(make_campaign):
    campaign = make_campaign(["a@example.com", "b@example.com"])
    Suppression.objects.create(email="a@example.com")
    Suppression.objects.create(email="b@example.com")
    out = run(campaign.pk, "--wait", "--interval", "0.1")
    assert "sending to 0 recipients" in out and "finished" in out


def test_wait_stops_with_the_reason_when_the_campaign_pauses(make_campaign):
    campaign = make_campaign(["a@example.com"])
    run(campaign.pk)
    Campaign.objects.filter(pk=campaign.pk).update(status="paused", status_reason="relay main: 535 5.7.8 bad login")
    with pytest.raises(CommandError, match="paused: relay main: 535 5.7.8"):
        run(campaign.pk, "--progress", "--wait")


def test_errors_say_what_is_wrong(make_campaign):
    with pytest.raises(CommandError, match="campaign 424242 does not exist"):
        run(424242)
    campaign = make_campaign(["a@example.com"])
    with pytest.raises(CommandError, match="can resume only when paused"):
        run(campaign.pk, "--resume")
    with pytest.raises(CommandError, match="not an ISO 8601 time"):
        run(campaign.pk, "--schedule", "tomorrow")
