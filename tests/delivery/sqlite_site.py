"""Sets up and reads back a campaign in a Herald whose DATABASE_URL is a SQLite file.

Run as a separate process (``python -m tests.delivery.sqlite_site setup|report``)
with the SQLite environment, because the test process itself is on PostgreSQL.
``setup SINK_PORT ADDRESS...`` prints the campaign id; ``report CAMPAIGN_ID``
prints the campaign's rows, suppressions and events as JSON.
"""

import json
import os
import sys

import django


def setup(sink_port, addresses):
    from campaigns.models import Campaign, Contact, MailingList, Subscription
    from campaigns.suppression import suppress
    from delivery.models import DomainThrottle, Period, Relay

    Relay.objects.create(name="sink", host="127.0.0.1", port=sink_port, security=Relay.Security.NONE)
    DomainThrottle.objects.create(name="everyone", is_default=True, rate=1000, period=Period.SECOND)
    readers = MailingList.objects.create(name="Readers")
    for address in addresses:
        contact = Contact.objects.create(email=address, email_key=address.lower(), first_name=address.split("@")[0])
        Subscription.objects.create(contact=contact, mailing_list=readers)
    # Unsubscribed in an earlier campaign: the snapshot leaves it out.
    suppress(addresses[0], "unsubscribe", "earlier campaign")
    campaign = Campaign.objects.create(
        name="Spring news", subject="Hello {{ contact.first_name }}", from_email="news@herald.example",
        from_name="Herald News", html_body="<p>Hi {{ contact.first_name }}</p>",
    )
    campaign.lists.add(readers)
    return campaign.pk


def report(campaign_id):
    from campaigns.models import Campaign, Suppression
    from delivery.models import Send
    from tracking import dashboard, stats
    from tracking.models import Event

    campaign = Campaign.objects.get(pk=campaign_id)
    figures = stats.campaign_stats(campaign)
    return {
        "sent_figure": figures["outcomes"]["delivered"]["count"],
        "sent_last_hours": dashboard.sends_per_hour()["total"],
        "status": campaign.status,
        "total": campaign.total,
        "sends": list(Send.objects.filter(campaign_id=campaign_id).order_by("email").values(
            "email", "status", "attempts", "smtp_code", "message_id")),
        "suppressed": dict(Suppression.objects.values_list("email_key", "reason")),
        "events": list(Event.objects.filter(campaign_id=campaign_id).values_list("type", flat=True)),
    }


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    django.setup()
    command, args = sys.argv[1], sys.argv[2:]
    if command == "setup":
        print(setup(int(args[0]), args[1:]))
    elif command == "report":
        print(json.dumps(report(int(args[0]))))
    else:
        sys.exit(f"unknown command {command!r}: use setup or report")
