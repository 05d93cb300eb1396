"""The send engine's configuration and its ledger: one Send row per recipient."""

import ipaddress

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from campaigns.models import Campaign, Contact
from herald.fields import EncryptedTextField


class Period(models.TextChoices):
    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"


PERIOD_SECONDS = {Period.SECOND: 1, Period.MINUTE: 60, Period.HOUR: 3600}


class Relay(models.Model):
    class Security(models.TextChoices):
        NONE = "none", "None (plain SMTP)"
        STARTTLS = "starttls", "STARTTLS (required)"
        TLS = "tls", "Implicit TLS"

    name = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=587)
    security = models.CharField(max_length=8, choices=Security.choices, default=Security.STARTTLS)
    verify_certificate = models.BooleanField(default=True)
    username = models.CharField(max_length=255, blank=True, default="")
    password = EncryptedTextField(blank=True, default="")
    helo_name = models.CharField(max_length=255, blank=True, default="")
    max_connections = models.PositiveIntegerField(default=8, help_text="Across all workers.")
    messages_per_connection = models.PositiveIntegerField(default=1000)
    idle_timeout = models.PositiveIntegerField(default=30, help_text="Seconds.")
    rate = models.PositiveIntegerField(default=0, help_text="Messages per period; 0 means unlimited.")
    rate_period = models.CharField(max_length=8, choices=Period.choices, default=Period.SECOND)
    weight = models.PositiveIntegerField(
        default=1, help_text="This relay's share of its groups' messages, relative to the other relays' weights.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class RelayGroup(models.Model):
    """Where the messages a routing rule picks go: relays spread by weight, or direct to MX hosts.

    When a relay of the group is down its messages go to the group's other
    relays until it recovers. Direct delivery may send from a pool of source
    addresses, each with the HELO name its reverse DNS gives.
    """

    name = models.CharField(max_length=100, unique=True)
    relays = models.ManyToManyField(Relay, blank=True, related_name="groups")
    direct = models.BooleanField(default=False, help_text="Deliver straight to the recipients' MX hosts, not through relays.")
    sources = models.TextField(
        blank=True, default="",
        help_text="Direct delivery only: source addresses to send from, one per line, each followed by its HELO name "
                  "(which should be what its reverse DNS gives), e.g. 203.0.113.5 mail1.example.com. "
                  "Blank: the machine's own address.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def source_list(self) -> list[tuple[str, str]]:
        """[(address, HELO name)]; the HELO name is "" where none is given."""
        out = []
        for line in self.sources.splitlines():
            words = line.split()
            if words:
                out.append((words[0].strip("[]"), words[1] if len(words) > 1 else ""))
        return out

    def clean(self):
        for n, (address, _) in enumerate(self.source_list(), 1):
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValidationError({"sources": f"line {n}: {address!r} is not an IPv4 or IPv6 address"}) from None
        if self.sources.strip() and not self.direct:
            raise ValidationError({"sources": "source addresses apply to direct delivery only"})


class RoutingRule(models.Model):
    """Chooses a relay group for the messages it matches; rules are tried in order, the first match wins.

    A rule matches when every condition it sets holds; one with no condition
    is a default. With no rule at all, mail goes through the first enabled
    relay by name (the others standing by, in name order, when it is down),
    or direct when no relay is enabled.
    """

    class Kind(models.TextChoices):
        CAMPAIGN = "campaign"
        AUTOMATION = "automation"
        TRANSACTIONAL = "transactional"
        SUBMITTED = "submitted", "Submitted over SMTP"

    position = models.PositiveIntegerField(default=0, help_text="Rules are tried from the lowest position up.")
    from_domain = models.CharField(max_length=255, blank=True, default="",
                                   help_text="The sending domain (of the From address); blank: any.")
    kind = models.CharField(max_length=16, choices=Kind.choices, blank=True, default="", help_text="Blank: any.")
    provider = models.CharField(
        max_length=255, blank=True, default="",
        help_text="The recipient's provider group (e.g. google, microsoft: see provider rules) or domain; blank: any.")
    group = models.ForeignKey(RelayGroup, on_delete=models.CASCADE, related_name="rules")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "pk"]

    def __str__(self):
        conditions = [f"from {self.from_domain}" if self.from_domain else "", self.kind,
                      f"to {self.provider}" if self.provider else ""]
        return f"{' '.join(c for c in conditions if c) or 'everything else'} → {self.group}"

    def save(self, *args, **kwargs):
        self.from_domain = self.from_domain.strip().lower().lstrip("@")
        self.provider = self.provider.strip().lower()
        super().save(*args, **kwargs)


class DomainThrottle(models.Model):
    """A rate limit shared by one or more recipient domains."""

    name = models.CharField(max_length=100, unique=True)
    domains = models.TextField(blank=True, default="", help_text="Comma- or newline-separated domains sharing this limit.")
    is_default = models.BooleanField(default=False, help_text="Applies to every domain no other throttle names.")
    rate = models.PositiveIntegerField(default=10)
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.SECOND)
    burst = models.PositiveIntegerField(default=0, help_text="Bucket size; 0 means the rate itself.")
    max_connections = models.PositiveIntegerField(default=5)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True), name="one_default_throttle")
        ]

    def __str__(self):
        return self.name

    def domain_list(self):
        return [d.strip().lower() for d in self.domains.replace("\n", ",").split(",") if d.strip()]


class SendingDomain(models.Model):
    class Algorithm(models.TextChoices):
        RSA = "rsa-sha256", "RSA-SHA256"
        ED25519 = "ed25519-sha256", "Ed25519-SHA256 (RFC 8463)"

    domain = models.CharField(max_length=255, unique=True)
    selector = models.CharField(max_length=63, default="herald")
    algorithm = models.CharField(max_length=16, choices=Algorithm.choices, default=Algorithm.RSA)
    private_key = EncryptedTextField(blank=True, default="", help_text="PEM; never shown back.")
    public_key = models.TextField(blank=True, default="", editable=False, help_text="Base64, as published in DNS.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self):
        return self.domain


class Send(models.Model):
    """One recipient of one campaign: the unit that is claimed, sent and counted."""

    HOLD_NONE, HOLD_LOCAL_TIME, HOLD_WINNER = 0, 1, 2

    class Status(models.TextChoices):
        QUEUED = "queued"
        SENDING = "sending"
        SENT = "sent"
        DEFERRED = "deferred"
        BOUNCED = "bounced"
        FAILED = "failed"
        CANCELLED = "cancelled"
        SKIPPED = "skipped"

    # No index of its own: (campaign, status) and (campaign, contact) lead with it.
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, null=True, blank=True, related_name="sends", db_index=False
    )
    contact = models.ForeignKey(Contact, on_delete=models.SET_NULL, null=True, blank=True, related_name="sends")
    email = models.CharField(max_length=320)
    domain = models.CharField(max_length=255, help_text="Recipient domain, lower-cased.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Who holds a row in "sending": a fresh token per claim (every write back,
    # release and renewal names it, so a worker whose lease was taken over
    # changes nothing) and the worker process, whose heartbeat tells a dead
    # worker from a slow one.
    lease_token = models.BigIntegerField(null=True, blank=True)
    lease_owner = models.CharField(max_length=100, blank=True, default="", db_default="")
    # Claims since the last outcome or hand-back: a row that keeps killing its
    # worker (a poison message) fails after HERALD_SEND_MAX_CLAIMS of them.
    # Both have database defaults: the set-based INSERTs of the snapshot and of
    # submitted mail name only the columns they fill.
    claims = models.PositiveSmallIntegerField(default=0, db_default=0)
    # Queued for a reserved send slot further ahead than the broker should hold
    # tasks: no task carries the row until the due-retries tick hands it to the
    # broker shortly before next_attempt_at, its slot.
    parked = models.BooleanField(default=False, db_default=False)
    # A/B tests: the variant this recipient gets (1 for A …); null for a campaign
    # without variants, and for a recipient held for the winner until it is chosen.
    variant = models.PositiveSmallIntegerField(null=True, blank=True)
    # Why a parked row waits, when it is not for a reserved send slot: its local
    # time (a delivery wave or quiet hours; released at next_attempt_at) or the
    # A/B test's winner (released when the winner is chosen). A held row is
    # never claimed, and holds no throttle tokens.
    hold = models.PositiveSmallIntegerField(default=0, db_default=0)
    # Held for an A/B test's winner and given it: the rest of the audience, not the test (statistics compare the test).
    after_test = models.BooleanField(default=False, db_default=False)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    smtp_reply = models.TextField(blank=True, default="")
    message_id = models.CharField(max_length=255, blank=True, default="")
    relay = models.ForeignKey(Relay, on_delete=models.SET_NULL, null=True, blank=True)
    # For a message submitted over SMTP (no campaign): the id of its stored
    # OutboundMessage in the submission app.
    outbound_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "contact"], condition=models.Q(campaign__isnull=False), name="send_unique_per_campaign"
            )
        ]
        indexes = [
            models.Index(fields=["campaign", "status"], name="send_campaign_status_idx"),
            # Partial: a row leaves these indexes once it is final, so writing
            # back millions of "sent" rows does not maintain them.
            models.Index(fields=["next_attempt_at"], condition=models.Q(status__in=["queued", "deferred"]), name="send_due_idx"),
            models.Index(fields=["lease_expires_at"], condition=models.Q(status="sending"), name="send_lease_idx"),
            models.Index(fields=["next_attempt_at"], condition=models.Q(parked=True), name="send_parked_due_idx"),
            models.Index(fields=["campaign"], condition=models.Q(parked=True), name="send_parked_campaign_idx"),
            models.Index(fields=["email"], name="send_email_idx"),
            # Equality look-ups only (bounces and complaints by Message-ID), so
            # no LIKE index; campaign rows never carry an outbound id.
            models.Index(fields=["message_id"], name="send_message_id_idx"),
            models.Index(fields=["outbound_id"], condition=models.Q(outbound_id__isnull=False), name="send_outbound_idx"),
            # Submitted mail waiting to go, by domain: what a batch of it takes along (ledger.claim_companions).
            models.Index(fields=["domain", "id"], condition=models.Q(campaign__isnull=True, status="queued"),
                         name="send_submitted_queued_idx"),
        ]

    def __str__(self):
        return f"{self.email} ({self.status})"


class ProviderRule(models.Model):
    """MX host names that belong to one mailbox provider, so one limit holds across all its domains.

    Every Microsoft 365 tenant has an MX host of its own under
    ``mail.protection.outlook.com``, and Google Workspace domains list different
    subsets of Google's hosts: matched by suffix, they all count as one
    destination. Name the provider in a DomainThrottle's domains to limit it.
    """

    name = models.CharField(max_length=100, help_text="The throttle group, e.g. google or microsoft.")
    mx_suffix = models.CharField(
        max_length=255, unique=True, help_text="An MX host name or the domain its names end with, e.g. google.com."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "mx_suffix"]

    def __str__(self):
        return f"{self.name}: *.{self.mx_suffix}"

    def save(self, *args, **kwargs):
        self.clean()
        super().save(*args, **kwargs)

    def clean(self):
        # Before the uniqueness check: ".google.com" and "*.google.com" are "google.com".
        self.name = self.name.strip().lower()
        self.mx_suffix = self.mx_suffix.strip().lower().removeprefix("*").strip(".")


class Warmup(models.Model):
    """The warm-up schedule of one sending identity (today: a From domain): how much it may send per provider per day.

    Delivery reads the stage (delivery.warmup); tracking's daily step moves it
    (tracking.warmup), from the bounce and complaint rates of the day before.
    """

    class Preset(models.TextChoices):
        OFF = "off", "Off (no daily limit)"
        CONSERVATIVE = "conservative", "Conservative: 50 a day per provider, ×1.5 each good day"
        STANDARD = "standard", "Standard: 50 a day per provider, doubling each good day"
        AGGRESSIVE = "aggressive", "Aggressive: 200 a day per provider, ×3 each good day"

    identity = models.CharField(
        max_length=255, unique=True, help_text="The sending domain (the From address's domain), e.g. news.example.com.")
    preset = models.CharField(max_length=16, choices=Preset.choices, default=Preset.STANDARD)
    stage = models.PositiveSmallIntegerField(default=0, help_text="Days of growth so far (0: the first day's volume).")
    stepped_on = models.DateField(null=True, blank=True, help_text="The day of the last daily step.")
    reason = models.TextField(blank=True, default="", help_text="Why the last step advanced, held or stepped back.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["identity"]
        verbose_name = "warm-up schedule"

    def __str__(self):
        return f"{self.identity} ({self.preset})"

    def save(self, *args, **kwargs):
        self.identity = self.identity.strip().lower().rstrip(".")
        super().save(*args, **kwargs)


class WarmupStep(models.Model):
    """One daily step of a warm-up schedule, with the figures it was taken on."""

    class Action(models.TextChoices):
        ADVANCE = "advance", "Advanced"
        HOLD = "hold", "Held"
        BACK = "back", "Stepped back"
        COMPLETE = "complete", "Completed"

    warmup = models.ForeignKey(Warmup, on_delete=models.CASCADE, related_name="steps")
    day = models.DateField()
    action = models.CharField(max_length=8, choices=Action.choices)
    from_stage = models.PositiveSmallIntegerField()
    to_stage = models.PositiveSmallIntegerField()
    attempts = models.PositiveIntegerField(default=0)
    hard_bounces = models.PositiveIntegerField(default=0)
    complaints = models.PositiveIntegerField(default=0)
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-day", "-id"]
        constraints = [models.UniqueConstraint(fields=["warmup", "day"], name="one_warmup_step_per_day")]

    def __str__(self):
        return f"{self.warmup.identity} {self.day}: {self.action}"
