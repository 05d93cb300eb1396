"""Each kind of condition picks the contacts it names, on PostgreSQL here and on SQLite in a process of its own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.segments import world

ROOT = Path(__file__).resolve().parents[2]
NAMES = [name for name, _, _ in world.cases({k: 0 for k in ("news", "offers", "first", "second", "germans")})]


@pytest.fixture
def cast(db):
    return world.build()


@pytest.mark.parametrize("name", NAMES)
def test_condition_on_postgresql(cast, name):
    expected = {n: e for n, _, e in world.cases(cast)}
    assert world.evaluate(cast)[name] == expected[name]


def test_every_condition_on_sqlite(tmp_path, redis_client):
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'herald.sqlite3'}", REDIS_URL=settings.REDIS_URL,
               HERALD_VAR_DIR=str(tmp_path / "var"), LOG_LEVEL="WARNING")

    def run(*argv):
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    run("manage.py", "migrate", "--noinput")
    found = json.loads(run("-m", "tests.segments.sqlite_site").strip().splitlines()[-1])
    expected = {n: e for n, _, e in world.cases({k: 0 for k in ("news", "offers", "first", "second", "germans")})}
    # Segments, lists and exclusions together, snapshotted: dan is suppressed, on Offers too.
    assert found.pop("snapshot") == [2, "ann bob"]
    # Ann, Bob and Eve opened or clicked: three rows, which the rebuild writes back when lost; deleted
    # events are taken back.
    assert found.pop("engagement") == [0, 3, 3, 0, 0, 0, 0]
    assert found == expected


def test_a_campaign_to_lists_and_segments_minus_a_list_on_postgresql(cast):
    assert world.snapshot(cast) == (2, "ann bob")


def test_a_click_found_to_be_a_scanners_later_no_longer_counts(db):
    """The latest-activity row follows the events: marking a click as a machine's after the fact takes it back."""
    from campaigns.models import Contact
    from segments.compiler import compile_rules
    from tracking.models import Engagement, Event

    ann = Contact.objects.create(email="ann@example.com")
    click = Event.objects.create(type="click", contact=ann, email=ann.email, url="https://example.com/")
    clicked = {"match": "all", "rules": [{"type": "clicked", "within_days": 1}]}
    assert list(Contact.objects.filter(compile_rules(clicked))) == [ann]
    Event.objects.filter(pk=click.pk).update(machine=True)
    assert not Contact.objects.filter(compile_rules(clicked)).exists()
    assert Engagement.objects.get(contact=ann).last_click_any_at == click.created_at
