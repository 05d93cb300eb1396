"""A contact's history, newest first: subscriptions and their consent, sends, what came back, and changes.

Each source is read by the contact's own index, at most one page of rows
each, and the pages are merged: a contact with a hundred thousand events costs
one page per source, never the whole history. Pages are keyset-paginated:
the cursor is the (time, kind, id) of the last entry shown, so an entry added
while someone reads never shifts or repeats what follows.
"""

import base64
import json
from datetime import datetime

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q

from campaigns.models import AuditEntry, Contact, Subscription, Suppression
from delivery.models import Send
from tracking.models import Event

# Tie-breaking order of kinds at the same instant (higher first on a page).
RANKS = {"subscription": 1, "confirmation": 2, "send": 3, "event": 4, "suppression": 5, "change": 6, "preferences": 7}


class BadCursor(ValueError):
    pass


def encode_cursor(at: datetime, kind: str, pk: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), kind, pk]).encode()).decode().rstrip("=")


def decode_cursor(text: str):
    try:
        at, kind, pk = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return datetime.fromisoformat(at), kind, int(pk)
    except (ValueError, TypeError) as exc:
        raise BadCursor("cursor: not a cursor this API returned") from exc


def _before(field, cursor, kind):
    """Rows of ``kind`` that come after the cursor in newest-first order."""
    if cursor is None:
        return Q()
    at, c_kind, c_id = cursor
    rank, c_rank = RANKS[kind], RANKS[c_kind]
    if rank < c_rank:
        return Q(**{f"{field}__lte": at})
    if rank > c_rank:
        return Q(**{f"{field}__lt": at})
    return Q(**{f"{field}__lt": at}) | Q(**{field: at, "pk__lt": c_id})


def _subscriptions(contact_id, cursor, limit):
    rows = Subscription.objects.filter(contact_id=contact_id).select_related("mailing_list")
    out = []
    for sub in rows.filter(_before("created_at", cursor, "subscription")).order_by("-created_at", "-pk")[:limit]:
        out.append({"kind": "subscription", "id": sub.pk, "at": sub.created_at, "list": sub.mailing_list.name,
                    "list_id": sub.mailing_list_id, "status": sub.status, "source": sub.source,
                    "source_detail": sub.source_detail, "ip": sub.consent_ip, "user_agent": sub.consent_user_agent,
                    "consent_text": sub.consent_text, "confirmed_at": sub.confirmed_at})
    confirmed = rows.exclude(confirmed_at=None).filter(_before("confirmed_at", cursor, "confirmation"))
    for sub in confirmed.order_by("-confirmed_at", "-pk")[:limit]:
        out.append({"kind": "confirmation", "id": sub.pk, "at": sub.confirmed_at, "list": sub.mailing_list.name,
                    "list_id": sub.mailing_list_id, "source": sub.source})
    return out


def _sends(contact_id, cursor, limit):
    rows = (Send.objects.filter(contact_id=contact_id).filter(_before("created_at", cursor, "send"))
            .select_related("campaign").order_by("-created_at", "-pk")[:limit])
    return [{"kind": "send", "id": s.pk, "at": s.created_at, "campaign": s.campaign.name if s.campaign else None,
             "campaign_id": s.campaign_id, "status": s.status, "attempts": s.attempts, "smtp_code": s.smtp_code,
             "smtp_reply": s.smtp_reply, "sent_at": s.sent_at, "message_id": s.message_id} for s in rows]


def _events(contact_id, cursor, limit):
    rows = (Event.objects.filter(contact_id=contact_id).filter(_before("created_at", cursor, "event"))
            .order_by("-created_at", "-pk")[:limit])
    return [{"kind": "event", "id": e.pk, "at": e.created_at, "type": e.type, "send_id": e.send_id,
             "campaign_id": e.campaign_id, "machine": e.machine, "url": e.url, "status": e.status,
             "diagnostic": e.diagnostic, "reason": e.reason, "source": e.source} for e in rows]


def _suppressions(contact, cursor, limit):
    rows = (Suppression.objects.filter(email_key=contact.email_key).filter(_before("created_at", cursor, "suppression"))
            .order_by("-created_at", "-pk")[:limit])
    out = []
    for x in rows:
        campaign_id = None
        if x.source_event_id:
            campaign_id = Event.objects.filter(pk=x.source_event_id).values_list("campaign_id", flat=True).first()
        out.append({"kind": "suppression", "id": x.pk, "at": x.created_at, "reason": x.reason, "detail": x.detail,
                    "event_id": x.source_event_id, "campaign_id": campaign_id})
    return out


def _changes(contact_id, cursor, limit):
    """Edits in the admin (who, what) and the contact's own changes in the preference centre."""
    contact_type = ContentType.objects.get_for_model(Contact)
    rows = (LogEntry.objects.filter(content_type=contact_type, object_id=str(contact_id))
            .filter(_before("action_time", cursor, "change")).select_related("user")
            .order_by("-action_time", "-pk")[:limit])
    out = [{"kind": "change", "id": e.pk, "at": e.action_time, "by": e.user.get_username() if e.user else "",
            "action": {1: "added", 2: "changed", 3: "deleted"}.get(e.action_flag, ""),
            "message": e.get_change_message()} for e in rows]
    audits = (AuditEntry.objects.filter(object_type="contact", object_id=str(contact_id))
              .filter(_before("at", cursor, "preferences")).order_by("-at", "-pk")[:limit])
    out += [{"kind": "preferences", "id": a.pk, "at": a.at, "by": a.actor or a.via, "action": a.action,
             "detail": a.detail} for a in audits]
    return out


def entries(contact_id: int, cursor=None, limit=50):
    """(entries newest first, cursor of the next page or None)."""
    contact = Contact.objects.filter(pk=contact_id).first()
    if contact is None:
        return [], None
    take = limit + 1
    found = (_subscriptions(contact_id, cursor, take) + _sends(contact_id, cursor, take)
             + _events(contact_id, cursor, take) + _suppressions(contact, cursor, take)
             + _changes(contact_id, cursor, take))
    found.sort(key=lambda e: (e["at"], RANKS[e["kind"]], e["id"]), reverse=True)
    page = found[:limit]
    more = len(found) > limit
    return page, (encode_cursor(page[-1]["at"], page[-1]["kind"], page[-1]["id"]) if more and page else None)
