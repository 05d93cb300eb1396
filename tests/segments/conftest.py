import pytest

from campaigns.models import ApiToken
from delivery import engine, mx, providers, routing
from delivery.models import Relay
from delivery.smtp import pool
from delivery.throttle import throttles


@pytest.fixture
def relay(sink, redis_client):
    """Every send goes to the SMTP sink; the engine's caches start empty."""
    routing.forget_relay()
    throttles.invalidate()
    mx.clear_cache()
    providers.forget()
    engine._compiled.clear()
    relay = Relay.objects.create(name="sink", host="127.0.0.1", port=sink.port, security=Relay.Security.NONE)
    routing.forget_relay()
    yield relay
    pool.close_all()
    routing.forget_relay()
    throttles.invalidate()


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")


@pytest.fixture
def api(client, admin_user):
    """A client that sends a superuser's bearer token."""
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {ApiToken.issue(admin_user)[1]}"
    return client
