"""Sends without a campaign: where the engine and tracking find how to build them and where their links lead.

Such sends come from apps above delivery and tracking, which neither may
import: the SMTP submission server (a stored message: the Send carries its
``outbound_id``) and automations (a message composed at send time from a
template: no outbound id). Each registers its functions here when Django
starts (in its AppConfig.ready); with none registered, building such a send
fails with a reason and its clicks lead nowhere.
"""

from collections.abc import Callable

_builder: Callable | None = None
_link_for: Callable | None = None
_senders: Callable | None = None
_composed: tuple[Callable, Callable] | None = None


def register(*, build: Callable, link_for: Callable, senders: Callable | None = None) -> None:
    """``build(send) -> BuiltMessage`` for the engine; ``link_for(send, index) -> url or None`` for the click
    redirect; ``senders(ids) -> {id: (From domain, tag)}`` for routing rules by sending domain and kind."""
    global _builder, _link_for, _senders
    _builder, _link_for, _senders = build, link_for, senders


def register_composed(*, build: Callable, link_for: Callable) -> None:
    """The same two functions for sends with neither a campaign nor a stored message."""
    global _composed
    _composed = (build, link_for)


# Tags of messages stored through the transactional API (automations.transactional): routed as "transactional".
TRANSACTIONAL_TAG = "transactional:"


def sending_domains(outbound_ids) -> dict:
    """The checked From domain of each submitted message, for routing; {} when the submission app is not installed."""
    return {pk: domain for pk, (domain, _tag) in senders(outbound_ids).items()}


def senders(outbound_ids) -> dict:
    """{id: (From domain, tag)} of stored messages, for routing rules by sending domain and by kind."""
    return _senders(outbound_ids) if _senders is not None else {}


def kind_of(outbound_id, tag: str | None) -> str:
    """A send without a campaign: "automation" when composed at send time (no stored message), "transactional"
    when stored through the transactional API, else "submitted" (SMTP submission and Herald's own mail)."""
    if outbound_id is None:
        return "automation"
    return "transactional" if (tag or "").startswith(TRANSACTIONAL_TAG) else "submitted"


def build(send):
    """The delivery.message.BuiltMessage of a send that has no campaign."""
    if send.outbound_id is None and _composed is not None:
        return _composed[0](send)
    if _builder is None:
        raise RuntimeError("a submitted message cannot be built: the submission app is not installed")
    return _builder(send)


def link_for(send, index: int) -> str | None:
    if send.outbound_id is None:
        return _composed[1](send, index) if _composed is not None else None
    return _link_for(send, index) if _link_for is not None else None
