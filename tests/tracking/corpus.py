"""The bounce corpus (tests/tracking/bounce_corpus): real messages and what Herald should make of them."""

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "bounce_corpus"


@dataclass(frozen=True)
class Sample:
    path: str  # relative to ROOT
    family: str
    kind: str
    recipients: frozenset
    why: str

    @property
    def raw(self) -> bytes:
        return (ROOT / self.path).read_bytes()


def samples() -> list[Sample]:
    found = []
    for line in (ROOT / "manifest.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, family, kind, recipients, why = line.split("\t")
        named = frozenset() if recipients == "-" else frozenset(r.lower() for r in recipients.split())
        found.append(Sample(path, family, kind, named, why))
    return found


def outcome(reading) -> tuple[str, frozenset]:
    """The kind Herald gave a message and the recipients it named (a redacted complaint names nobody)."""
    named = frozenset(r.recipient.lower() for r in reading.reports if r.recipient and r.recipient_named)
    return reading.kind, named
