"""A segment's rule tree as one condition on contacts: a Q object the ORM turns into one set-based query.

Every value from the tree reaches the database as a bound parameter (the ORM's
lookups, never text pasted into SQL), and each condition is an EXISTS or a
column test on the contact row, so a count or a snapshot stays one statement on
PostgreSQL and SQLite alike. Opens and clicks of any campaign, and campaigns
received since the last open, are read from tracking's Engagement (a contact's
latest times, kept by a trigger); those of a given campaign from the events,
through this app's (campaign, contact, type, machine) index of opens and clicks
(migration 0002); bounces and complaints through its (type, contact, created_at)
index of deliverability events (migration 0003).

Call ``validate`` (segments.rules) first: this module trusts the tree it gets.
"""

import datetime

from django.db.models import BooleanField, Case, CharField, Count, Exists, F, FloatField, OuterRef, Q, Subquery, Value, When
from django.db.models.fields.json import HasKey, KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Lower, Substr
from django.db.models.lookups import (
    Exact,
    GreaterThan,
    GreaterThanOrEqual,
    IContains,
    In,
    IsNull,
    IStartsWith,
    LessThan,
    LessThanOrEqual,
    Regex,
)
from django.utils import timezone

from campaigns.audience import live, subscribed_to
from campaigns.models import Segment, Subscription, Suppression
from delivery.models import DomainThrottle, Send
from segments.rules import variant_number
from tracking.models import Engagement, Event

NOTHING = Q(pk__in=[])
EVERYONE = ~NOTHING
OPENS = (Event.Type.OPEN, Event.Type.CLICK)
_NUMBER = r"^\s*-?[0-9]+(\.[0-9]+)?\s*$"
_DATE_PREFIX = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"


class Compiler:
    def __init__(self, now=None):
        self.now = now or timezone.now()
        self.today = timezone.localdate(self.now)
        self.inside: list[int] = []  # segments being compiled: a guard against a circle saved before checks

    def compile(self, node) -> Q:
        if "rules" in node or "match" in node:
            parts = [self.compile(child) for child in node.get("rules", [])]
            match = node.get("match", "all")
            if match == "any":
                return _any(parts)
            if match == "none":
                return ~_any(parts) if parts else EVERYONE
            return _all(parts)
        return getattr(self, "c_" + node["type"])(node)

    # -- audience --------------------------------------------------------------

    def c_list(self, node):
        status = node.get("status", "subscribed")
        since = node.get("since")
        if status == "subscribed" and since is None:
            return Q(subscribed_to([node["list"]]))
        rows = Subscription.objects.filter(contact_id=OuterRef("pk"), mailing_list_id=node["list"])
        if status == "subscribed":
            rows = rows.filter(live([node["list"]]))
        else:
            rows = rows.filter(status=status)
        if since is not None:
            column = "updated_at" if status == "unsubscribed" else "created_at"
            rows = rows.filter(self.date_test(F(column), since["op"], since.get("value"), timestamp=True))
        return Q(Exists(rows))

    def c_segment(self, node):
        segment_id = node["segment"]
        if segment_id in self.inside:
            raise ValueError(f"segment {segment_id} contains itself")
        segment = Segment.objects.filter(pk=segment_id).first()
        if segment is None:
            return NOTHING
        self.inside.append(segment_id)
        try:
            return self.compile(segment.rules or {"match": "all", "rules": []})
        finally:
            self.inside.pop()

    # -- contact data ----------------------------------------------------------

    def c_field(self, node):
        name, op, value = node["field"], node["op"], node.get("value")
        if name == "status":
            return Q(status=value) if op == "equals" else Q(status__in=value)
        if name == "created_at":
            return Q(self.date_test(F("created_at"), op, value, timestamp=True))
        if name == "email":
            column = F("email_key")
            value = [v.strip().lower() for v in value] if isinstance(value, list) else (
                value.strip().lower() if isinstance(value, str) else value)
        else:
            column = F(name)
        if op == "exists":
            return ~Q(**{name: ""})
        return Q(self.text_test(column, op, value))

    def c_attribute(self, node):
        key, kind, op, value = node["key"], node.get("kind", "text"), node["op"], node.get("value")
        if op == "exists":
            return Q(HasKey(F("attributes"), key))
        # A missing attribute or one that is no number makes the test unknown (NULL), and NOT NULL is
        # unknown too: without this a "none" group would leave out those who lack the attribute.
        return Q(Case(When(self.attribute_test(key, kind, op, value), then=Value(True)), default=Value(False),
                      output_field=BooleanField()))

    def attribute_test(self, key, kind, op, value):
        text = KeyTextTransform(key, "attributes")
        if kind == "text":
            return Q(self.text_test(text, op, value))
        if kind == "number":
            number = Case(When(Regex(text, _NUMBER), then=Cast(text, FloatField())), default=None,
                          output_field=FloatField())
            return Q(self.number_test(number, op, value))
        if kind == "boolean":
            return Q(In(Lower(text), ["true", "1", "yes"] if value else ["false", "0", "no"]))
        # Dates are ISO text in the attributes: compare the YYYY-MM-DD that starts the value.
        return Q(Regex(text, _DATE_PREFIX)) & Q(self.date_test(text, op, value, timestamp=False))

    def c_domain(self, node):
        op, value = node["op"], node["value"]
        if op == "ends_with":
            domain = value.strip().lower().lstrip(".")
            return Q(email_key__endswith="@" + domain) | Q(email_key__endswith="." + domain)
        domains = value if op == "in" else [value]
        return _any([Q(email_key__endswith="@" + d.strip().lower()) for d in domains])

    def c_provider(self, node):
        group = DomainThrottle.objects.filter(name=node["group"]).first()
        domains = group.domain_list() if group else []
        return _any([Q(email_key__endswith="@" + d) for d in domains])

    # -- engagement ------------------------------------------------------------

    def events(self, types, node=None, machine=False):
        rows = Event.objects.filter(contact_id=OuterRef("pk"), type__in=list(types))
        if node is not None:
            machine = node.get("include_machine", False)
            if node.get("campaign") is not None:
                rows = rows.filter(campaign_id=node["campaign"])
            if node.get("within_days") is not None:
                rows = rows.filter(created_at__gte=self.days_ago(node["within_days"]))
        return rows if machine else rows.filter(machine=False)

    def latest(self, column, since=None):
        """Contacts whose latest open or click (tracking's Engagement, one row per contact) is known, or since a time."""
        rows = Engagement.objects.filter(contact_id=OuterRef("pk"), **{f"{column}__isnull": False})
        if since is not None:
            rows = rows.filter(**{f"{column}__gte": since})
        return Exists(rows)

    def engaged(self, node, clicks):
        if node.get("campaign") is not None:
            return Q(Exists(self.events([Event.Type.CLICK] if clicks else OPENS, node)))
        # Any campaign: the contact's latest times answer without reading the events.
        column = ("last_click" if clicks else "last_open") + ("_any_at" if node.get("include_machine") else "_at")
        within = node.get("within_days")
        return Q(self.latest(column, None if within is None else self.days_ago(within)))

    def c_opened(self, node):
        return self.engaged(node, clicks=False)

    def c_clicked(self, node):
        return self.engaged(node, clicks=True)

    def c_clicked_link(self, node):
        return Q(Exists(self.events([Event.Type.CLICK], node).filter(url=node["url"])))

    def c_variant(self, node):
        return Q(Exists(Send.objects.filter(contact_id=OuterRef("pk"), campaign_id=node["campaign"],
                                            variant=variant_number(node["variant"]))))

    def c_unopened(self, node):
        """Received ``count`` campaigns or more since the last open (or ever, never having opened).

        A send is unopened when no open came at or after it: when it is later than the
        contact's latest open, one row per contact, rather than a look for later opens
        among the events for every send.
        """
        column = "last_open_any_at" if node.get("include_machine", False) else "last_open_at"
        later_open = Engagement.objects.filter(contact_id=OuterRef("contact_id"), **{f"{column}__gte": OuterRef("sent_at")})
        unopened = (Send.objects.filter(campaign__isnull=False, status=Send.Status.SENT, contact__isnull=False)
                    .filter(~Q(Exists(later_open))).order_by().values("contact_id")
                    .annotate(n=Count("id")).filter(n__gte=node["count"]).values("contact_id"))
        return Q(pk__in=unopened)

    def c_last_activity(self, node):
        op = node["op"]
        if op == "never":
            return ~Q(self.latest("last_open_at"))
        since = self.days_ago(node["value"])
        if op == "in_last_days":
            return Q(self.latest("last_open_at", since))
        # One row per contact: an open known but none since is a latest open before.
        return Q(Exists(Engagement.objects.filter(contact_id=OuterRef("pk"), last_open_at__lt=since)))

    # -- deliverability ----------------------------------------------------------

    def c_soft_bounces(self, node):
        """A test of the number of soft bounces.

        When a count of none fails (at least n), the contacts with a passing count are
        one set-based query over the soft bounces, through the (type, contact) index
        of the deliverability events. When it passes, each contact's count is looked
        up: a NOT IN over those that fail, more than PostgreSQL holds in memory,
        would compare every contact with all of them.
        """
        rows = Event.objects.filter(type=Event.Type.SOFT_BOUNCE, contact__isnull=False)
        if node.get("within_days") is not None:
            rows = rows.filter(created_at__gte=self.days_ago(node["within_days"]))
        op, value = node["op"], node["value"]
        if not _passes(op, value, 0):
            counted = rows.order_by().values("contact_id").annotate(n=Count("*"))
            return Q(pk__in=counted.filter(self.number_test(F("n"), op, value)).values("contact_id"))
        mine = rows.filter(contact_id=OuterRef("pk")).order_by().values("contact_id").annotate(n=Count("*"))
        return Q(self.number_test(Coalesce(Subquery(mine.values("n")[:1]), Value(0)), op, value))

    def c_last_bounce(self, node):
        op = node["op"]
        bounces = self.events([Event.Type.BOUNCE], machine=True)
        if op == "never":
            return ~Q(Exists(bounces))
        if op == "ever":
            return Q(Exists(bounces))
        recent = Exists(bounces.filter(created_at__gte=self.days_ago(node["value"])))
        return Q(recent) if op == "in_last_days" else Q(Exists(bounces)) & ~Q(recent)

    def c_complained(self, node):
        complaints = self.events([Event.Type.COMPLAINT], node, machine=True)
        if node.get("within_days") is None:
            # A complaint suppression (from any source, imported ones too) counts as well.
            listed = Suppression.objects.filter(email_key=OuterRef("email_key"), reason=Suppression.Reason.COMPLAINT)
            return Q(Exists(complaints)) | Q(Exists(listed))
        return Q(Exists(complaints))

    def c_suppressed(self, node):
        rows = Suppression.objects.filter(email_key=OuterRef("email_key"))
        if node.get("reason"):
            rows = rows.filter(reason=node["reason"])
        return Q(Exists(rows))

    # -- tests by kind -----------------------------------------------------------

    def days_ago(self, days):
        return self.now - datetime.timedelta(days=days)

    def text_test(self, column, op, value):
        if op == "equals":
            return Exact(column, value)
        if op == "contains":
            return IContains(column, value)
        if op == "starts_with":
            return IStartsWith(column, value)
        return In(column, list(value))

    def number_test(self, column, op, value):
        if op == "equals":
            return Exact(column, value)
        if op == "in":
            return In(column, list(value))
        if op == "between":
            return Q(GreaterThanOrEqual(column, value[0])) & Q(LessThanOrEqual(column, value[1]))
        return {"gt": GreaterThan, "gte": GreaterThanOrEqual, "lt": LessThan, "lte": LessThanOrEqual}[op](column, value)

    def date_test(self, column, op, value, timestamp):
        """A date test on a timestamp column, or on ISO text (its first ten characters) when not ``timestamp``."""
        if op == "exists":
            return IsNull(column, False)
        if op == "anniversary_in_next_days":
            days = [self.today + datetime.timedelta(days=n) for n in range(value + 1)]
            month_days = {d.strftime("%m-%d") for d in days}
            if "02-28" in month_days and "03-01" in month_days:
                month_days.add("02-29")  # born on the 29th: remembered on the 28th in a common year
            column = Substr(_as_text(column, timestamp), 6, 5)
            return In(column, sorted(month_days))
        low, high = self.date_range(op, value)
        if timestamp:
            low = self.start_of(low) if low else None
            high = self.start_of(high) if high else None
            parts = ([Q(GreaterThanOrEqual(column, low))] if low else []) + ([Q(LessThan(column, high))] if high else [])
        else:
            day = Substr(column, 1, 10)
            parts = ([Q(GreaterThanOrEqual(day, low.isoformat()))] if low else []) + (
                [Q(LessThan(day, high.isoformat()))] if high else [])
        return _all(parts)

    def date_range(self, op, value):
        """[low, high) in days for a date test: either end may be open (None)."""
        day = datetime.timedelta(days=1)
        if op in ("on", "before", "after", "between"):
            first = datetime.date.fromisoformat(value[0] if op == "between" else value)
            last = datetime.date.fromisoformat(value[1]) if op == "between" else first
            return {"on": (first, first + day), "before": (None, first), "after": (first + day, None),
                    "between": (first, last + day)}[op]
        if op == "in_last_days":
            return self.today - datetime.timedelta(days=value), None
        if op == "more_than_days_ago":
            return None, self.today - datetime.timedelta(days=value)
        return self.today, self.today + datetime.timedelta(days=value + 1)  # in_next_days

    def start_of(self, day):
        return timezone.make_aware(datetime.datetime.combine(day, datetime.time()), timezone.get_current_timezone())


def _passes(op, value, n):
    """The number test of a count, in Python: whether ``n`` passes it."""
    if op == "between":
        return value[0] <= n <= value[1]
    if op == "in":
        return n in value
    return {"equals": n == value, "gt": n > value, "gte": n >= value, "lt": n < value, "lte": n <= value}[op]


def _as_text(column, timestamp):
    return Cast(column, CharField()) if timestamp else column


def _any(parts):
    if not parts:
        return NOTHING
    out = parts[0]
    for part in parts[1:]:
        out = out | part
    return out


def _all(parts):
    if not parts:
        return EVERYONE
    out = parts[0]
    for part in parts[1:]:
        out = out & part
    return out


def compile_rules(rules, now=None) -> Q:
    """A validated rule tree as a condition on Contact."""
    return Compiler(now).compile(rules or {"match": "all", "rules": []})


def segment_q(segment, now=None) -> Q:
    compiler = Compiler(now)
    compiler.inside.append(segment.pk)
    return compiler.compile(segment.rules or {"match": "all", "rules": []})
