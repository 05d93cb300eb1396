"""Every message of the bounce corpus (real bounces, delays, auto-replies and mail from two decades of MTAs)
is read as the manifest says: its kind and the failed recipients it names.

The corpus and its sources are described in tests/tracking/bounce_corpus/README.md; bench/bounces.py
prints the same accuracy and the parsing speed.
"""

from collections import Counter

import pytest

from delivery import tokens
from tests.tracking.corpus import ROOT, outcome, samples
from tracking import bounces

SAMPLES = samples()
BOUNCES = ("hard", "soft", "policy")
# Messages Herald is known to read wrongly, with why; each is an xfail, never a silent miss.
KNOWN_MISSES = {}


def verp():
    return tokens.verp_address(42)


@pytest.mark.parametrize("sample", [
    pytest.param(s, id=s.path, marks=[pytest.mark.xfail(reason=KNOWN_MISSES[s.path], strict=True)]
                 if s.path in KNOWN_MISSES else []) for s in SAMPLES
])
def test_each_message_is_read_as_the_manifest_says(sample):
    reading = bounces.read(sample.raw, verp())
    assert outcome(reading) == (sample.kind, sample.recipients), reading.reason
    assert reading.reason
    if sample.kind in BOUNCES or sample.kind == "delayed":
        # Sent to a VERP address, every bounce ties back to its send, named recipient or not.
        assert reading.reports and all(r.send_id == 42 for r in reading.reports)
    elif sample.kind in ("auto_reply", "not_bounce"):
        assert reading.reports == []


def accuracy(envelope_rcpt):
    kinds = recipients = 0
    for sample in SAMPLES:
        kind, named = outcome(bounces.read(sample.raw, envelope_rcpt))
        kinds += kind == sample.kind
        recipients += named == sample.recipients
    return kinds / len(SAMPLES), recipients / len(SAMPLES)


def test_at_least_95_percent_right_with_and_without_the_verp_token():
    assert min(accuracy(verp())) >= 0.95
    # Without a token the kind is read the same way; the recipients come from the message alone.
    assert min(accuracy("")) >= 0.95


def test_the_corpus_is_as_large_and_varied_as_promised():
    kinds = Counter(s.kind for s in SAMPLES)
    assert sum(kinds[k] for k in BOUNCES) >= 150
    assert kinds["delayed"] + kinds["auto_reply"] + kinds["not_bounce"] >= 20
    assert len({s.family for s in SAMPLES if s.kind in BOUNCES and s.family != "unknown"}) >= 15
    assert all((ROOT / s.path).is_file() for s in SAMPLES)
    assert len(list(ROOT.glob("*/*.eml"))) == len(SAMPLES)  # no message without its expectation
    assert "licence" in (ROOT / "README.md").read_text().lower()


@pytest.mark.django_db
def test_every_message_is_recorded_and_none_suppresses_without_a_send_of_its_own():
    """Through the whole path (Events, suppressions), with a token whose send does not exist: nothing raises,
    every bounce, delay and complaint is recorded unverified with its reason, and nobody is suppressed."""
    from campaigns.models import Suppression
    from tracking.feedback import process_message
    from tracking.models import Event

    unknown = tokens.verp_address(999_999)
    for sample in SAMPLES:
        events = process_message(sample.raw, unknown, source="imap")
        assert all(e.send_id is None and e.reason for e in events), sample.path
        if sample.kind in ("auto_reply", "not_bounce"):
            assert events == [], sample.path
    assert Event.objects.filter(send__isnull=False).count() == 0
    assert not Suppression.objects.exists()
