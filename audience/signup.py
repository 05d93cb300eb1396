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

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audience import confirmations, tokens
from audience.models import ConfirmationDue, SignupForm
from campaigns.models import Contact, MailingList, Subscription, email_key
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


@dataclass
class Gate:
    """What Redis said about a signup before anything was written (see gate)."""

    over_limit: bool
    may_mail: bool | None  # the address's repeat window started now; None: not asked (no double opt-in list)
    woke: bool  # this signup claimed the wake-up of the confirmation sender: it publishes the task


def gate(ip: str | None, address: str, form_id: int, double: bool) -> Gate:
    """One round trip to Redis before a signup writes anything.

    It counts the signup against its IP address and its email address (fixed
    windows of an hour). For a form with a double opt-in list it also starts
    the address's repeat window for the confirmation mail (a repeated signup
    re-sends it at most once per HERALD_CONFIRM_RESEND_SECONDS) and claims the
    confirmation sender's wake-up (see audience.confirmations). Keys hold
    hashes, not addresses: nothing personal lingers in Redis.
    """
    window = 3600
    pipe = redis_client().pipeline(transaction=False)
    ip_key = f"herald:signup:ip:{_hashed(ip or '-')}"
    addr_key = f"herald:signup:addr:{_hashed(email_key(address))}"
    pipe.incr(ip_key)
    pipe.expire(ip_key, window, nx=True)
    pipe.incr(addr_key)
    pipe.expire(addr_key, window, nx=True)
    if double:
        pipe.set(_mailed_key(address, form_id), 1, nx=True, ex=settings.HERALD_CONFIRM_RESEND_SECONDS)
        pipe.set(confirmations.WAKE_KEY, 1, nx=True, ex=confirmations.WAKE_SECONDS)
    answers = pipe.execute()
    over = answers[0] > settings.HERALD_SIGNUP_LIMIT_PER_IP or answers[2] > settings.HERALD_SIGNUP_LIMIT_PER_ADDRESS
    if not double:
        return Gate(over, None, False)
    return Gate(over, bool(answers[4]), bool(answers[5]))


def _mailed_key(address: str, form_id: int) -> str:
    return f"herald:signup:mailed:{_hashed(email_key(address))}:{form_id}"


def _may_mail_again(address: str, form_id: int) -> bool:
    return bool(redis_client().set(_mailed_key(address, form_id), 1, nx=True,
                                   ex=settings.HERALD_CONFIRM_RESEND_SECONDS))


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


def sign_up(form: SignupForm, optins: dict, data: Signup, gate: Gate) -> Outcome:
    """Subscribe ``data`` to ``optins`` ({list id: optin}) of ``form`` and owe a confirmation mail where one is due.

    ``gate``: what gate() said of this signup (not over the limit). The mail is
    stored by a worker (audience.confirmations); a signup that claimed the
    wake-up publishes its task once the signup is committed, so the pass sees it.
    """
    try:
        return _sign_up(form, optins, data, gate)
    finally:
        if gate.woke:
            transaction.on_commit(confirmations.publish)


def _sign_up(form, optins, data, gate) -> Outcome:
    now = timezone.now()
    evidence = {
        "source": Subscription.Source.FORM, "source_detail": f"form {form.slug} v{form.version}"[:200],
        "consent_ip": data.ip, "consent_user_agent": data.user_agent[:1000], "consent_text": form.consent_text,
    }
    if connection.vendor == "postgresql":
        outcome = _sign_up_new(form, optins, data, evidence, now)
        if outcome is not None:
            return outcome
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
        if gate.may_mail is None:  # a form of single opt-in lists: only an unsubscribed address must confirm
            mailed = bool(pending) and _may_mail_again(data.email, form.pk)
            if mailed:
                transaction.on_commit(confirmations.wake)
        else:
            # A new contact has had no mail: the repeat window counts only for one already known.
            mailed = bool(pending) and (gate.may_mail or new)
            if gate.may_mail and not mailed:
                # No mail was due after all: a repeat window that started for nothing must not hold back
                # the next one that is (a subscriber who unsubscribes and signs up again).
                redis_client().delete(_mailed_key(data.email, form.pk))
        if mailed:
            ConfirmationDue.objects.create(contact_id=contact_id, form_id=form.pk, list_ids=sorted(pending),
                                           created_at=now)
    return Outcome(contact_id, subscribed, pending, mailed)


# A new address, the common case, in one statement (and so one transaction without BEGIN and COMMIT of
# its own): the contact, its subscriptions with their evidence, and the confirmation owed. When the
# address is known already the statement inserts nothing and returns no row, and sign_up takes the
# general path, which reads what the contact has before it changes anything.
_SIGN_UP_NEW = """
WITH contact AS (
    INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, updated_at)
    VALUES (%(email)s, %(key)s, %(first_name)s, %(last_name)s, %(attributes)s::jsonb, 'active', %(now)s, %(now)s)
    ON CONFLICT (email_key) DO NOTHING RETURNING id
), subscriptions AS (
    INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, confirmed_at, source, source_detail,
                                        consent_ip, consent_user_agent, consent_text, created_at, updated_at)
    SELECT contact.id, list.id, CASE WHEN list.double THEN 'unconfirmed' ELSE 'confirmed' END,
           CASE WHEN list.double THEN NULL ELSE %(now)s END, %(source)s, %(source_detail)s, %(consent_ip)s::inet,
           %(consent_user_agent)s, %(consent_text)s, %(now)s, %(now)s
    FROM contact CROSS JOIN unnest(%(lists)s::bigint[], %(double)s::boolean[]) AS list (id, double)
), due AS (
    INSERT INTO audience_confirmationdue (contact_id, form_id, list_ids, created_at)
    SELECT contact.id, %(form)s, %(pending)s::jsonb, %(now)s FROM contact WHERE %(mail)s
)
SELECT id FROM contact
"""


def _sign_up_new(form, optins, data: Signup, evidence, now) -> Outcome | None:
    """A new address's signup in one statement; None when the address is known (nothing was written)."""
    lists = sorted(optins)
    pending = [pk for pk in lists if optins[pk] == MailingList.OptIn.DOUBLE]
    connection.ensure_connection()
    # Parameters bound by the server, not quoted into the text by Django's client-side cursor; and the
    # statement prepared once per connection, so each signup sends only its values and is not planned again.
    with psycopg.Cursor(connection.connection) as cur:
        cur.execute(_SIGN_UP_NEW, {
            "email": data.email.strip(), "key": email_key(data.email), "first_name": data.first_name[:200],
            "last_name": data.last_name[:200], "attributes": json.dumps(data.attributes), "now": now,
            "lists": lists, "double": [pk in pending for pk in lists], "form": form.pk,
            "pending": json.dumps(pending), "mail": bool(pending), **evidence}, prepare=True)
        row = cur.fetchone()
    if row is None:
        return None
    contact_id = row[0]
    return Outcome(contact_id, [pk for pk in lists if pk not in pending], pending, bool(pending))


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
