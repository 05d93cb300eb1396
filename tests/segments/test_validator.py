"""A rule tree is checked before it is saved, and each error names the condition at fault by its path."""

import pytest

from campaigns.models import MailingList, Segment
from segments.rules import validate

pytestmark = pytest.mark.django_db


def messages(rules, segment_id=None):
    return {e.path: e.message for e in validate(rules, segment_id)}


def test_a_good_tree_has_no_errors():
    news = MailingList.objects.create(name="News")
    assert validate({"match": "all", "rules": [
        {"type": "list", "list": news.pk},
        {"match": "none", "rules": [{"type": "opened", "within_days": 90}]},
    ]}) == []


def test_an_unknown_field_is_named_with_its_place_in_the_tree():
    found = messages({"match": "all", "rules": [
        {"type": "opened"},
        {"match": "any", "rules": [{"type": "field", "field": "shoe_size", "op": "equals", "value": "9"}]},
    ]})
    assert list(found) == ["rules[1].rules[0].field"]
    assert "unknown field 'shoe_size'" in found["rules[1].rules[0].field"]


def test_an_unknown_condition_and_key_are_named():
    found = messages({"match": "all", "rules": [{"type": "horoscope"}, {"type": "opened", "colour": "red"}]})
    assert "unknown condition 'horoscope'" in found["rules[0].type"]
    assert "unknown field" in found["rules[1].colour"]


@pytest.mark.parametrize("condition,path,words", [
    ({"type": "attribute", "key": "age", "kind": "number", "op": "gt", "value": "thirty"}, "value", "number"),
    ({"type": "attribute", "key": "plan", "kind": "text", "op": "gt", "value": 3}, "op", "does not apply to text"),
    ({"type": "attribute", "key": "born", "kind": "date", "op": "before", "value": "31/12/1990"}, "value", "YYYY-MM-DD"),
    ({"type": "attribute", "key": "age", "kind": "number", "op": "between", "value": [40, 20]}, "value", "low end"),
    ({"type": "opened", "within_days": "ninety"}, "within_days", "whole number of days"),
    ({"type": "field", "field": "created_at", "op": "contains", "value": "2020"}, "op", "does not apply to date"),
    ({"type": "list", "list": 999999}, "list", "no list with id 999999"),
    ({"type": "provider", "group": "nobody"}, "group", "no throttle group"),
    ({"type": "unopened", "count": 0}, "count", "1 or more"),
])
def test_a_wrong_type_is_refused(condition, path, words):
    found = messages({"match": "any", "rules": [{"type": "opened"}, condition]})
    assert list(found) == [f"rules[1].{path}"], found
    assert words in found[f"rules[1].{path}"]


def test_the_top_must_be_a_group():
    assert "top of the tree" in messages({"type": "opened"})["rules"]


def test_a_segment_cannot_contain_itself_directly_or_through_others():
    first = Segment.objects.create(name="First", rules={"match": "all", "rules": [{"type": "opened"}]})
    second = Segment.objects.create(name="Second", rules={"match": "all", "rules": [{"type": "segment", "segment": first.pk}]})
    assert "cannot contain itself" in messages({"match": "all", "rules": [{"type": "segment", "segment": first.pk}]},
                                                first.pk)["rules[0].segment"]
    found = messages({"match": "any", "rules": [{"type": "segment", "segment": second.pk}]}, first.pk)
    assert "Second → First" not in found["rules[0].segment"] and "cannot contain itself" in found["rules[0].segment"]
    # A segment may name another that does not lead back to it.
    assert validate({"match": "all", "rules": [{"type": "segment", "segment": first.pk}]}, second.pk) == []
