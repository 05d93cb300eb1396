import pytest
import redis as redis_lib
from django.conf import settings

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
