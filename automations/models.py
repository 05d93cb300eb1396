"""Automations (a trigger and an ordered list of steps), who is enrolled where, and the messages steps send."""

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from campaigns.models import Contact, MailingList, Segment, Template
from delivery.models import Send


class MessageTemplate(models.Model):
    """An email made from a template: what an automation's email step and a transactional send render.

    Jinja2 sees ``contact`` and ``data`` (the trigger's payload, or the data posted with a transactional send).
    """

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    subject = models.CharField(max_length=998)
    from_name = models.CharField(max_length=200, blank=True, default="")
    from_email = models.CharField(max_length=320)
    reply_to = models.CharField(max_length=320, blank=True, default="")
    html_body = models.TextField(blank=True, default="")
    text_body = models.TextField(blank=True, default="", help_text="Blank: derived from the HTML.")
    layout = models.ForeignKey(Template, on_delete=models.PROTECT, null=True, blank=True,
                               help_text="A layout with {{ content }} where the body goes.")
    track = models.BooleanField(default=True, help_text="Rewrite links and add an open pixel.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        from automations.compose import check

        problems = check(self)
        if problems:
            raise ValidationError(problems)


class Automation(models.Model):
    class Trigger(models.TextChoices):
        SUBSCRIBED = "subscribed", "Subscribed to a list (after confirmation)"
        SEGMENT = "segment", "Entered a segment"
        DATE = "date", "A date attribute is reached"
        CLICKED = "clicked", "Clicked a link"
        EVENT = "event", "A custom event was posted"
        MANUAL = "manual", "Enrolled by an operator"

    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        PAUSED = "paused"

    class Reentry(models.TextChoices):
        ONCE = "once", "Once ever"
        INTERVAL = "interval", "Once per N days"
        ALWAYS = "always", "Every time"

    name = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    trigger = models.CharField(max_length=12, choices=Trigger.choices)
    mailing_list = models.ForeignKey(MailingList, on_delete=models.PROTECT, null=True, blank=True,
                                     help_text="Subscribed trigger: the list.")
    segment = models.ForeignKey(Segment, on_delete=models.PROTECT, null=True, blank=True,
                                help_text="Segment trigger: the segment.")
    date_attribute = models.CharField(max_length=100, blank=True, default="",
                                      help_text="Date trigger: the contact attribute holding a date (YYYY-MM-DD).")
    date_yearly = models.BooleanField(default=True, help_text="Date trigger: every year on the day (a birthday), "
                                                              "or only once on the date itself.")
    date_hour = models.PositiveSmallIntegerField(default=9, help_text="Date trigger: the hour, in the contact's "
                                                                      "time zone (attribute ``timezone``).")
    link_url = models.CharField(max_length=2000, blank=True, default="", help_text="Clicked trigger: the link.")
    event_name = models.CharField(max_length=100, blank=True, default="", help_text="Event trigger: its name.")
    reentry = models.CharField(max_length=8, choices=Reentry.choices, default=Reentry.ONCE)
    reentry_days = models.PositiveIntegerField(default=30, help_text="For once per N days.")
    # Steps are edited in place; when contacts are on the way, their steps are
    # kept under the old number and the automation moves to a new one.
    version = models.PositiveIntegerField(default=1, editable=False)
    # Polling triggers (subscribed, clicked) look at what happened after this.
    watermark = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        # Polled triggers count from activation: the list's past subscribers are not welcomed.
        if self.status != self.Status.DRAFT and self.watermark is None:
            self.watermark = timezone.now()
        super().save(*args, **kwargs)

    def clean(self):
        needs = {self.Trigger.SUBSCRIBED: "mailing_list", self.Trigger.SEGMENT: "segment",
                 self.Trigger.DATE: "date_attribute", self.Trigger.CLICKED: "link_url", self.Trigger.EVENT: "event_name"}
        name = needs.get(self.trigger)
        if name and not getattr(self, name if name in ("date_attribute", "link_url", "event_name") else f"{name}_id"):
            raise ValidationError({name: f"the {self.get_trigger_display().lower()} trigger needs this"})

    def current_steps(self):
        return self.steps.filter(version=self.version).order_by("position", "pk")


class Step(models.Model):
    class Kind(models.TextChoices):
        EMAIL = "email", "Send an email"
        WAIT = "wait", "Wait"
        BRANCH = "branch", "Branch on a condition"
        UPDATE = "update", "Update the contact"
        END = "end", "End"

    class Condition(models.TextChoices):
        OPENED = "opened", "Opened the previous email"
        CLICKED = "clicked", "Clicked in the previous email"
        RULES = "rules", "Matches rules (segment, attribute…)"

    automation = models.ForeignKey(Automation, on_delete=models.CASCADE, related_name="steps")
    version = models.PositiveIntegerField(default=1)
    position = models.PositiveIntegerField(default=0, help_text="Steps run from the lowest position up.")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    template = models.ForeignKey(MessageTemplate, on_delete=models.PROTECT, null=True, blank=True)
    wait_seconds = models.PositiveIntegerField(default=0, help_text="Wait: how long.")
    wait_weekday = models.PositiveSmallIntegerField(null=True, blank=True,
                                                    help_text="Wait until this weekday (0 Monday … 6 Sunday) …")
    wait_time = models.TimeField(null=True, blank=True, help_text="… and this time of day, in the contact's zone.")
    condition = models.CharField(max_length=8, choices=Condition.choices, blank=True, default="")
    rules = models.JSONField(default=dict, blank=True, help_text="Branch on rules: a segment rule tree.")
    else_position = models.PositiveIntegerField(null=True, blank=True,
                                                help_text="Branch: where contacts go when the condition fails "
                                                          "(blank: they leave).")
    update = models.JSONField(default=dict, blank=True,
                              help_text='Update: {"set": {"attribute": value}, "add_list": id, "remove_list": id}.')
    # Statistics: contacts who reached this step, and who left the automation at it.
    entered = models.PositiveIntegerField(default=0, editable=False)
    exited = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["automation", "version", "position", "pk"]
        indexes = [models.Index(fields=["automation", "version", "position"], name="step_version_position_idx")]

    def __str__(self):
        return f"{self.position}. {self.get_kind_display()}"

    def clean(self):
        if self.kind == self.Kind.EMAIL and not self.template_id:
            raise ValidationError({"template": "an email step needs a template"})
        if self.kind == self.Kind.BRANCH and not self.condition:
            raise ValidationError({"condition": "a branch needs a condition"})
        if self.kind == self.Kind.BRANCH and self.condition == self.Condition.RULES:
            from segments.rules import validate

            try:
                validate(self.rules)
            except Exception as exc:  # the validator's message names the rule
                raise ValidationError({"rules": str(exc)}) from None
        if self.kind == self.Kind.BRANCH and self.else_position is not None and self.else_position <= self.position:
            raise ValidationError({"else_position": "a branch may only jump forward, to a later position"})
        if self.kind == self.Kind.WAIT and not self.wait_seconds and self.wait_time is None:
            raise ValidationError({"wait_seconds": "a wait needs a duration or a time of day"})


class Enrolment(models.Model):
    """One contact on the way through one automation: the step they are at, and when it is due."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        DONE = "done"
        EXITED = "exited"

    # Indexed by the unique (automation, contact, occurrence): an index of its own would only slow the sweep's writes.
    automation = models.ForeignKey(Automation, on_delete=models.CASCADE, related_name="enrolments", db_index=False)
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="enrolments", db_index=False)
    # The nth time this contact entered this automation: part of every message's idempotency key.
    occurrence = models.PositiveIntegerField(default=1)
    # What entered them (a subscription, a click, an event): the same happening never enrols twice.
    trigger_key = models.CharField(max_length=100, blank=True, default="")
    version = models.PositiveIntegerField()
    position = models.PositiveIntegerField(default=0, help_text="The position of the next step to run.")
    due_at = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    reason = models.CharField(max_length=200, blank=True, default="")
    payload = models.JSONField(default=dict, blank=True)
    entered_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["automation", "contact", "occurrence"], name="enrolment_occurrence_unique"),
            models.UniqueConstraint(fields=["automation", "contact", "trigger_key"], condition=~models.Q(trigger_key=""),
                                    name="enrolment_trigger_unique"),
        ]
        indexes = [
            # The sweep's claim: only active rows are in it.
            models.Index(fields=["due_at"], condition=models.Q(status="active"), name="enrolment_due_idx"),
            models.Index(fields=["contact"], name="enrolment_contact_idx"),
        ]

    def __str__(self):
        return f"{self.contact_id} in {self.automation_id} at {self.position} ({self.status})"


class Message(models.Model):
    """The Send of one email step for one enrolment: its idempotency key, and what renders it.

    (automation, step, contact, occurrence) is unique: a repeated tick or a
    worker killed after the commit finds the row and sends nothing more.
    """

    # No foreign-key constraints in the database, by choice: PostgreSQL checks
    # each with a trigger per inserted row, and the sweep inserts these (and
    # their Sends) by the thousand in one statement. Only the sweep writes
    # them, with ids it has just read; deletions cascade through the ORM.
    automation = models.ForeignKey(Automation, on_delete=models.CASCADE, related_name="messages", db_index=False,
                                   db_constraint=False)
    step = models.ForeignKey(Step, on_delete=models.PROTECT, related_name="messages", db_index=False,
                             db_constraint=False)
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+", db_index=False,
                                db_constraint=False)
    occurrence = models.PositiveIntegerField()
    send = models.OneToOneField(Send, on_delete=models.CASCADE, related_name="automation_message", db_constraint=False)
    template = models.ForeignKey(MessageTemplate, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["automation", "step", "contact", "occurrence"],
                                    name="automation_message_once"),
        ]
        # Statistics and "the previous email" of a branch read by automation first: the unique index serves them.
        indexes = [models.Index(fields=["contact", "automation", "occurrence"], name="automation_message_contact_idx")]

    def __str__(self):
        return f"step {self.step_id} to {self.contact_id} (#{self.occurrence})"


class ContactEvent(models.Model):
    """A custom event posted for a contact (``purchase`` with its JSON): triggers automations of its name."""

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="custom_events")
    name = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} for {self.contact_id}"


class TransactionalSend(models.Model):
    """A message sent through ``POST /transactional``: a repeated Idempotency-Key returns this and sends nothing."""

    key = models.CharField(max_length=255)
    user_id = models.BigIntegerField(help_text="Keys are per API user.")
    template = models.ForeignKey(MessageTemplate, on_delete=models.PROTECT, related_name="+")
    to = models.CharField(max_length=320)
    outbound_id = models.BigIntegerField(null=True, blank=True)
    send_ids = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user_id", "key"], name="transactional_key_unique")]

    def __str__(self):
        return f"{self.key} to {self.to}"
