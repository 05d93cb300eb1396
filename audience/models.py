"""Signup forms: which lists a visitor joins, what they are asked and what they are told."""

import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from campaigns.models import MailingList

FIELD_TYPES = ("text", "number", "date", "checkbox")
# Fields a form may ask besides the address; anything else is a contact attribute.
NAME_FIELDS = ("first_name", "last_name")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def validate_fields(value):
    """``[{"name", "label", "type", "required", "editable"}]``: checked when the operator saves the form."""
    if not isinstance(value, list):
        raise ValidationError("A list of fields, e.g. [{\"name\": \"first_name\", \"label\": \"First name\"}].")
    seen = set()
    for n, item in enumerate(value, 1):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValidationError(f"Field {n}: an object with at least a name.")
        name = item["name"]
        if not _FIELD_NAME.match(name) or name in ("email", "lists", "website", "ts"):
            raise ValidationError(f"Field {n}: {name!r} is not a usable name (lower-case letters, digits, _).")
        if name in seen:
            raise ValidationError(f"Field {n}: {name!r} is named twice.")
        seen.add(name)
        if item.get("type", "text") not in FIELD_TYPES:
            raise ValidationError(f"Field {n}: type must be one of {', '.join(FIELD_TYPES)}.")
        unknown = set(item) - {"name", "label", "type", "required", "editable"}
        if unknown:
            raise ValidationError(f"Field {n}: unknown keys {', '.join(sorted(unknown))}.")


def redirect_allowed(url: str) -> bool:
    """Whether a thank-you redirect goes to a host on the operator's allow-list (HERALD_SIGNUP_REDIRECT_HOSTS)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme in ("http", "https") and bool(host) and host in settings.HERALD_SIGNUP_REDIRECT_HOSTS


class SignupForm(models.Model):
    class Language(models.TextChoices):
        EN = "en", "English"
        DE = "de", "Deutsch"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True, help_text="The hosted page is /s/<slug>/.")
    enabled = models.BooleanField(default=True)
    lists = models.ManyToManyField(MailingList, related_name="signup_forms")
    subscriber_chooses = models.BooleanField(
        default=False, help_text="Show the lists as checkboxes; otherwise the visitor joins all of them.")
    fields = models.JSONField(
        default=list, blank=True, validators=[validate_fields],
        help_text='Besides the address, e.g. [{"name": "first_name", "label": "First name", "required": true}, '
                  '{"name": "city", "type": "text", "editable": true}]. Names other than first_name and last_name '
                  'are attributes; "editable" ones can be changed in the preference centre.')
    consent_text = models.TextField(help_text="Shown above the button and kept, word for word, with every signup.")
    language = models.CharField(max_length=2, choices=Language.choices, default=Language.EN)
    thank_you_text = models.TextField(blank=True, default="", help_text="Shown after signing up; empty for the default.")
    redirect_url = models.URLField(
        blank=True, default="", help_text="Instead of the thank-you page; its host must be in HERALD_SIGNUP_REDIRECT_HOSTS.")
    from_email = models.CharField(max_length=320, help_text="Sender of the confirmation mail.")
    from_name = models.CharField(max_length=200, blank=True, default="")
    confirm_subject = models.CharField(max_length=300, blank=True, default="",
                                       help_text="Empty for the default of the form's language.")
    confirm_body = models.TextField(
        blank=True, default="",
        help_text="Jinja2 text with {{ confirm_url }}, {{ lists }} and {{ contact.first_name }}; must contain "
                  "{{ confirm_url }}. Empty for the default of the form's language.")
    # Bumped when what a visitor is shown changes, so each signup records the version it consented to.
    version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    SHOWN = ("consent_text", "fields", "subscriber_chooses", "language")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        if self.pk:
            before = SignupForm.objects.filter(pk=self.pk).values(*self.SHOWN).first()
            if before and any(before[name] != getattr(self, name) for name in self.SHOWN):
                self.version += 1
        super().save(*args, **kwargs)

    def clean(self):
        if self.redirect_url and not redirect_allowed(self.redirect_url):
            raise ValidationError({"redirect_url": "Its host is not in HERALD_SIGNUP_REDIRECT_HOSTS."})
        if self.confirm_body and "confirm_url" not in self.confirm_body:
            raise ValidationError({"confirm_body": "The confirmation mail must contain {{ confirm_url }}."})
        if self.confirm_body:
            from audience.mail import check_template

            problem = check_template(self.confirm_body)
            if problem:
                raise ValidationError({"confirm_body": problem})


class ConfirmationDue(models.Model):
    """A confirmation mail owed to a signup, stored with it in one transaction and sent by the engine's workers.

    The signup only records that the mail is due; a worker renders and stores
    these in batches (audience.confirmations) and deletes the rows it has
    stored, in the same transaction. No address is kept here: the mail goes to
    the contact as they are when it is sent, and an erased or purged contact
    takes its row with it.
    """

    contact = models.ForeignKey("campaigns.Contact", on_delete=models.CASCADE, related_name="+", db_constraint=False)
    form = models.ForeignKey(SignupForm, on_delete=models.CASCADE, related_name="+", db_constraint=False,
                             db_index=False)
    list_ids = models.JSONField(default=list)
    created_at = models.DateTimeField()

    def __str__(self):
        return f"confirmation for contact {self.contact_id} (form {self.form_id})"
