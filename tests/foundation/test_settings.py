import os
import subprocess
import sys

import pytest

from campaigns.models import Contact


def run_check(env_overrides):
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "name,value",
    [("DEBUG", "maybe"), ("HERALD_RETRY_FIRST_DELAY", "five"), ("HERALD_GIVE_UP_AFTER", "-3")],
)
def test_bad_setting_fails_at_start_naming_the_variable(name, value):
    result = run_check({name: value})
    assert result.returncode != 0
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_defaults_start_with_only_a_secret_key_or_debug():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    for setting in ({"SECRET_KEY": "a-long-random-string-0123456789-abcdefghijklmnopqrstuvwxyz"}, {"DEBUG": "true"}):
        result = subprocess.run([sys.executable, "manage.py", "check"], env={**env, **setting}, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_contact_email_is_trimmed_and_unique_case_insensitively():
    from django.db import IntegrityError, transaction

    alice = Contact.objects.create(email="  Alice@Example.COM ")
    assert alice.email == "Alice@Example.COM"
    with pytest.raises(IntegrityError), transaction.atomic():
        Contact.objects.create(email="alice@example.com")
