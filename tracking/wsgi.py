"""A WSGI entry point that serves the open pixel and the click redirect before Django's stack.

    gunicorn tracking.wsgi:application      (a drop-in for herald.wsgi:application)

Opens and clicks are most of the requests a large campaign brings, and each is
a token check and one INSERT; URL resolution and the middleware (sessions,
CSRF, messages, locale) would cost more than the work itself. Every other path,
and any pixel or click request this does not recognise, goes to herald.wsgi's
application unchanged, so answers are the same as from herald.wsgi: 404 for a bad token,
no-cache headers on the GIF, 302 to the stored link only.
"""

import re

# isort: off
from herald.wsgi import application as django_application  # first: it sets Django up
from django.core import signals

from delivery.tokens import unsign
from tracking import hotpath
# isort: on

_OPEN = re.compile(r"^/t/o/([0-9a-zA-Z-]{1,100})\.gif$")
_CLICK = re.compile(r"^/t/c/([0-9a-zA-Z-]{1,100})$")
_NO_CACHE = [
    ("Cache-Control", "max-age=0, no-cache, no-store, must-revalidate, private"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
]


def _pixel(environ, start_response, token):
    parts = unsign("open", token)
    if not parts or len(parts) != 1:
        return None
    if not hotpath.record_open(parts[0], environ.get("HTTP_USER_AGENT", "")):
        return None
    start_response("200 OK", [("Content-Type", "image/gif"), ("Content-Length", str(len(hotpath.PIXEL))), *_NO_CACHE])
    return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [hotpath.PIXEL]


def _click(environ, start_response, token):
    parts = unsign("click", token)
    if not parts or len(parts) != 2:
        return None
    url = hotpath.record_click(parts[0], parts[1], environ.get("HTTP_USER_AGENT", ""),
                               head=environ["REQUEST_METHOD"] == "HEAD")
    if url is None:
        return None
    # The stored URL came from the campaign; as Django's redirect does, allow only
    # http(s), and never a header value with CR/LF in it. The click is recorded.
    if not url.lower().startswith(("http://", "https://")) or "\r" in url or "\n" in url:
        start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"This link cannot be followed.\n"]
    start_response("302 Found", [("Location", url), ("Content-Length", "0"), *_NO_CACHE])
    return [b""]


def application(environ, start_response):
    if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
        path = environ.get("PATH_INFO", "")
        for pattern, handler in ((_OPEN, _pixel), (_CLICK, _click)):
            match = pattern.match(path)
            if match is None:
                continue
            # The signals Django's own handler sends: they recycle database connections.
            signals.request_started.send(sender=__name__, environ=environ)
            try:
                answer = handler(environ, start_response, match.group(1))
            finally:
                signals.request_finished.send(sender=__name__)
            if answer is not None:
                return answer
            break  # unknown token or send: Django answers its usual 404
    return django_application(environ, start_response)
