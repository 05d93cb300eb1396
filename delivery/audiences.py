"""Audiences beyond whole lists: where the snapshot finds who a campaign's segments and follow-up reach.

Segments are worked out from engagement (tracking's events), which delivery may
not import. The app that compiles them registers its function here when Django
starts (``register`` in its AppConfig.ready); with none registered, a campaign
aimed at a segment or following another one cannot start, and says why.
"""

from collections.abc import Callable

from django.db.models import Q

_resolver: Callable | None = None
_notes: Callable | None = None


class AudienceUnavailable(Exception):
    """The campaign's audience needs segments, and no app that compiles them is installed."""


def register(resolve: Callable, notes: Callable | None = None) -> None:
    """``resolve(campaign) -> Q`` over Contact: everyone the campaign targets, before suppressions and status;
    ``notes(campaign) -> [sentence]``: what the send confirmation should say about its audience beyond the count."""
    global _resolver, _notes
    _resolver, _notes = resolve, notes


def targeted(campaign) -> Q:
    if _resolver is None:
        raise AudienceUnavailable("segments and follow-ups need the segments app, which is not installed")
    return _resolver(campaign)


def notes(campaign) -> list[str]:
    return list(_notes(campaign)) if _notes is not None else []
