"""Schemathesis against /api/v1/openapi.json: no 500s, responses match the schema, and no call without a token."""

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.db import transaction
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
)

from campaigns.models import ApiToken, Campaign, Contact, MailingList, Segment


def _isolated(application):
    """Each request in a savepoint rolled back afterwards: a refused value spoils that request only, as in autocommit."""

    def app(environ, start_response):
        if environ["PATH_INFO"].endswith("/openapi.json"):  # read once, at collection, with no database
            return application(environ, start_response)
        with transaction.atomic():
            body = list(application(environ, start_response))
            # Undo the request: its savepoint may hold a failed statement (a refused value).
            transaction.set_rollback(True)
            return body

    return app


def _load():
    from herald.wsgi import application

    loaded = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _isolated(application))
    # Examples and fuzzing only: the coverage phase's hundreds of boundary cases
    # per operation would take minutes; the fuzzer reaches the same code paths.
    loaded.config.phases.coverage.enabled = False
    return loaded


schema = _load()
pytestmark = pytest.mark.usefixtures("keep_the_test_connection")


@pytest.fixture
def token(db):
    """A superuser's token, and a little data so that ids in paths sometimes exist."""
    user = get_user_model().objects.create(username="schema", is_staff=True, is_superuser=True)  # no password to hash
    lst = MailingList.objects.create(name="Readers")
    Contact.objects.create(email="reader@example.com")
    campaign = Campaign.objects.create(name="Schema", subject="Hi", from_email="news@example.com", html_body="<p>x</p>")
    campaign.lists.add(lst)
    Segment.objects.create(name="Openers", rules={"match": "all", "rules": [{"type": "opened", "within_days": 30}]})
    return ApiToken.issue(user)[1]


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, response_headers_conformance,
          ignored_auth]


@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema(case, token):
    """Fresh random inputs each run: over many runs this explores far more than any fixed set."""
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_answers_within_its_schema_on_pinned_inputs(case, token):
    """The same inputs on every run (derived from the test's name): a failure here reproduces on any machine."""
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_refuses_calls_without_a_valid_token(case, token):
    for headers in ({}, {"Authorization": "Bearer hrld_guessed"}, {"Authorization": f"Bearer {token}x"}):
        response = case.call(headers=headers)
        assert response.status_code == 401, f"{case.method} {case.formatted_path} answered {response.status_code} to {headers}"
        assert "reader@example.com" not in response.text
