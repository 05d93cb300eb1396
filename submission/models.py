"""SMTP credentials for the submission server, and the messages it accepted."""

import re
import secrets

from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import ValidationError
from django.db import models

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$|^localhost$")


def parse_domains(text: str) -> list[str]:
    """Comma-, space- or newline-separated domains, lower-cased, duplicates dropped."""
    seen = []
    for item in re.split(r"[\s,]+", text or ""):
        item = item.strip().lower().rstrip(".")
        if item and item not in seen:
            seen.append(item)
    return seen


def _is_domain(name: str) -> bool:
    try:
        ascii_name = name if name.isascii() else name.encode("idna").decode()
    except UnicodeError:  # control characters and other code points IDNA refuses
        return False
    return bool(_DOMAIN.match(ascii_name))


def validate_domains(text: str):
    domains = parse_domains(text)
    if not domains:
        raise ValidationError("Name at least one sender domain, such as example.com.")
    bad = [d for d in domains if not _is_domain(d)]
    if bad:
        raise ValidationError(f"Not a domain name: {', '.join(bad)}")


class SmtpCredential(models.Model):
    """A login for the submission server. Only a hash of its secret is stored."""

    class Period(models.TextChoices):
        MINUTE = "minute"
        HOUR = "hour"
        DAY = "day"

    username = models.CharField(max_length=150, unique=True)
    secret_hash = models.CharField(max_length=255, editable=False)
    allowed_domains = models.TextField(
        validators=[validate_domains],
        help_text="Domains this login may send from (envelope sender and From header), comma- or newline-separated.",
    )
    rate_limit = models.PositiveIntegerField(default=0, help_text="Messages per period; 0 means unlimited.")
    rate_period = models.CharField(max_length=8, choices=Period.choices, default=Period.MINUTE)
    tracking = models.BooleanField(default=False, help_text="Rewrite links and add an open pixel.")
    default_tag = models.CharField(max_length=100, blank=True, default="", help_text="Used when a message has no X-Herald-Tag.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # The tables this app has had since it lived inside delivery: named here
        # so that moving or relabelling the app never moves the data.
        db_table = "submission_smtpcredential"
        ordering = ["username"]
        verbose_name = "SMTP credential"

    def __str__(self):
        return self.username

    def domain_list(self) -> list[str]:
        return parse_domains(self.allowed_domains)

    def set_new_secret(self) -> str:
        """Generate a secret, keep its hash, and return it in clear: it is shown once."""
        secret = secrets.token_urlsafe(24)
        self.secret_hash = make_password(secret)
        return secret

    def check_secret(self, secret: str) -> bool:
        return bool(self.secret_hash) and check_password(secret, self.secret_hash)


class OutboundMessage(models.Model):
    """A message accepted by the submission server, stored as received.

    The row and one Send per recipient are committed in one transaction before
    the client gets its 250, so an accepted message survives any crash.
    """

    credential = models.ForeignKey(SmtpCredential, on_delete=models.PROTECT, related_name="messages")
    mail_from = models.CharField(max_length=320, help_text="Envelope sender given by the client.")
    from_header = models.CharField(max_length=998, blank=True, default="")
    # The From header is data from the client and may be crafted so that a
    # naive reading finds another domain in it; this is the domain that was
    # parsed and checked against the credential at acceptance, and the only one
    # Herald will ever DKIM-sign the message for.
    from_domain = models.CharField(
        max_length=253, blank=True, default="",
        help_text="From domain checked against the credential at acceptance; the only domain the message is signed for.",
    )
    subject = models.CharField(max_length=998, blank=True, default="")
    # Message-ID and Date that the delivered copies carry: the client's, or
    # ours when it gave none, fixed at acceptance so every retry is the same message.
    message_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    raw = models.BinaryField(help_text="The message exactly as received (CRLF line endings).")
    size = models.PositiveIntegerField()
    recipients = models.PositiveIntegerField(default=0)
    tag = models.CharField(max_length=100, blank=True, default="", db_index=True)
    peer = models.CharField(max_length=64, blank=True, default="", help_text="Client address.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "submission_outboundmessage"
        ordering = ["-id"]
        indexes = [models.Index(fields=["credential", "-id"], name="outbound_credential_idx")]

    def __str__(self):
        return f"#{self.pk} from {self.mail_from}"
