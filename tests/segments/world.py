"""A small cast whose every condition type picks someone different, built with the ORM alone so that it
stands up the same on PostgreSQL and SQLite; and the cases: a rule tree and who it must match."""

import datetime

from django.utils import timezone


def days_ago(n):
    return timezone.now() - datetime.timedelta(days=n)


def build():
    from campaigns.models import Campaign, Contact, MailingList, Segment, Subscription, Suppression
    from delivery.models import DomainThrottle, Send
    from tracking.models import Event

    today = timezone.localdate()
    soon = today + datetime.timedelta(days=3)
    news = MailingList.objects.create(name="News")  # single opt-in: unconfirmed members receive it
    offers = MailingList.objects.create(name="Offers", optin="double")
    people = {}
    for name, email, attrs in [
        ("Ann", "ann@example.com", {"country": "DE", "plan": "gold", "age": "34", "vip": True,
                                    "birthday": f"2000-{soon:%m-%d}", "signup": "2019-05-01"}),
        ("Bob", "bob@gmail.com", {"country": "FR", "plan": "silver", "age": 52, "vip": False, "signup": "2021-03-03"}),
        ("Cat", "cat@Example.org", {"country": "DE", "age": "abc"}),
        ("Dan", "dan@mail.example.com", {"signup": (today - datetime.timedelta(days=5)).isoformat()}),
        ("Eve", "eve@googlemail.com", {"plan": "gold", "age": 25.5}),
    ]:
        people[name.lower()] = Contact.objects.create(email=email, first_name=name, attributes=attrs)
    ann, bob, cat, dan, eve = (people[k] for k in ("ann", "bob", "cat", "dan", "eve"))
    Contact.objects.filter(pk=ann.pk).update(created_at=days_ago(400))
    Contact.objects.filter(pk=eve.pk).update(status="unsubscribed")
    for contact, lst, status, joined in [(ann, news, "confirmed", 10), (bob, news, "confirmed", 90),
                                         (dan, news, "unconfirmed", 90), (cat, offers, "unsubscribed", 90),
                                         (dan, offers, "confirmed", 90)]:
        sub = Subscription.objects.create(contact=contact, mailing_list=lst, status=status)
        Subscription.objects.filter(pk=sub.pk).update(created_at=days_ago(joined))
    DomainThrottle.objects.create(name="google", domains="gmail.com, googlemail.com", rate=10)
    first = Campaign.objects.create(name="First", subject="1", from_email="n@herald.example", status="finished")
    second = Campaign.objects.create(name="Second", subject="2", from_email="n@herald.example", status="finished")

    def send(contact, campaign, age):
        return Send.objects.create(campaign=campaign, contact=contact, email=contact.email,
                                   domain=contact.domain, status="sent", sent_at=days_ago(age))

    def event(contact, kind, age, campaign=None, machine=False, url=""):
        row = Event.objects.create(type=kind, contact=contact, campaign=campaign, email=contact.email,
                                   machine=machine, url=url)
        Event.objects.filter(pk=row.pk).update(created_at=days_ago(age))

    send(ann, first, 30), send(ann, second, 20), send(bob, first, 30), send(dan, first, 30), send(dan, second, 20)
    send(eve, second, 400)
    event(ann, "open", 10, first)
    event(ann, "click", 10, first, url="https://example.com/a")
    event(bob, "open", 5, first, machine=True)
    event(bob, "click", 5, first, machine=True, url="https://example.com/a")
    event(eve, "open", 300, second)
    for age in (1, 2, 100):
        event(bob, "soft_bounce", age)
    event(cat, "complaint", 50)
    Suppression.objects.create(email=cat.email, reason="complaint")
    event(dan, "bounce", 200)
    Suppression.objects.create(email=dan.email, reason="hard_bounce")
    germans = Segment.objects.create(name="Germans", rules={"match": "all", "rules": [
        {"type": "attribute", "key": "country", "op": "equals", "value": "DE"}]})
    return {"news": news.pk, "offers": offers.pk, "first": first.pk, "second": second.pk, "germans": germans.pk}


def _attr(key, op, value=None, kind="text"):
    return {"type": "attribute", "key": key, "kind": kind, "op": op, **({} if value is None else {"value": value})}


def cases(w):
    """(name, condition or group, names matched)."""
    return [
        ("list subscribed", {"type": "list", "list": w["news"]}, "ann bob dan"),
        ("list confirmed", {"type": "list", "list": w["news"], "status": "confirmed"}, "ann bob"),
        ("list unconfirmed", {"type": "list", "list": w["news"], "status": "unconfirmed"}, "dan"),
        ("list unsubscribed", {"type": "list", "list": w["offers"], "status": "unsubscribed"}, "cat"),
        ("double opt-in list", {"type": "list", "list": w["offers"]}, "dan"),
        ("list joined lately", {"type": "list", "list": w["news"], "since": {"op": "in_last_days", "value": 30}}, "ann"),
        ("email contains", {"type": "field", "field": "email", "op": "contains", "value": "EXAMPLE"}, "ann cat dan"),
        ("first name equals", {"type": "field", "field": "first_name", "op": "equals", "value": "Ann"}, "ann"),
        ("created long ago", {"type": "field", "field": "created_at", "op": "more_than_days_ago", "value": 365}, "ann"),
        ("created lately", {"type": "field", "field": "created_at", "op": "in_last_days", "value": 1}, "bob cat dan eve"),
        ("status", {"type": "field", "field": "status", "op": "equals", "value": "unsubscribed"}, "eve"),
        ("attribute equals", _attr("country", "equals", "DE"), "ann cat"),
        ("attribute in", _attr("plan", "in", ["gold", "silver"]), "ann bob eve"),
        ("attribute starts with", _attr("plan", "starts_with", "go"), "ann eve"),
        ("attribute contains", _attr("plan", "contains", "IL"), "bob"),
        ("number greater", _attr("age", "gt", 30, "number"), "ann bob"),
        ("number between", _attr("age", "between", [25, 40], "number"), "ann eve"),
        ("number less", _attr("age", "lt", 30, "number"), "eve"),
        ("attribute exists", _attr("plan", "exists"), "ann bob eve"),
        ("boolean true", _attr("vip", "is", True, "boolean"), "ann"),
        ("boolean false", _attr("vip", "is", False, "boolean"), "bob"),
        ("anniversary", _attr("birthday", "anniversary_in_next_days", 7, "date"), "ann"),
        ("date before", _attr("signup", "before", "2020-01-01", "date"), "ann"),
        ("date between", _attr("signup", "between", ["2019-01-01", "2021-03-03"], "date"), "ann bob"),
        ("date in last days", _attr("signup", "in_last_days", 30, "date"), "dan"),
        ("domain equals", {"type": "domain", "op": "equals", "value": "example.com"}, "ann"),
        ("domain ends with", {"type": "domain", "op": "ends_with", "value": "example.com"}, "ann dan"),
        ("domain in", {"type": "domain", "op": "in", "value": ["example.org", "gmail.com"]}, "bob cat"),
        ("provider group", {"type": "provider", "group": "google"}, "bob eve"),
        ("opened ever", {"type": "opened"}, "ann eve"),
        ("opened lately", {"type": "opened", "within_days": 30}, "ann"),
        ("opened, machines too", {"type": "opened", "within_days": 30, "include_machine": True}, "ann bob"),
        ("opened a campaign", {"type": "opened", "campaign": w["second"]}, "eve"),
        ("clicked", {"type": "clicked"}, "ann"),
        ("clicked a link", {"type": "clicked_link", "url": "https://example.com/a", "include_machine": True}, "ann bob"),
        ("clicked another link", {"type": "clicked_link", "url": "https://example.com/b"}, ""),
        ("unopened twice", {"type": "unopened", "count": 2}, "dan"),
        ("unopened once", {"type": "unopened", "count": 1}, "bob dan"),
        ("unopened once, machines count", {"type": "unopened", "count": 1, "include_machine": True}, "dan"),
        ("active lately", {"type": "last_activity", "op": "in_last_days", "value": 30}, "ann"),
        ("inactive lately", {"type": "last_activity", "op": "more_than_days_ago", "value": 30}, "eve"),
        ("never active", {"type": "last_activity", "op": "never"}, "bob cat dan"),
        ("soft bounces", {"type": "soft_bounces", "op": "gte", "value": 3}, "bob"),
        ("soft bounces lately", {"type": "soft_bounces", "op": "equals", "value": 2, "within_days": 30}, "bob"),
        ("no soft bounces", {"type": "soft_bounces", "op": "equals", "value": 0}, "ann cat dan eve"),
        ("fewer soft bounces", {"type": "soft_bounces", "op": "lt", "value": 3}, "ann cat dan eve"),
        ("soft bounces between", {"type": "soft_bounces", "op": "between", "value": [1, 3]}, "bob"),
        ("bounced ever", {"type": "last_bounce", "op": "ever"}, "dan"),
        ("bounced long ago", {"type": "last_bounce", "op": "more_than_days_ago", "value": 100}, "dan"),
        ("bounced lately", {"type": "last_bounce", "op": "in_last_days", "value": 30}, ""),
        ("complained", {"type": "complained"}, "cat"),
        ("suppressed", {"type": "suppressed"}, "cat dan"),
        ("suppressed for a bounce", {"type": "suppressed", "reason": "hard_bounce"}, "dan"),
        ("in a segment", {"type": "segment", "segment": w["germans"]}, "ann cat"),
        ("in no segment", {"match": "none", "rules": [{"type": "segment", "segment": w["germans"]}]}, "bob dan eve"),
        ("two groups", {"match": "all", "rules": [
            {"match": "any", "rules": [_attr("country", "equals", "DE"), _attr("country", "equals", "FR")]},
            {"type": "opened", "within_days": 30, "include_machine": True}]}, "ann bob"),
    ]


def tree(node):
    return node if "match" in node else {"match": "all", "rules": [node]}


def evaluate(w):
    """{case name: matched first names, lower-cased and sorted}; each tree is validated first."""
    from campaigns.models import Contact
    from segments.compiler import compile_rules
    from segments.rules import validate

    out = {}
    for name, node, _ in cases(w):
        rules = tree(node)
        errors = validate(rules)
        assert not errors, (name, [str(e) for e in errors])
        out[name] = " ".join(sorted(Contact.objects.filter(compile_rules(rules)).values_list("first_name", flat=True))
                             ).lower()
    return out


def snapshot(w):
    """A campaign to the News list and the Germans segment, minus the Offers list: (count shown, names snapshotted)."""
    from campaigns.models import Campaign
    from delivery import planner
    from delivery.models import Send

    campaign = Campaign.objects.create(name="Mixed", subject="x", from_email="n@herald.example", html_body="x")
    campaign.lists.set([w["news"]])
    campaign.segments.set([w["germans"]])
    campaign.exclude_lists.set([w["offers"]])
    count = planner.count_audience(campaign)
    planner.snapshot_range(campaign, 0, planner.highest_contact_id())
    sent = Send.objects.filter(campaign=campaign).order_by("email").values_list("contact__first_name", flat=True)
    return count, " ".join(sent).lower()
