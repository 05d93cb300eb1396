"""Submitted mail that names a template: ``X-Herald-Template: <id or slug>``.

The client's message then carries the data, not the content: a JSON object in
``X-Herald-Template-Data`` (or, for data too large for a header, a body or
body part of type application/json), and any attachments to send along.
Herald renders the template for each recipient, as the transactional API
does, and stores the rendered messages in place of the submitted one, before
the client gets its 250. A template that does not exist, data that is not a
JSON object, a template whose From address the login may not use, or one that
fails to render: the client gets a 550 that says which, and nothing is stored.

The templates belong to an app above this one (automations), which registers
the renderer when Django starts; without one, such mail is refused.
"""

from collections.abc import Callable

TEMPLATE_HEADER = "X-Herald-Template"
DATA_HEADER = "X-Herald-Template-Data"


class Refused(Exception):
    """The SMTP reply that refuses the message."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


_renderer: Callable | None = None


def register(render: Callable) -> None:
    """``render(login, item) -> [Accepted]``: the messages to store for a submitted ``item`` naming a template
    (its ``template``), one per recipient; raises Refused."""
    global _renderer
    _renderer = render


def render(login, item) -> list:
    if _renderer is None:
        raise Refused(f"550 5.6.0 Templates are not available on this server; send the message without {TEMPLATE_HEADER}")
    return _renderer(login, item)
