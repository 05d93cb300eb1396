import io

import pytest
from django.test import Client

from campaigns.models import ApiToken, MailingList


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    """Uploaded files and error reports go to a directory of the test's own."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def readers(db):
    return MailingList.objects.create(name="Readers")


@pytest.fixture
def csv_bytes():
    """A file object over the given bytes, as an upload or an open file would be."""
    return lambda data: io.BytesIO(data)


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")


@pytest.fixture
def token(admin_user):
    return ApiToken.issue(admin_user)[1]


@pytest.fixture
def api(token):
    """A client that sends the bearer token."""
    return Client(headers={"Authorization": f"Bearer {token}"})
