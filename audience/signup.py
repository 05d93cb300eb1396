"""Signing up through a form, and confirming: the audience grows only with evidence of consent.

A signup subscribes the address to the form's lists with its evidence (when,
from which address and user agent, the consent text and form version shown).
On a single opt-in list it is mailable at once; on a double opt-in list it
stays unconfirmed, and so unmailed, until the person confirms through the
link mailed to them. A repeated signup re-sends that mail at most once per
HERALD_CONFIRM_RESEND_SECONDS. Whatever the address's state (new, subscribed,
unsubscribed, blocklisted), the visitor sees the same page: a form must not
tell strangers who is on a list.
"""

import hashlib
import json
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audience import mail, tokens
from audience.models import SignupForm
from audience.texts import texts
from campaigns.models import Contact, MailingList, Subscription, email_key
from campaigns.rendering import ContactData
from delivery.throttle import client as redis_client

log = logging.getLogger(__name__)


@dataclass
class Signup:
    email: str
    first_name: str = ""
    last_name: str = ""
    attributes: dict = field(default_factory=dict)
    list_ids: list = field(default_factory=list)
    ip: str | None = None
    user_agent: str = ""


@dataclass
class Outcome:
    contact_id: int | None
    subscribed: list  # list ids mailable now
    pending: list  # list ids waiting for confirmation
    mailed: bool


def _hashed(text: str) -> str:
    return hashlib.sha256(f"{settings.SECRET_KEY}:{text}".encode()).hexdigest()[:32]


def over_limit(ip: str | None, address: str) -> bool:
    """Count this signup against its IP address and its email address (fixed windows of an hour); True when over.

    Keys hold hashes, not addresses: nothing personal lingers in Redis.
    """
    window = 3600
    pipe = redis_client().pipeline(transaction=False)
    ip_key = f"herald:signup:ip:{_hashed(ip or '-')}"
    addr_key = f"herald:signup:addr:{_hashed(email_key(address))}"
    pipe.incr(ip_key)
    pipe.expire(ip_key, window, nx=True)
    pipe.incr(addr_key)
    pipe.expire(addr_key, window, nx=True)
    by_ip, _, by_address, _ = pipe.execute()
    return by_ip > settings.HERALD_SIGNUP_LIMIT_PER_IP or by_address > settings.HERALD_SIGNUP_LIMIT_PER_ADDRESS


def _may_mail_again(contact_id: int, form_id: int) -> bool:
    key = f"herald:signup:mailed:{contact_id}:{form_id}"
    return bool(redis_client().set(key, 1, nx=True, ex=settings.HERALD_CONFIRM_RESEND_SECONDS))


_INSERT_CONTACT = (
    "INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, "
    "updated_at) VALUES (%s, %s, %s, %s, %s::jsonb, 'active', %s, %s) ON CONFLICT (email_key) DO NOTHING RETURNING id"
)


def _contact(data: Signup, now):
    """(id, status, is new) of the address's contact, created when missing; an existing one is left as it is."""
    key = email_key(data.email)
    sql = _INSERT_CONTACT.replace("%s::jsonb", "%s") if connection.vendor != "postgresql" else _INSERT_CONTACT
    with connection.cursor() as cur:
        cur.execute(
            sql,
            [data.email.strip(), key, data.first_name[:200], data.last_name[:200], json.dumps(data.attributes), now, now],
        )
        row = cur.fetchone()
        if row is not None:
            return row[0], Contact.Status.ACTIVE, True
        cur.execute("SELECT id, status FROM campaigns_contact WHERE email_key = %s", [key])
        found = cur.fetchone()
        return found[0], found[1], False


def sign_up(form: SignupForm, optins: dict, data: Signup, names: dict | None = None) -> Outcome:
    """Subscribe ``data`` to ``optins`` ({list id: optin}) of ``form`` and mail a confirmation where one is due.

    ``names``: the lists' names by id, when the caller has them already.
    """
    now = timezone.now()
    evidence = {
        "source": Subscription.Source.FORM, "source_detail": f"form {form.slug} v{form.version}"[:200],
        "consent_ip": data.ip, "consent_user_agent": data.user_agent[:1000], "consent_text": form.consent_text,
    }
    with transaction.atomic():
        contact_id, status, new = _contact(data, now)
        if status == Contact.Status.BLOCKLISTED:
            return Outcome(contact_id, [], [], False)
        existing = {} if new else dict(
            Subscription.objects.filter(contact_id=contact_id, mailing_list_id__in=list(optins))
            .values_list("mailing_list_id", "status"))
        double = {pk for pk, optin in optins.items() if optin == MailingList.OptIn.DOUBLE}
        # An address that unsubscribed comes back only by confirming: anyone can type it into a form.
        must_confirm = status == Contact.Status.UNSUBSCRIBED
        rows, pending, subscribed = [], [], []
        for pk in optins:
            state = existing.get(pk)
            if state is None:
                waits = pk in double or must_confirm
                rows.append(Subscription(
                    contact_id=contact_id, mailing_list_id=pk, created_at=now, updated_at=now,
                    status=Subscription.Status.UNCONFIRMED if waits else Subscription.Status.CONFIRMED,
                    confirmed_at=None if waits else now, **evidence))
                (pending if waits else subscribed).append(pk)
            elif state == Subscription.Status.UNSUBSCRIBED or (state == Subscription.Status.UNCONFIRMED and pk in double):
                pending.append(pk)
            elif must_confirm:
                pending.append(pk)
        if rows:
            Subscription.objects.bulk_create(rows, ignore_conflicts=True)
        refreshed = [pk for pk in pending if existing.get(pk) == Subscription.Status.UNCONFIRMED]
        if refreshed:
            # The latest signup's evidence is what a confirmation confirms.
            Subscription.objects.filter(contact_id=contact_id, mailing_list_id__in=refreshed).update(
                updated_at=now, **evidence)
        mailed = bool(pending) and _may_mail_again(contact_id, form.pk)
        if mailed:
            _mail_confirmation(form, contact_id, data, pending, names)
    return Outcome(contact_id, subscribed, pending, mailed)


def _mail_confirmation(form, contact_id, data: Signup, list_ids, names=None):
    words = texts(form.language)
    if names is None:
        names = dict(MailingList.objects.filter(pk__in=list_ids).values_list("pk", "name"))
    names = ", ".join(sorted(names[pk] for pk in list_ids if pk in names))
    url = f"{settings.HERALD_BASE_URL}/s/c/{tokens.confirm_token(contact_id, form.pk, list_ids)}/"
    context = {"contact": ContactData(data.email, data.first_name, data.last_name, data.attributes),
               "confirm_url": url, "lists": names, "form": {"name": form.name}}
    subject = mail.render_text(form.confirm_subject or words["confirm_subject"], **context)
    body = mail.render_text(form.confirm_body or words["confirm_body"], **context)
    mail.send(form.from_email, form.from_name, data.email.strip(), subject, body, tag="signup-confirmation")


class LinkExpired(Exception):
    pass


def confirm(token: str):
    """Confirm the subscriptions a confirmation link names; returns the contact, or None for a bad link.

    Idempotent: a second POST changes nothing. A list the person unsubscribed
    from is resubscribed through Subscription.resubscribe, with the link as
    the evidence.
    """
    from django.core import signing

    try:
        read = tokens.read_confirm_token(token)
    except signing.SignatureExpired:
        raise LinkExpired from None
    if read is None:
        return None
    contact_id, form_id, list_ids = read
    contact = Contact.objects.filter(pk=contact_id).first()
    if contact is None:
        return None
    now = timezone.now()
    with transaction.atomic():
        subs = list(Subscription.objects.select_for_update().select_related("mailing_list", "contact")
                    .filter(contact_id=contact_id, mailing_list_id__in=list_ids))
        for sub in subs:
            if sub.status == Subscription.Status.UNCONFIRMED:
                Subscription.objects.filter(pk=sub.pk).update(status=Subscription.Status.CONFIRMED, confirmed_at=now,
                                                              updated_at=now)
            elif sub.status == Subscription.Status.UNSUBSCRIBED:
                sub.resubscribe(None, f"confirmed a signup (form {form_id}) by the mailed link")
                Subscription.objects.filter(pk=sub.pk).update(confirmed_at=now)
        Contact.objects.filter(pk=contact_id, status=Contact.Status.UNSUBSCRIBED).update(status=Contact.Status.ACTIVE)
    return contact
