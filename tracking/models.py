"""What comes back about a message: one Event model for every kind of report."""

from django.db import models

from campaigns.models import Campaign, Contact
from delivery.models import Send


class Event(models.Model):
    class Type(models.TextChoices):
        OPEN = "open"
        CLICK = "click"
        UNSUBSCRIBE = "unsubscribe"
        BOUNCE = "bounce"
        SOFT_BOUNCE = "soft_bounce"
        DELAYED = "delayed"
        COMPLAINT = "complaint"
        DELIVERED = "delivered"
        REJECTED = "rejected"
        # The engine gave up on a send (no bounce report, e.g. deferred too long).
        FAILED = "failed"

    type = models.CharField(max_length=16, choices=Type.choices)
    # Every open and click inserts a row, and each index costs on every insert:
    # send and campaign are served by the composite indexes below that lead with them.
    send = models.ForeignKey(Send, on_delete=models.SET_NULL, null=True, blank=True, related_name="events", db_index=False)
    # Served by the (contact, type, machine, created_at) index below.
    contact = models.ForeignKey(Contact, on_delete=models.SET_NULL, null=True, blank=True, related_name="events",
                                db_index=False)
    campaign = models.ForeignKey(Campaign, on_delete=models.SET_NULL, null=True, blank=True, related_name="events",
                                 db_index=False)
    email = models.CharField(max_length=320, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Open/click from a privacy proxy or link scanner rather than a person.
    machine = models.BooleanField(default=False)
    # The A/B variant of the send (copied from it), so reports and segments read it off the event.
    variant = models.PositiveSmallIntegerField(null=True, blank=True)
    url = models.TextField(blank=True, default="")
    link_index = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, blank=True, default="", help_text="RFC 3463 status for bounces.")
    diagnostic = models.TextField(blank=True, default="")
    # db_default: the open and click fast paths insert rows in SQL of their own.
    reason = models.CharField(max_length=255, blank=True, default="", db_default="",
                              help_text="Why a bounce or reply was read as this type: the evidence that decided.")
    user_agent = models.TextField(blank=True, default="")
    source = models.CharField(max_length=32, blank=True, default="", help_text="pixel, redirect, bounce-server, imap, ses, …")
    raw = models.TextField(blank=True, default="")
    # Repeated reports of one happening share a key and are recorded once.
    key = models.CharField(max_length=255, unique=True, null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["send", "type"], name="event_send_type_idx"),
            models.Index(fields=["email"], name="event_email_idx"),
            # Statistics: unique opens/clicks per campaign, and the hourly timeline.
            models.Index(fields=["campaign", "type", "machine", "send"], name="event_campaign_unique_idx"),
            models.Index(fields=["campaign", "created_at"], name="event_campaign_time_idx"),
            # Segments: "opened in the last 90 days", "last bounce", "soft bounces" of a contact, humans only or not.
            models.Index(fields=["contact", "type", "machine", "created_at"], name="event_contact_activity_idx"),
            # The dashboard's latest bounces and complaints: a few rows among millions of opens and clicks.
            models.Index(fields=["-created_at"], condition=models.Q(type__in=["bounce", "complaint"]),
                         name="event_feedback_recent_idx"),
            # Who clicked a link: a person's clicks on one link in time order, a page of first clicks at a time.
            models.Index(fields=["campaign", "link_index", "created_at"], condition=models.Q(type="click", machine=False),
                         name="event_link_clicks_idx"),
        ]

    def __str__(self):
        return f"{self.type} {self.email}"


class Engagement(models.Model):
    """A contact's latest open and click, kept by the database itself from the events (a trigger on Event).

    Segments ask "opened anything in the last 90 days" of a million contacts at
    once: one row per contact answers that with a scan of this table, where the
    events would need a probe per contact. The trigger runs for every way an
    event arrives (the open and click fast paths, webhooks, the ORM) and
    recomputes a contact's row when an event's time, type or machine flag
    changes (a burst of clicks found to be a link scanner's after the fact).
    An open is an open or a click: a person who clicked saw the message.
    """

    contact = models.OneToOneField(Contact, on_delete=models.CASCADE, primary_key=True, related_name="engagement",
                                   db_constraint=False)
    last_open_at = models.DateTimeField(null=True, blank=True, help_text="A person's latest open or click.")
    last_click_at = models.DateTimeField(null=True, blank=True, help_text="A person's latest click.")
    last_open_any_at = models.DateTimeField(null=True, blank=True, help_text="Machines' opens and clicks too.")
    last_click_any_at = models.DateTimeField(null=True, blank=True, help_text="Machines' clicks too.")

    def __str__(self):
        return f"engagement of contact {self.contact_id}"


class CampaignStatistics(Campaign):
    """A campaign seen through its numbers: the admin's statistics pages (no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "campaign statistics"
        verbose_name_plural = "campaign statistics"


class BreakerTrip(models.Model):
    """The circuit breaker paused a campaign: the figures that tripped it, and who acknowledged them.

    One row per campaign paused: a trip of a sending domain's breaker pauses
    each running campaign from that domain, and each needs its own acknowledgement.
    """

    class Scope(models.TextChoices):
        CAMPAIGN = "campaign"
        DOMAIN = "domain", "sending domain"

    class Metric(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", "hard bounces"
        COMPLAINT = "complaint", "complaints"
        POLICY = "policy", "policy blocks"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="breaker_trips")
    scope = models.CharField(max_length=8, choices=Scope.choices)
    domain = models.CharField(max_length=255, blank=True, default="", help_text="The From domain.")
    metric = models.CharField(max_length=16, choices=Metric.choices)
    provider = models.CharField(max_length=255, blank=True, default="", help_text="For policy blocks: the provider group.")
    count = models.PositiveIntegerField()
    base = models.PositiveIntegerField(help_text="The sample the rate is of: attempts, or deliveries for complaints.")
    rate = models.FloatField()
    threshold = models.FloatField(help_text="Percent.")
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["campaign", "acknowledged_at"], name="breaker_campaign_ack_idx")]

    def __str__(self):
        return self.reason[:100]


class Tally(models.Model):
    """A campaign's figures, counted as its sends and events are written: the statistics read these rows.

    Triggers on Send and Event (tracking/rollups.py says which figure each
    metric holds) add their changes, +n or -n, to tracking_tallydelta, a
    table of the migration's own without a key, so that writers never wait
    for one another on a campaign's counters; a periodic task folds them into
    these rows, one per key. A figure is its row here plus its changes not
    folded yet. ``rebuild_tallies`` counts them afresh from the sends and events.
    """

    id = models.BigAutoField(primary_key=True)
    # None: mail without a campaign (submitted, transactional), counted for the sends per hour only.
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, null=True, related_name="+", db_constraint=False,
                                 db_index=False)
    metric = models.CharField(max_length=32)
    # The recipient domain for the figures by domain; for a relay's, the send status.
    domain = models.CharField(max_length=255, default="", db_default="")
    # The send status, the link index, the relay or the timeline's series.
    key = models.CharField(max_length=64, default="", db_default="")
    # The timeline's minute (UTC).
    at = models.DateTimeField(null=True)
    n = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["metric", "at"], name="tally_metric_at_idx")]
        constraints = [models.UniqueConstraint(fields=["campaign", "metric", "domain", "key", "at"],
                                               nulls_distinct=False, name="tally_key")]

    def __str__(self):
        return f"{self.metric} {self.domain} {self.key} {self.n}"


class SendMark(models.Model):
    """What a send's events have shown so far, for counting people rather than events: one bit per figure
    (tracking/rollups.py's MARKS) on ``link`` -1, and a row per link a person clicked. The Event trigger sets
    a bit under this row's lock, and counts the figure once when it was not set yet."""

    pk = models.CompositePrimaryKey("send_id", "link")
    send_id = models.BigIntegerField()
    link = models.IntegerField()
    bits = models.IntegerField(default=0)

    def __str__(self):
        return f"send {self.send_id} link {self.link}: {self.bits}"
