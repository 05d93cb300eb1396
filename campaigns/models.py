"""The audience and the content: who is mailed, and what they are sent."""

import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.html import escape
from email_validator import EmailNotValidError, validate_email

from campaigns import formats


def email_key(address: str) -> str:
    """The case-insensitive identity of an address: trimmed and lower-cased."""
    return address.strip().lower()


class Contact(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        UNSUBSCRIBED = "unsubscribed"
        BLOCKLISTED = "blocklisted"

    email = models.CharField(max_length=320, help_text="As given, trimmed.")
    # Lower-cased copy: the unique key that makes addresses case-insensitive and
    # lets imports upsert with one set-based statement. Unique through a
    # constraint rather than unique=True, which on PostgreSQL adds a second
    # (LIKE) index that every import would pay for.
    email_key = models.CharField(max_length=320, editable=False)
    first_name = models.CharField(max_length=200, blank=True, default="")
    last_name = models.CharField(max_length=200, blank=True, default="")
    attributes = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Set from the preference centre: no campaign mails the contact before this time.
    paused_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["email_key"], name="contact_email_key_unique")]
        # Nearly every contact is active: index only the others, which keeps the
        # index tiny and out of the way of million-row imports.
        indexes = [models.Index(fields=["status"], name="contact_inactive_idx", condition=~models.Q(status="active"))]

    def __str__(self):
        return self.email

    def save(self, *args, **kwargs):
        self.email = self.email.strip()
        self.email_key = email_key(self.email)
        super().save(*args, **kwargs)

    def clean(self):
        # Forms never see email_key, so the unique constraint would only show
        # up as a database error: check it here, on the field people type in.
        self.email = (self.email or "").strip()
        try:
            validate_email(self.email, check_deliverability=False)
        except EmailNotValidError as exc:
            raise ValidationError({"email": str(exc)}) from None
        other = Contact.objects.filter(email_key=email_key(self.email)).exclude(pk=self.pk).first()
        if other is not None:
            raise ValidationError({"email": f"Contact {other.pk} has this address already (addresses ignore case)."})

    @property
    def domain(self):
        return self.email_key.rpartition("@")[2]


class MailingList(models.Model):
    class OptIn(models.TextChoices):
        SINGLE = "single"
        DOUBLE = "double"

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True, default="")
    optin = models.CharField(max_length=8, choices=OptIn.choices, default=OptIn.SINGLE)
    public = models.BooleanField(default=False, db_default=False,
                                 help_text="Offered in the preference centre, where subscribers may join it.")
    default_timezone = models.CharField(
        max_length=64, blank=True, default="", db_default="",
        help_text="For local-time delivery: the time zone (e.g. Europe/Berlin) of subscribers with no timezone or "
                  "country attribute.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        self.default_timezone = (self.default_timezone or "").strip()
        if self.default_timezone and not is_time_zone(self.default_timezone):
            raise ValidationError({"default_timezone": f"{self.default_timezone!r} is not a time zone name such as "
                                                       "Europe/Berlin or America/New_York"})


def is_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone name (what a contact's ``timezone`` attribute should hold)."""
    from zoneinfo import available_timezones

    return name in available_timezones()


class Subscription(models.Model):
    class Status(models.TextChoices):
        UNCONFIRMED = "unconfirmed"
        CONFIRMED = "confirmed"
        UNSUBSCRIBED = "unsubscribed"

    class Source(models.TextChoices):
        FORM = "form"
        IMPORT = "import"
        API = "api"
        ADMIN = "admin"
        PREFERENCES = "preferences"

    # No foreign-key constraints in the database, by choice: PostgreSQL checks
    # them with a trigger per inserted row, which took a third of a million-row
    # import's time. Subscriptions are only written by the ORM and by the import,
    # which takes contact ids from the rows it has just upserted; deleting a
    # contact or a list cascades through the ORM (on_delete) as before.
    # Neither key gets an index of its own: the unique (contact, mailing_list)
    # constraint serves look-ups by contact (and the audience snapshot's
    # "subscribed to one of these lists"), the (mailing_list, status) index
    # serves counts and "contacts of a list". Every index more is paid per
    # imported row.
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="subscriptions", db_index=False,
                                db_constraint=False)
    mailing_list = models.ForeignKey(MailingList, on_delete=models.CASCADE, related_name="subscriptions", db_index=False,
                                     db_constraint=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CONFIRMED)
    # Evidence of the last resubscribe: an unsubscribe is reversed only on
    # purpose, by someone named, for a stated reason. Defaults live in the
    # database too, since the import inserts rows with SQL of its own.
    resubscribed_at = models.DateTimeField(null=True, blank=True)
    resubscribed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                        related_name="+", db_constraint=False, db_index=False)
    resubscribe_reason = models.TextField(blank=True, default="", db_default="")
    # Consent evidence: how the subscription came about, by whom, and what the
    # person was shown. A web signup keeps its address, user agent, the exact
    # consent text and the form's version; confirmed_at is when a double
    # opt-in was confirmed (or when an import or the API said it had been).
    source = models.CharField(max_length=16, choices=Source.choices, blank=True, default="", db_default="")
    source_detail = models.CharField(max_length=200, blank=True, default="", db_default="",
                                     help_text="Which form and version, import, user or API token.")
    consent_ip = models.GenericIPAddressField(null=True, blank=True)
    consent_user_agent = models.TextField(blank=True, default="", db_default="")
    consent_text = models.TextField(blank=True, default="", db_default="")
    confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contact", "mailing_list"], name="subscription_unique")]
        # Subscriber counts and "the contacts of a list" scan (list, status).
        indexes = [models.Index(fields=["mailing_list", "status"], name="subscription_list_status_idx")]

    def __str__(self):
        return f"{self.contact_id} in {self.mailing_list_id} ({self.status})"

    @property
    def is_unsubscribed(self) -> bool:
        return self.status == self.Status.UNSUBSCRIBED

    def resubscribe(self, by, reason: str) -> None:
        """Bring back a contact who unsubscribed from this list, recording who did it and why.

        The only way an unsubscribed row becomes a subscription again: editing
        a contact's lists, the admin and imports leave it unsubscribed. ``by``
        is the operator; the contact's own confirmed opt-in (a confirmation or
        preference-centre POST, once Herald has one) is meant to call this with
        ``by=None`` and its consent evidence as the reason. A contact who
        unsubscribed from everything becomes active again as well; a
        suppression, if any, stays until it is lifted on its own page.
        """
        from django.contrib.admin.models import CHANGE, LogEntry
        from django.contrib.contenttypes.models import ContentType
        from django.utils import timezone

        reason = reason.strip()
        if not reason:
            raise ValidationError({"reason": "Say why this contact is resubscribed."})
        self.status = self.Status.CONFIRMED
        self.resubscribed_at = timezone.now()
        self.resubscribed_by = by
        self.resubscribe_reason = reason
        self.save()
        Contact.objects.filter(pk=self.contact_id, status=Contact.Status.UNSUBSCRIBED).update(status=Contact.Status.ACTIVE)
        if by is not None:
            # Each resubscribe stays in the contact's history, not only the last one on the row.
            LogEntry.objects.create(
                user=by, content_type=ContentType.objects.get_for_model(Contact), object_id=str(self.contact_id),
                object_repr=str(self.contact)[:200], action_flag=CHANGE,
                change_message=f"Resubscribed to {self.mailing_list.name}: {reason}"[:2000],
            )


class Segment(models.Model):
    """A saved, named rule tree: who matches is worked out live, each time it is counted or sent to.

    The tree is JSON (groups of ``all``/``any``/``none`` over conditions); its
    checking and its SQL live in the segments app, which sees engagement events.
    """

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True, default="")
    rules = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Suppression(models.Model):
    """An address that no campaign may mail, whatever its subscriptions say."""

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce"
        SOFT_BOUNCE = "soft_bounce"
        COMPLAINT = "complaint"
        UNSUBSCRIBE = "unsubscribe"
        MANUAL = "manual"
        # The person's data was erased: email is empty and email_key a keyed hash of the address.
        ERASED = "erased"

    email = models.CharField(max_length=320)
    email_key = models.CharField(max_length=320, unique=True, editable=False)
    reason = models.CharField(max_length=16, choices=Reason.choices, default=Reason.MANUAL)
    detail = models.TextField(blank=True, default="")
    # The tracking Event that caused it; an id, not a key, since tracking sits
    # above campaigns.
    source_event_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.email} ({self.reason})"

    def save(self, *args, **kwargs):
        self.email = self.email.strip()
        self.email_key = email_key(self.email)
        super().save(*args, **kwargs)


class Import(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    class Mode(models.TextChoices):
        UPSERT = "upsert"
        SKIP_EXISTING = "skip-existing"

    mailing_list = models.ForeignKey(MailingList, on_delete=models.SET_NULL, null=True, blank=True)
    file = models.FileField(upload_to="imports/", blank=True)
    original_name = models.CharField(max_length=255, blank=True, default="")
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.UPSERT)
    # Only an explicit statement makes a double opt-in list's imported contacts mailable.
    confirmed = models.BooleanField(default=False, db_default=False,
                                    help_text="The people confirmed their subscription elsewhere (double opt-in lists).")
    delimiter = models.CharField(max_length=4, blank=True, default="")
    encoding = models.CharField(max_length=32, blank=True, default="")
    # {column index: target} as the operator set it in the preview, over what the header names say.
    mapping = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    rows_processed = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    invalid = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    error_report = models.FileField(upload_to="import-errors/", blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"import {self.pk} ({self.status})"


class BulkJob(models.Model):
    """One action on every contact a filter matched, done by a worker a chunk at a time (see campaigns.bulk)."""

    class Action(models.TextChoices):
        ADD_TO_LIST = "add_to_list", "add to list"
        REMOVE_FROM_LIST = "remove_from_list", "remove from list"
        UNSUBSCRIBE = "unsubscribe"
        BLOCKLIST = "blocklist"
        DELETE = "delete"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    action = models.CharField(max_length=20, choices=Action.choices)
    mailing_list = models.ForeignKey(MailingList, on_delete=models.CASCADE, null=True, blank=True)
    # The filter as the contact list had it: status, list, q (search words), or ids picked on one page.
    spec = models.JSONField(default=dict)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(default=0, help_text="Contacts matched when the job was created.")
    processed = models.PositiveIntegerField(default=0)
    upto = models.BigIntegerField(default=0, help_text="The highest contact id when the job was created.")
    cursor = models.BigIntegerField(default=0, help_text="Contacts up to this id are done.")
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "bulk contact job"

    def __str__(self):
        return f"{self.get_action_display()} ({self.processed} of {self.total})"

    @property
    def created_by_name(self) -> str:
        return self.created_by.get_username() if self.created_by_id else "system"

    @property
    def share(self) -> float:
        if self.status == self.Status.DONE:
            return 1.0
        return min(1.0, self.processed / self.total) if self.total else 0.0


def full_scope():
    return [ApiToken.FULL]


class ApiToken(models.Model):
    """A bearer token for the JSON API; only its SHA-256 is stored.

    A token acts as its user, narrowed by its scopes: ``*`` (all the user may do),
    ``read`` (every ``view_`` permission) or single permissions (``app.codename``).
    An expired or revoked token is refused like an unknown one.
    """

    FULL, READ = "*", "read"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=12, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=full_scope,
                              help_text='"*" for everything the user may do, "read" for read-only, or permissions '
                                        'such as "campaigns.view_campaign".')
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Refused from this time on; empty: never.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name="", scopes=(FULL,), expires_at=None):
        """Create a token and return (row, the token in clear: shown once)."""
        token = "hrld_" + secrets.token_urlsafe(32)
        row = cls.objects.create(user=user, name=name, prefix=token[:12], digest=cls.hash(token),
                                 scopes=list(scopes), expires_at=expires_at)
        from campaigns import audit

        audit.record("token.create", row, user=user.get_username(), scopes=row.scopes,
                     expires_at=expires_at.isoformat() if expires_at else None)
        return row, token

    def is_usable(self, now) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows(self, perm: str) -> bool:
        """Whether the scopes cover ``perm`` (``app_label.codename``); the user's own permissions still apply."""
        return (self.FULL in self.scopes or perm in self.scopes
                or (self.READ in self.scopes and perm.partition(".")[2].startswith("view_")))


class Template(models.Model):
    """A reusable layout: HTML with ``{{ content }}`` where the campaign body goes."""

    class Format(models.TextChoices):
        HTML = "html", "HTML"
        MARKDOWN = "markdown", "Markdown"
        MJML = "mjml", "MJML"

    name = models.CharField(max_length=200, unique=True)
    # The source's language; a campaign's body is written in its template's (campaigns.formats).
    format = models.CharField(max_length=10, choices=Format.choices, default=Format.HTML)
    html = models.TextField(help_text="Jinja2; {{ content }} marks where the campaign body goes.")
    text = models.TextField(blank=True, default="", help_text="Optional text layout; {{ content }} as above.")
    layout = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
                               limit_choices_to={"format__in": ["html", "mjml"]},
                               help_text="Markdown only: the HTML or MJML template its text goes into "
                                         "(the default layout when empty).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class FollowUp(models.TextChoices):
    NOT_OPENED = "not_opened", "did not open"
    NOT_CLICKED = "not_clicked", "did not click"
    CLICKED = "clicked", "clicked"


class WinnerMetric(models.TextChoices):
    OPENS = "opens", "human open rate"
    CLICKS = "clicks", "human click rate"
    CLICK_TO_OPEN = "click_to_open", "click-to-open rate"
    MANUAL = "manual", "manual choice"


class PassedZones(models.TextChoices):
    NOW = "now", "send at once"
    NEXT_DAY = "next_day", "send at that time the next day"


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        SCHEDULED = "scheduled"
        MISSED = "missed"
        # The audience is being snapshotted into Send rows by a worker; ``total`` counts them so far.
        STARTING = "starting"
        SENDING = "sending"
        PAUSED = "paused"
        FINISHED = "finished"
        CANCELLED = "cancelled"

    name = models.CharField(max_length=200)
    subject = models.CharField(max_length=998)
    from_name = models.CharField(max_length=200, blank=True, default="")
    from_email = models.CharField(max_length=320)
    reply_to = models.CharField(max_length=320, blank=True, default="")
    html_body = models.TextField(blank=True, default="")
    text_body = models.TextField(blank=True, default="")
    template = models.ForeignKey(Template, on_delete=models.PROTECT, null=True, blank=True)
    lists = models.ManyToManyField(MailingList, blank=True, related_name="campaigns")
    # The audience: contacts in any of the lists or segments, minus those in any
    # exclusion list or segment (and, at send time, minus suppressions).
    segments = models.ManyToManyField(Segment, blank=True, related_name="campaigns")
    exclude_lists = models.ManyToManyField(MailingList, blank=True, related_name="excluded_by",
                                           help_text="Nobody subscribed to these lists gets the campaign.")
    exclude_segments = models.ManyToManyField(Segment, blank=True, related_name="excluded_by",
                                              help_text="Nobody in these segments gets the campaign.")
    # A follow-up goes to some of another campaign's recipients, chosen by what they did with it.
    follow_up_of = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="follow_ups")
    follow_up_audience = models.CharField(max_length=16, choices=FollowUp.choices, blank=True, default="")
    follow_up_machine_opens = models.BooleanField(
        default=False, help_text="Count opens by privacy proxies and link scanners as opens.")
    follow_up_variant = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Only the recipients who got this variant of an A/B-tested original (1 = A).")
    not_before = models.DateTimeField(null=True, blank=True, help_text="It does not start sending before this time.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    status_reason = models.TextField(blank=True, default="", help_text="Why the campaign paused or failed.")
    scheduled_at = models.DateTimeField(null=True, blank=True, db_index=True)
    track_opens = models.BooleanField(default=True)
    track_clicks = models.BooleanField(default=True)
    # A/B test (with two or more variants): a share of the audience is split
    # evenly between the variants; after the wait the winner by the metric goes
    # to the rest. 100 % splits everyone, with no winner phase.
    test_share = models.PositiveSmallIntegerField(
        default=20, help_text="Percent of the audience that tests the variants; 100 splits everyone (no winner).")
    winner_metric = models.CharField(max_length=16, choices=WinnerMetric.choices, default=WinnerMetric.OPENS)
    winner_wait = models.DurationField(null=True, blank=True, help_text="How long the test runs, e.g. 04:00:00.")
    winner = models.PositiveSmallIntegerField(null=True, blank=True, editable=False,
                                              help_text="The variant the rest of the audience gets.")
    winner_chosen_at = models.DateTimeField(null=True, blank=True, editable=False)
    winner_reason = models.TextField(blank=True, default="", editable=False)
    # Local-time delivery: each recipient gets it at this time of day in their own time zone, on this date.
    local_date = models.DateField(null=True, blank=True, help_text="Local-time delivery: the date.")
    local_time = models.TimeField(null=True, blank=True, help_text="Local-time delivery: the time in each recipient's zone.")
    passed_zones = models.CharField(max_length=8, choices=PassedZones.choices, default=PassedZones.NOW,
                                    help_text="Zones where that time has already passed when the campaign starts.")
    quiet_start = models.TimeField(null=True, blank=True, help_text="Quiet hours (local): nothing is sent from …")
    quiet_end = models.TimeField(null=True, blank=True, help_text="… until this time; blank: the global setting.")
    # The release waves of a local-time (or quiet-hours) send: [{"at": iso, "zones": [...], "recipients": n}].
    waves = models.JSONField(default=list, blank=True, editable=False)
    # Recipients at snapshot time (while starting: those snapshotted so far).
    total = models.PositiveIntegerField(default=0)
    # The snapshot walks the contacts in id order, one committed chunk at a
    # time, so that a worker lost in the middle is resumed where it stopped:
    # contacts up to snapshot_upto (the highest id when the campaign started)
    # are the audience, those up to snapshot_cursor are done.
    snapshot_upto = models.BigIntegerField(null=True, blank=True, editable=False)
    snapshot_cursor = models.BigIntegerField(null=True, blank=True, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("send_campaign", "Can send, schedule, pause, resume and cancel campaigns")]

    def __str__(self):
        return self.name

    def has_audience(self) -> bool:
        """Whether it names anyone to send to: a list, a segment, or the campaign it follows up."""
        return self.follow_up_of_id is not None or self.lists.exists() or self.segments.exists()

    def unsubscribe_list_ids(self) -> list[int]:
        """The lists its unsubscribe link ends: its own, or for a follow-up those of the campaign it follows."""
        own = list(self.lists.values_list("id", flat=True))
        if own or self.follow_up_of_id is None:
            return own
        return self.follow_up_of.unsubscribe_list_ids()

    def targets_lists_only(self) -> bool:
        """Whether its audience is whole lists and nothing else (the snapshot's hand-written fast path)."""
        return (self.follow_up_of_id is None and not self.segments.exists() and not self.exclude_lists.exists()
                and not self.exclude_segments.exists())

    @property
    def snapshot_pending(self) -> bool:
        """Whether some of the audience is still to be snapshotted (a start paused, or its worker lost)."""
        return self.snapshot_upto is not None and (self.snapshot_cursor or 0) < self.snapshot_upto

    def freeze_content(self) -> "CampaignContent":
        """Keep what this campaign sends as it is now, layout included; the send reads only this copy."""
        layout = self.template if self.template_id else None
        copied = {name: getattr(self, name) for name in CampaignContent.COPIED}
        layout_html = layout.html if layout else None
        if layout is not None and layout.format != Template.Format.HTML:
            # Markdown and MJML are compiled here, once: the send renders the HTML (Jinja2 kept) per message.
            copied["html_body"], layout_html = formats.html_source_of(layout, self.html_body or ""), "{{ content }}"
        variants = [v.frozen() for v in self.variants.all()] if self.variants.count() >= 2 else []
        if layout is not None and layout.format != Template.Format.HTML:
            for variant in variants:  # a variant's own body is written in the layout's format too
                if variant.get("html_body"):
                    variant["html_body"] = formats.html_source_of(layout, variant["html_body"])
        frozen, _ = CampaignContent.objects.update_or_create(campaign=self, defaults={
            **copied, "template_html": layout_html, "template_text": layout.text if layout else None,
            "variants": variants,
        })
        return frozen

    def variant_numbers(self) -> list[int]:
        """The numbers of the variants it sends (frozen once started); [] when it is no A/B test."""
        try:
            return [v["number"] for v in self.frozen_content.variants]
        except CampaignContent.DoesNotExist:
            numbers = [v.number for v in self.variants.all()]
            return numbers if len(numbers) >= 2 else []

    @property
    def splits_everyone(self) -> bool:
        return self.test_share >= 100

    def as_sent(self, variant=None) -> "Campaign":
        """This campaign with the content frozen when it started: what its recipients get.

        A campaign that never started (a draft, or one sent before content was
        frozen) is its own current content. The copy is never saved.
        """
        try:
            frozen = self.frozen_content
        except CampaignContent.DoesNotExist:
            return self
        copy = Campaign(**{f.attname: getattr(self, f.attname) for f in self._meta.concrete_fields})
        for name in CampaignContent.COPIED:
            setattr(copy, name, getattr(frozen, name))
        copy.template_id = None
        if frozen.template_html is not None:
            copy.template = Template(pk=self.template_id or 0, name=f"layout of {self.name}"[:200],
                                     html=frozen.template_html, text=frozen.template_text or "")
        for frozen_variant in frozen.variants:
            if frozen_variant["number"] == variant:
                CampaignVariant.apply(copy, frozen_variant)
                copy.variant_number = variant
        return copy


class CampaignVariant(models.Model):
    """One version of an A/B tested campaign: what it changes of the campaign's subject, sender name or content.

    A blank field keeps the campaign's own. The number (1 for A, 2 for B …) is what Send rows and events record.
    """

    OVERRIDES = ("subject", "from_name", "html_body", "text_body")

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="variants")
    number = models.PositiveSmallIntegerField(help_text="1 for A, 2 for B, …")
    subject = models.CharField(max_length=998, blank=True, default="")
    preheader = models.CharField(max_length=300, blank=True, default="",
                                 help_text="The preview text inboxes show after the subject.")
    from_name = models.CharField(max_length=200, blank=True, default="")
    html_body = models.TextField(blank=True, default="")
    text_body = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["campaign", "number"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "number"], name="campaignvariant_unique"),
            models.CheckConstraint(condition=models.Q(number__gte=1, number__lte=5), name="campaignvariant_1_to_5"),
        ]

    def __str__(self):
        return f"variant {self.letter}"

    @property
    def letter(self) -> str:
        return variant_letter(self.number)

    def frozen(self) -> dict:
        return {"number": self.number, "preheader": self.preheader,
                **{name: getattr(self, name) for name in self.OVERRIDES}}

    @classmethod
    def apply(cls, campaign, frozen: dict) -> None:
        """Put a frozen variant's fields over the campaign's (an unsaved copy's); the preheader opens the HTML body."""
        for name in cls.OVERRIDES:
            if frozen.get(name):
                setattr(campaign, name, frozen[name])
        if frozen.get("preheader") and campaign.html_body:
            # Hidden in the message, shown by inboxes as the preview after the subject.
            campaign.html_body = ('<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">'
                                  f'{escape(frozen["preheader"])}</div>' + campaign.html_body)


def variant_letter(number) -> str:
    return "ABCDE"[number - 1] if number and 1 <= number <= 5 else "?"


class CampaignContent(models.Model):
    """What a campaign sends, frozen when it starts sending.

    Later edits of the campaign (refused while it sends, but a paused one may
    be reached by other means) or of its layout template change nothing that
    its remaining recipients get, and "view in browser" shows this copy.
    """

    COPIED = ("subject", "from_name", "from_email", "reply_to", "html_body", "text_body", "track_opens", "track_clicks")

    campaign = models.OneToOneField(Campaign, on_delete=models.CASCADE, primary_key=True, related_name="frozen_content")
    subject = models.CharField(max_length=998)
    from_name = models.CharField(max_length=200, blank=True, default="")
    from_email = models.CharField(max_length=320)
    reply_to = models.CharField(max_length=320, blank=True, default="")
    html_body = models.TextField(blank=True, default="")
    text_body = models.TextField(blank=True, default="")
    # The layout's own text, not a reference to it: null when the campaign had none.
    template_html = models.TextField(null=True, blank=True)
    template_text = models.TextField(null=True, blank=True)
    track_opens = models.BooleanField(default=True)
    track_clicks = models.BooleanField(default=True)
    # The A/B variants as they were: [{"number", "name", "subject", "preheader", "from_name", "html_body", "text_body"}].
    variants = models.JSONField(default=list, blank=True)
    frozen_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"content of campaign {self.campaign_id}"


class CampaignLink(models.Model):
    """A link the campaign contains; click tokens carry its index, never the URL."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="links")
    index = models.PositiveIntegerField()
    url = models.TextField()
    # A link whose URL has expressions stores its source and is rendered for the
    # send's contact at click time: one row per link of the content, not per recipient.
    personal = models.BooleanField(default=False)

    class Meta:
        ordering = ["campaign", "index"]
        constraints = [models.UniqueConstraint(fields=["campaign", "index"], name="campaignlink_unique")]

    def __str__(self):
        return self.url


class AuditEntry(models.Model):
    """One operator action that matters, kept for good: who did what to which object, when and from where.

    Append-only: rows are written through ``campaigns.audit.record`` and never changed or deleted
    (on PostgreSQL a trigger refuses UPDATE and DELETE as well).
    """

    at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor = models.CharField(max_length=150, blank=True, default="", editable=False,
                             help_text="User name; empty for the system (scheduler, command line, engine).")
    actor_id = models.IntegerField(null=True, blank=True, editable=False)
    via = models.CharField(max_length=10, editable=False)  # admin, api, system
    address = models.GenericIPAddressField(null=True, blank=True, editable=False)
    action = models.CharField(max_length=60, db_index=True, editable=False)  # e.g. campaign.pause
    object_type = models.CharField(max_length=60, blank=True, default="", editable=False)
    object_id = models.CharField(max_length=40, blank=True, default="", editable=False)
    object_repr = models.CharField(max_length=200, blank=True, default="", editable=False)
    detail = models.JSONField(default=dict, blank=True, editable=False)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor or 'system'} {self.action} {self.object_repr}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("the audit log is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("the audit log is append-only")


class OperatorProfile(models.Model):
    """An operator's own preferences in the admin: the time zone their pages show and take times in."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="herald_profile")
    time_zone = models.CharField(max_length=64, blank=True,
                                 help_text="An IANA zone such as Europe/Berlin; empty: the server's (TIME_ZONE).")

    def __str__(self):
        return f"{self.user}: {self.time_zone or 'default time zone'}"
