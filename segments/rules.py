"""A segment's rule tree: what it may say, and the check that names the condition at fault.

A tree is JSON. A group is ``{"match": "all" | "any" | "none", "rules": [...]}``
(``none``: matches contacts that match none of its rules); every other node is a
condition, ``{"type": ..., ...}``:

- ``list``: ``{"list": id, "status": "subscribed" | "confirmed" | "unconfirmed" | "unsubscribed",
  "since": <date test>}`` (subscribed: would receive the list's campaigns; since:
  when the subscription was made, or for unsubscribed when it was last changed);
- ``field``: ``{"field": "email" | "first_name" | "last_name" | "status" | "created_at", "op", "value"}``;
- ``attribute``: ``{"key": name, "kind": "text" | "number" | "date" | "boolean", "op", "value"}``;
- ``domain``: ``{"op": "equals" | "in" | "ends_with", "value"}`` on the address's domain;
- ``provider``: ``{"group": name}``: the domains of the throttle group of that name;
- ``opened`` / ``clicked``: ``{"campaign": id?, "within_days": n?, "include_machine": false}``
  (an open is an open or a click: a person who clicked saw the message);
- ``clicked_link``: ``{"url": url, "campaign": id?, "within_days": n?, "include_machine": false}``;
- ``unopened``: ``{"count": n, "include_machine": false}``: received at least n campaigns since they last opened one;
- ``last_activity``: ``{"op": "in_last_days" | "more_than_days_ago" | "never", "value": n}`` (opens and clicks);
- ``soft_bounces``: ``{"op": number test, "value", "within_days": n?}``;
- ``last_bounce``: ``{"op": "in_last_days" | "more_than_days_ago" | "never" | "ever", "value": n}`` (hard bounces);
- ``complained``: ``{"within_days": n?}``;
- ``suppressed``: ``{"reason": reason?}``;
- ``segment``: ``{"segment": id}``: in another segment (no cycles);
- ``variant``: ``{"campaign": id, "variant": "A" … "E" (or 1 … 5)}``: was sent that variant of an A/B test.

Machine opens and clicks (privacy proxies, link scanners) never count unless
``include_machine`` is true. Operators by kind:

- text: equals, contains, starts_with, in (a list), exists;
- number: equals, gt, gte, lt, lte, between ([low, high]), in, exists;
- date: on, before, after, between (ISO dates), in_last_days, more_than_days_ago,
  in_next_days, anniversary_in_next_days (n days), exists;
- boolean: is (true or false), exists.
"""

import datetime
import math
import re
from dataclasses import dataclass

from campaigns.models import Campaign, Contact, MailingList, Segment, Suppression

MAX_DEPTH = 10
MAX_CONDITIONS = 200
MAX_DAYS = 36600
MAX_SET = 1000
MAX_TEXT = 1000

MATCHES = ("all", "any", "none")
KIND_OPS = {
    "text": ("equals", "contains", "starts_with", "in", "exists"),
    "number": ("equals", "gt", "gte", "lt", "lte", "between", "in", "exists"),
    "date": ("on", "before", "after", "between", "in_last_days", "more_than_days_ago", "in_next_days",
             "anniversary_in_next_days", "exists"),
    "boolean": ("is", "exists"),
}
FIELDS = {"email": "text", "first_name": "text", "last_name": "text", "status": "status", "created_at": "date"}
LIST_STATUSES = ("subscribed", "confirmed", "unconfirmed", "unsubscribed")
DAY_OPS = ("in_last_days", "more_than_days_ago", "never")
BOUNCE_OPS = ("in_last_days", "more_than_days_ago", "never", "ever")
COUNT_OPS = ("equals", "gt", "gte", "lt", "lte", "between")
DOMAIN_OPS = ("equals", "in", "ends_with")
CONDITIONS = ("list", "field", "attribute", "domain", "provider", "opened", "clicked", "clicked_link", "unopened",
              "last_activity", "soft_bounces", "last_bounce", "complained", "suppressed", "segment", "variant")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DOMAIN = re.compile(r"^\.?[a-z0-9-]+(\.[a-z0-9-]+)*$")


@dataclass
class RuleError:
    path: str  # where in the tree, e.g. rules[1].rules[0].op
    message: str

    def __str__(self):
        return f"{self.path}: {self.message}"


class _Check:
    def __init__(self, segment_id=None):
        self.errors: list[RuleError] = []
        self.count = 0
        self.segment_id = segment_id

    def fail(self, path, message):
        self.errors.append(RuleError(path, message))

    # -- the tree ------------------------------------------------------------

    def node(self, node, path, depth, trail):
        if not isinstance(node, dict):
            return self.fail(path or "rules", "must be a group or a condition (a JSON object)")
        if "match" in node or "rules" in node:
            return self.group(node, path, depth, trail)
        self.count += 1
        if self.count > MAX_CONDITIONS:
            return self.fail(path, f"a segment has at most {MAX_CONDITIONS} conditions")
        kind = node.get("type")
        if kind not in CONDITIONS:
            return self.fail(_at(path, "type"), f"unknown condition {kind!r}; one of {', '.join(CONDITIONS)}")
        getattr(self, kind)(node, path, trail)

    def group(self, node, path, depth, trail):
        if depth > MAX_DEPTH:
            return self.fail(path or "rules", f"groups nest at most {MAX_DEPTH} deep")
        self.keys(node, path, {"match", "rules"})
        if node.get("match") not in MATCHES:
            self.fail(_at(path, "match"), f"must be one of {', '.join(MATCHES)}, not {node.get('match')!r}")
        rules = node.get("rules")
        if not isinstance(rules, list):
            return self.fail(_at(path, "rules"), "must be a list of groups and conditions")
        for i, child in enumerate(rules):
            self.node(child, f"{_at(path, 'rules')}[{i}]", depth + 1, trail)

    def keys(self, node, path, allowed):
        for key in node:
            if key not in allowed | {"type"}:
                self.fail(_at(path, key), f"unknown field; this {node.get('type') or 'group'} takes "
                                          f"{', '.join(sorted(allowed))}")

    # -- conditions ----------------------------------------------------------

    def list(self, node, path, trail):
        self.keys(node, path, {"list", "status", "since"})
        if self.ref(node, path, "list", MailingList, "list") is None:
            return
        if node.get("status", "subscribed") not in LIST_STATUSES:
            self.fail(_at(path, "status"), f"must be one of {', '.join(LIST_STATUSES)}")
        if "since" in node:
            since = node["since"]
            if not isinstance(since, dict):
                return self.fail(_at(path, "since"), 'must be a date test, e.g. {"op": "in_last_days", "value": 30}')
            self.keys(since, _at(path, "since"), {"op", "value"})
            self.test(since, _at(path, "since"), "date")

    def field(self, node, path, trail):
        self.keys(node, path, {"field", "op", "value"})
        name = node.get("field")
        if name not in FIELDS:
            return self.fail(_at(path, "field"), f"unknown field {name!r}; one of {', '.join(FIELDS)} "
                                                 '(attributes: {"type": "attribute", "key": ...})')
        if FIELDS[name] == "status":
            op, value = node.get("op"), node.get("value")
            statuses = Contact.Status.values
            if op == "equals" and value in statuses:
                return
            if op == "in" and isinstance(value, list) and value and all(v in statuses for v in value):
                return
            return self.fail(path, f"status takes equals or in, with {', '.join(statuses)}")
        self.test(node, path, FIELDS[name])

    def attribute(self, node, path, trail):
        self.keys(node, path, {"key", "kind", "op", "value"})
        key = node.get("key")
        if not isinstance(key, str) or not key.strip() or len(key) > 200 or "\x00" in key:
            self.fail(_at(path, "key"), "must name an attribute (1 to 200 characters)")
        kind = node.get("kind", "text")
        if kind not in KIND_OPS:
            return self.fail(_at(path, "kind"), f"must be one of {', '.join(KIND_OPS)}")
        self.test(node, path, kind)

    def domain(self, node, path, trail):
        self.keys(node, path, {"op", "value"})
        op, value = node.get("op"), node.get("value")
        if op not in DOMAIN_OPS:
            return self.fail(_at(path, "op"), f"must be one of {', '.join(DOMAIN_OPS)}")
        values = value if op == "in" else [value]
        if not isinstance(values, list) or not values or len(values) > MAX_SET or not all(
                isinstance(v, str) and _DOMAIN.match(v.strip().lower()) for v in values):
            self.fail(_at(path, "value"), "must be a domain such as example.com" if op != "in"
                      else "must be a list of domains such as example.com")

    def provider(self, node, path, trail):
        from delivery.models import DomainThrottle

        self.keys(node, path, {"group"})
        group = node.get("group")
        if not isinstance(group, str) or not DomainThrottle.objects.filter(name=group).exists():
            self.fail(_at(path, "group"), f"no throttle group named {group!r}")

    def opened(self, node, path, trail):
        self.keys(node, path, {"campaign", "within_days", "include_machine"})
        self.engagement(node, path)

    clicked = opened

    def clicked_link(self, node, path, trail):
        self.keys(node, path, {"url", "campaign", "within_days", "include_machine"})
        url = node.get("url")
        if not isinstance(url, str) or not url.strip() or len(url) > 4000 or "\x00" in url:
            self.fail(_at(path, "url"), "must be the link's address")
        self.engagement(node, path)

    def engagement(self, node, path):
        if node.get("campaign") is not None:
            self.ref(node, path, "campaign", Campaign, "campaign")
        self.days(node, path, "within_days", required=False)
        if not isinstance(node.get("include_machine", False), bool):
            self.fail(_at(path, "include_machine"), "must be true or false")

    def variant(self, node, path, trail):
        self.keys(node, path, {"campaign", "variant"})
        self.ref(node, path, "campaign", Campaign, "campaign")
        if variant_number(node.get("variant")) is None:
            self.fail(_at(path, "variant"), "must be a variant letter, A to E (or its number, 1 to 5)")

    def unopened(self, node, path, trail):
        self.keys(node, path, {"count", "include_machine"})
        count = node.get("count")
        if not _is_int(count) or not 1 <= count <= 10000:
            self.fail(_at(path, "count"), "must be a whole number of campaigns, 1 or more")
        if not isinstance(node.get("include_machine", False), bool):
            self.fail(_at(path, "include_machine"), "must be true or false")

    def last_activity(self, node, path, trail):
        self.keys(node, path, {"op", "value"})
        self.day_test(node, path, DAY_OPS)

    def last_bounce(self, node, path, trail):
        self.keys(node, path, {"op", "value"})
        self.day_test(node, path, BOUNCE_OPS)

    def soft_bounces(self, node, path, trail):
        self.keys(node, path, {"op", "value", "within_days"})
        if node.get("op") not in COUNT_OPS:
            return self.fail(_at(path, "op"), f"must be one of {', '.join(COUNT_OPS)}")
        self.test(node, path, "number")
        self.days(node, path, "within_days", required=False)

    def complained(self, node, path, trail):
        self.keys(node, path, {"within_days"})
        self.days(node, path, "within_days", required=False)

    def suppressed(self, node, path, trail):
        self.keys(node, path, {"reason"})
        reason = node.get("reason")
        if reason is not None and reason not in Suppression.Reason.values:
            self.fail(_at(path, "reason"), f"must be one of {', '.join(Suppression.Reason.values)}")

    def segment(self, node, path, trail):
        self.keys(node, path, {"segment"})
        other = self.ref(node, path, "segment", Segment, "segment")
        if other is None:
            return
        if other.pk == self.segment_id or other.pk in trail:
            return self.fail(_at(path, "segment"), f"segment {other.pk} ({other.name}) includes this one: "
                                                   "a segment cannot contain itself")
        # Its own tree was checked when it was saved; only circles through this one remain to be found.
        cycle = _reaches(other, {self.segment_id, *trail} - {None}, set())
        if cycle:
            self.fail(_at(path, "segment"), f"segment {other.pk} ({other.name}) leads back to this one through "
                                            f"{' → '.join(cycle)}: a segment cannot contain itself")

    # -- values --------------------------------------------------------------

    def ref(self, node, path, key, model, what):
        value = node.get(key)
        if not _is_int(value):
            self.fail(_at(path, key), f"must be the id of a {what}")
            return None
        row = model.objects.filter(pk=value).first()
        if row is None:
            self.fail(_at(path, key), f"no {what} with id {value}")
        return row

    def days(self, node, path, key, required=True):
        value = node.get(key)
        if value is None and not required:
            return
        if not _is_int(value) or not 0 <= value <= MAX_DAYS:
            self.fail(_at(path, key), f"must be a whole number of days, 0 to {MAX_DAYS}")

    def day_test(self, node, path, ops):
        op = node.get("op")
        if op not in ops:
            return self.fail(_at(path, "op"), f"must be one of {', '.join(ops)}")
        if op in ("in_last_days", "more_than_days_ago"):
            self.days(node, path, "value")

    def test(self, node, path, kind):
        """An operator and its value for a kind of data."""
        op, value = node.get("op"), node.get("value")
        if op not in KIND_OPS[kind]:
            return self.fail(_at(path, "op"), f"{op!r} does not apply to {kind} data; use one of {', '.join(KIND_OPS[kind])}")
        where = _at(path, "value")
        if op == "exists":
            return
        if op == "in":
            if not isinstance(value, list) or not value or len(value) > MAX_SET:
                return self.fail(where, f"must be a list of 1 to {MAX_SET} {kind} values")
            for item in value:
                if not _fits(kind, item):
                    return self.fail(where, f"{item!r} is not {_a(kind)} {kind} value")
            return
        if op == "between":
            if not isinstance(value, list) or len(value) != 2 or not all(_fits(kind, v) for v in value):
                return self.fail(where, f"must be [low, high], two {kind} values")
            if value[0] > value[1]:
                return self.fail(where, "the low end comes first")
            return
        if op in ("in_last_days", "more_than_days_ago", "in_next_days", "anniversary_in_next_days"):
            limit = 366 if op == "anniversary_in_next_days" else MAX_DAYS
            if not _is_int(value) or not 0 <= value <= limit:
                self.fail(where, f"must be a whole number of days, 0 to {limit}")
            return
        if op == "is":
            if not isinstance(value, bool):
                self.fail(where, "must be true or false")
            return
        if not _fits(kind, value):
            self.fail(where, f"must be {_a(kind)} {kind} value" + (" (YYYY-MM-DD)" if kind == "date" else ""))


def _at(path, key):
    return f"{path}.{key}" if path else key


def _a(kind):
    return "an" if kind[0] in "aeiou" else "a"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(kind, value):
    if kind == "text":
        return isinstance(value, str) and 0 < len(value) <= MAX_TEXT and "\x00" not in value
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "date":
        if not isinstance(value, str) or not _DATE.match(value):
            return False
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            return False
        return True
    return False


def variant_number(value) -> int | None:
    """1 to 5 from "A" … "E" or 1 … 5; None for anything else."""
    if isinstance(value, str) and len(value) == 1 and value.upper() in "ABCDE":
        return "ABCDE".index(value.upper()) + 1
    return value if _is_int(value) and 1 <= value <= 5 else None


def referenced_segments(node) -> list[int]:
    """The ids of the segments a tree names directly."""
    if not isinstance(node, dict):
        return []
    if "rules" in node and isinstance(node["rules"], list):
        return [i for child in node["rules"] for i in referenced_segments(child)]
    return [node["segment"]] if node.get("type") == "segment" and _is_int(node.get("segment")) else []


def _reaches(segment, targets, seen) -> list[str] | None:
    """The chain of segment names from ``segment`` to one of ``targets``, if its tree leads there."""
    if segment.pk in seen:
        return None
    seen.add(segment.pk)
    for ref in referenced_segments(segment.rules):
        if ref in targets:
            return [segment.name]
        inner = Segment.objects.filter(pk=ref).first()
        if inner is not None:
            found = _reaches(inner, targets, seen)
            if found:
                return [segment.name, *found]
    return None


def validate(rules, segment_id=None) -> list[RuleError]:
    """Every problem in a tree, each naming where it is; empty when the tree is good.

    ``segment_id``: the segment the tree belongs to (when it is saved already), so that a
    condition leading back to it through other segments is refused.
    """
    check = _Check(segment_id)
    if not isinstance(rules, dict) or not ("match" in rules or "rules" in rules):
        check.fail("rules", 'the top of the tree must be a group: {"match": "all", "rules": [...]}')
    else:
        check.group(rules, "", 0, frozenset())
    return check.errors
