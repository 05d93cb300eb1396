"""Herald's WSGI application: Django, with the hosted signup forms served by a lighter handler.

    gunicorn herald.wsgi:application

A form on a busy site takes hundreds of signups a second, and for a page that
needs no login, no session and no CSRF cookie, the session, authentication,
messages, CSRF, audit, time-zone and sign-in-lockout middleware cost more than
the signup itself. So /s/<slug>/ goes through a Django handler of its own with
only the middleware such a page needs (PUBLIC_MIDDLEWARE, in the order
settings.MIDDLEWARE gives them): the client's address from a trusted proxy, the
security headers, the language, the common checks (Host, slashes) and
X-Frame-Options. The view, URL resolver, templates and error pages are the same
as for every other path; only the signup form's own path takes this handler.
"""

import os
import re

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
django_application = get_wsgi_application()

from django.conf import settings  # noqa: E402  (after Django is set up)
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

PUBLIC_MIDDLEWARE = (
    "herald.proxy.TrustedProxyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)
# The hosted form, /s/<slug>/ (one path segment: the confirmation and preference links have two).
SIGNUP_FORM = re.compile(r"^/s/[-a-zA-Z0-9_]+/$")


class PublicFormHandler(WSGIHandler):
    """Django's WSGI handler with only PUBLIC_MIDDLEWARE, each used as Django would (all are synchronous)."""

    def load_middleware(self, is_async=False):
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        handler = convert_exception_to_response(self._get_response)
        for path in reversed([name for name in settings.MIDDLEWARE if name in PUBLIC_MIDDLEWARE]):
            instance = import_string(path)(handler)
            if hasattr(instance, "process_view"):
                self._view_middleware.insert(0, instance.process_view)
            if hasattr(instance, "process_template_response"):
                self._template_response_middleware.append(instance.process_template_response)
            if hasattr(instance, "process_exception"):
                self._exception_middleware.append(instance.process_exception)
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler


public_forms = PublicFormHandler()


def application(environ, start_response):
    if SIGNUP_FORM.match(environ.get("PATH_INFO", "")):
        return public_forms(environ, start_response)
    return django_application(environ, start_response)
