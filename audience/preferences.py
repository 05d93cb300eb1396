"""The preference centre: what a recipient may change about themselves through their signed link.

Reached from ``{{ preferences_url }}`` in any message (a token naming the
send) or from a confirmation page (a token naming the contact). The person
sees their subscriptions and the public lists, changes their name and the
attributes the operator marked editable, pauses mail for a while,
unsubscribes from everything, or asks for their data by mail. Every change is
recorded on the contact's timeline, by what changed and never by value: the
audit log is append-only, and an erasure must be able to leave nothing of them.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audience import mail, tokens
from audience.models import SignupForm
from audience.texts import texts
from campaigns.models import AuditEntry, Contact, MailingList, Subscription
from delivery.models import Send
from delivery.throttle import client as redis_client
from delivery.tokens import read_preferences_token

PAUSES = {"": None, "30": 30, "90": 90, "180": 180}


def contact_of(token: str):
    read = read_preferences_token(token)
    if read is None:
        return None
    kind, number = read
    if kind == "send":
        contact_id = Send.objects.filter(pk=number).values_list("contact_id", flat=True).first()
    else:
        contact_id = number
    return Contact.objects.filter(pk=contact_id).first() if contact_id else None


def editable_attributes() -> list[dict]:
    """The attribute fields marked editable on any enabled form, each once."""
    seen = {}
    for fields in SignupForm.objects.filter(enabled=True).values_list("fields", flat=True):
        for spec in fields or []:
            if spec.get("editable") and spec["name"] not in ("first_name", "last_name"):
                seen.setdefault(spec["name"], spec)
    return list(seen.values())


def language_of(subs) -> str:
    """The language of the form the contact last signed up through; English without one."""
    latest = max((s for s in subs if s.source == Subscription.Source.FORM), key=lambda s: s.created_at, default=None)
    if latest is None:
        return "en"
    slug = latest.source_detail.removeprefix("form ").rpartition(" v")[0]
    return SignupForm.objects.filter(slug=slug).values_list("language", flat=True).first() or "en"


def page(contact) -> dict:
    subs = {s.mailing_list_id: s for s in Subscription.objects.filter(contact=contact)}
    language = language_of(subs.values())
    words = texts(language)
    lists = MailingList.objects.filter(pk__in=list(subs)) | MailingList.objects.filter(public=True)
    rows = [{"id": ml.pk, "name": ml.name, "description": ml.description,
             "subscribed": ml.pk in subs and subs[ml.pk].status != Subscription.Status.UNSUBSCRIBED,
             "pending": ml.pk in subs and subs[ml.pk].status == Subscription.Status.UNCONFIRMED}
            for ml in lists.distinct().order_by("name")]
    attributes = [{**spec, "label": spec.get("label") or spec["name"], "value": (contact.attributes or {}).get(spec["name"], "")}
                  for spec in editable_attributes()]
    paused = contact.paused_until if contact.paused_until and contact.paused_until > timezone.now() else None
    return {"contact": contact, "lists": rows, "attributes": attributes, "language": language, "words": words,
            "paused_note": words["paused_until"].format(date=f"{paused:%Y-%m-%d}") if paused else "",
            "pauses": [(k, words["pause_for"].format(days=k)) for k in PAUSES if k],
            "unsubscribed": contact.status == Contact.Status.UNSUBSCRIBED}


def record(contact_id: int, action: str, ip=None, **detail):
    """A change on the contact's timeline; names what changed, never a value the person typed."""
    AuditEntry.objects.create(actor="", via="recipient", address=ip, action=action, object_type="contact",
                              object_id=str(contact_id), object_repr=f"contact {contact_id}", detail=detail)


def apply(contact, post, ip=None, user_agent="") -> str:
    """Carry out what the page posted; returns the notice to show, in the page's language."""
    words = texts(language_of(Subscription.objects.filter(contact=contact)))
    action = post.get("action", "save")
    if action == "unsubscribe_all":
        with transaction.atomic():
            Subscription.objects.filter(contact=contact).exclude(status=Subscription.Status.UNSUBSCRIBED).update(
                status=Subscription.Status.UNSUBSCRIBED, updated_at=timezone.now())
            Contact.objects.filter(pk=contact.pk).update(status=Contact.Status.UNSUBSCRIBED, updated_at=timezone.now())
            record(contact.pk, "contact.unsubscribe_all", ip, source="preference centre")
        return words["unsubscribed_all"]
    if action == "export":
        # At most one such mail an hour: a forwarded newsletter's link must not become a way to flood its owner.
        if redis_client().set(f"herald:export-mailed:{contact.pk}", 1, nx=True, ex=3600):
            send_export_link(contact)
            record(contact.pk, "contact.export_requested", ip, source="preference centre")
        return words["export_sent"]
    _save(contact, post, ip, user_agent)
    return words["saved"]


def _save(contact, post, ip, user_agent) -> None:
    now = timezone.now()
    changed = []
    for name in ("first_name", "last_name"):
        if name in post:
            value = post.get(name, "").strip()[:200]
            if value != getattr(contact, name):
                setattr(contact, name, value)
                changed.append(name)
    attributes = dict(contact.attributes or {})
    for spec in editable_attributes():
        name = spec["name"]
        if name in post:
            value = post.get(name, "").strip()[:500]
            if value != str(attributes.get(name, "")):
                attributes[name] = value
                changed.append(name)
    contact.attributes = attributes
    pause = post.get("pause", "")
    if pause in PAUSES and PAUSES[pause]:
        contact.paused_until = now + timedelta(days=PAUSES[pause])
        changed.append("paused_until")
    elif post.get("resume"):
        contact.paused_until = None
        changed.append("paused_until")
    wanted = {int(v) for v in post.getlist("lists") if v.isdigit()}
    with transaction.atomic():
        contact.save()
        joined, left = _lists(contact, wanted, now, ip, user_agent)
        if changed or joined or left:
            record(contact.pk, "contact.preferences", ip, fields=changed, joined=joined, left=left)


def _lists(contact, wanted, now, ip, user_agent):
    subs = {s.mailing_list_id: s for s in Subscription.objects.select_for_update().filter(contact=contact)}
    public = set(MailingList.objects.filter(public=True).values_list("pk", flat=True))
    joined, left = [], []
    for pk, sub in subs.items():
        if sub.status != Subscription.Status.UNSUBSCRIBED and pk not in wanted:
            Subscription.objects.filter(pk=sub.pk).update(status=Subscription.Status.UNSUBSCRIBED, updated_at=now)
            left.append(pk)
    for pk in sorted(wanted):
        sub = subs.get(pk)
        if sub is None and pk in public:
            # Reached through a link mailed to this address: as good as a confirmed opt-in.
            Subscription.objects.create(
                contact=contact, mailing_list_id=pk, status=Subscription.Status.CONFIRMED, confirmed_at=now,
                source=Subscription.Source.PREFERENCES, source_detail="preference centre (mailed link)",
                consent_ip=ip, consent_user_agent=user_agent[:1000])
            joined.append(pk)
        elif sub is not None and sub.status == Subscription.Status.UNSUBSCRIBED:
            sub.resubscribe(None, "rejoined in the preference centre (mailed link)")
            joined.append(pk)
        elif sub is not None and sub.status == Subscription.Status.UNCONFIRMED:
            Subscription.objects.filter(pk=sub.pk).update(status=Subscription.Status.CONFIRMED, confirmed_at=now)
            joined.append(pk)
    if joined:
        # Joining a list by their own hand ends an unsubscribe from everything.
        Contact.objects.filter(pk=contact.pk, status=Contact.Status.UNSUBSCRIBED).update(status=Contact.Status.ACTIVE)
    return joined, left


def send_export_link(contact):
    url = f"{settings.HERALD_BASE_URL}/s/export/{tokens.export_token(contact.pk)}/"
    sender = settings.HERALD_PUBLIC_FROM_EMAIL
    text = (f"You asked for the data we hold about you. Download it within {settings.HERALD_EXPORT_LINK_HOURS} "
            f"hours here:\n\n{url}\n\nIf you did not ask for it, ignore this email.\n")
    with transaction.atomic():
        mail.send(sender, "", contact.email, "Your data", text, tag="data-export")
