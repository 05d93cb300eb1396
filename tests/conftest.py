import pytest
import redis as redis_lib
from django.conf import settings
from django.core import signals
from django.db import close_old_connections

from tests.support.smtp import Sink


@pytest.fixture
def redis_client():
    """The test Redis database, emptied before each test that uses it."""
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def sink():
    with Sink() as server:
        yield server


def _transactional(item):
    marker = item.get_closest_marker("django_db")
    return bool(marker and marker.kwargs.get("transaction")) or bool(
        {"transactional_db", "live_server"} & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Put back the rows migrations ship (operator groups, provider rules) after a transactional test, and empty
    the statistics' table of changes not yet folded, which no model owns.

    Such a test ends by emptying every table of a model. Run alone, pytest-django orders
    those tests last; spread over several processes, any test may follow one.
    """
    yield
    if nextitem is None or not _transactional(item):
        return  # (after the last test the test database is gone)
    from importlib import import_module

    from django.apps import apps
    from pytest_django.plugin import blocking_manager_key

    labels = ("campaigns", "tracking")
    saved = {label: apps.get_app_config(label).models_module for label in labels}
    with item.config.stash[blocking_manager_key].unblock():
        try:
            # The data migrations mark these apps' configs for a migration's app registry.
            import_module("delivery.migrations.0002_operator_groups").create_groups(apps, None)
            import_module("tracking.migrations.0005_senders_see_events_and_suppressions").grant(apps, None)
            import_module("segments.migrations.0001_operator_groups").grant(apps, None)
        finally:
            for label, module in saved.items():
                apps.get_app_config(label).models_module = module
        import_module("delivery.migrations.0005_provider_rules").add_defaults(apps, None)
        from django.db import connection

        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE tracking_tallydelta")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output as valid UTF-8: fuzzing tests log undecodable peer bytes
    (as surrogates), which the reports between test processes cannot carry."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]


@pytest.fixture
def keep_the_test_connection(db):
    """For tests that call a WSGI application themselves, as Django's test client does: the request signals
    must not close the connection that holds the test's transaction."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)
