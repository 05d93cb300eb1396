"""Settings that decide which URLs exist take effect only when the URLconf is loaded again."""

import importlib
import sys
from contextlib import contextmanager

from django.conf import settings
from django.test import override_settings
from django.urls import clear_url_caches


def reload_urls():
    clear_url_caches()
    module = sys.modules.get(settings.ROOT_URLCONF)
    if module is not None:
        importlib.reload(module)
    clear_url_caches()


@contextmanager
def url_settings(**overrides):
    """override_settings for settings read by the URLconf; the shipped URLs come back afterwards."""
    try:
        with override_settings(**overrides):
            reload_urls()
            yield
    finally:
        reload_urls()
