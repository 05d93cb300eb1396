"""herald.wsgi serves the hosted signup form through a lighter Django handler; a visitor cannot tell the difference."""

import io
import re
from urllib.parse import urlencode

import pytest

from audience.models import ConfirmationDue, SignupForm
from campaigns.models import MailingList, Subscription
from herald import wsgi
from tests.audience.signup_support import served_ago

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_the_test_connection")]



@pytest.fixture
def form(db, redis_client):
    weekly = MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)
    form = SignupForm.objects.create(name="Weekly", slug="weekly", consent_text="Yes please", language="de",
                                     from_email="news@shop.example", fields=[{"name": "first_name"}])
    form.lists.add(weekly)
    return form


def call(application, method="GET", fields=None, host="127.0.0.1", remote="198.51.100.7", **extra):
    body = urlencode(fields or {}).encode()
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": "/s/weekly/", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "HTTP_HOST": host, "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": remote,
        "CONTENT_TYPE": "application/x-www-form-urlencoded", "HTTP_ACCEPT_LANGUAGE": "de", **extra,
    }
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)

    answer["body"] = b"".join(application(environ, start_response))
    return answer


def same_for_a_visitor(light, full):
    """Status, body and headers alike, but for the time-stamped ones and the session's Vary: Cookie."""
    assert light["status"] == full["status"] and light["body"] == full["body"]
    assert light["headers"].pop("Vary") == "Accept-Language" and full["headers"].pop("Vary") == "Accept-Language, Cookie"
    for answer in (light, full):
        answer["headers"].pop("Expires")
    assert light["headers"] == full["headers"]


def without_token(answer):
    return {**answer, "body": re.sub(rb'name="ts" value="[^"]+"', b"", answer["body"])}


def test_the_form_page_and_its_errors_are_answered_as_by_the_full_stack(form):
    full, light = call(wsgi.django_application), call(wsgi.application)
    assert light["status"] == "200 OK" and b'name="email"' in light["body"]
    same_for_a_visitor(without_token(light), without_token(full))
    assert light["headers"]["X-Frame-Options"] == "DENY" and light["headers"]["X-Content-Type-Options"] == "nosniff"
    bad = {"email": "not an address", "ts": served_ago(form), "first_name": "Ann"}
    full, light = call(wsgi.django_application, "POST", bad), call(wsgi.application, "POST", bad)
    assert light["status"] == "400 Bad Request"
    same_for_a_visitor(without_token(light), without_token(full))


def test_a_signup_through_herald_wsgi_is_stored_and_thanked_as_by_the_full_stack(form):
    token = served_ago(form)
    full = call(wsgi.django_application, "POST", {"email": "ann@example.org", "ts": token, "first_name": "Ann"})
    light = call(wsgi.application, "POST", {"email": "bob@example.org", "ts": token, "first_name": "Bob"},
                 HTTP_USER_AGENT="Mozilla/5.0 (light)")
    assert light["status"] == "200 OK" and b"Vielen Dank" in light["body"]
    same_for_a_visitor(light, full)
    sub = Subscription.objects.get(contact__email="bob@example.org")
    assert (sub.status, sub.consent_ip, sub.consent_user_agent) == ("unconfirmed", "198.51.100.7", "Mozilla/5.0 (light)")
    assert ConfirmationDue.objects.filter(contact=sub.contact).exists()


def test_behind_a_trusted_proxy_the_signup_keeps_the_visitors_address(form, settings):
    settings.HERALD_TRUSTED_PROXIES = ["10.0.0.0/8"]
    handler = wsgi.PublicFormHandler()  # the proxy list is read when the middleware is made
    answer = call(handler, "POST", {"email": "ann@example.org", "ts": served_ago(form)}, remote="10.0.0.2",
                  HTTP_X_FORWARDED_FOR="203.0.113.9, 10.0.0.3")
    assert answer["status"] == "200 OK"
    assert Subscription.objects.get().consent_ip == "203.0.113.9"
    # From an address that is not a proxy, the header is the visitor's own claim and is not believed.
    call(handler, "POST", {"email": "bob@example.org", "ts": served_ago(form)}, remote="198.51.100.4",
         HTTP_X_FORWARDED_FOR="203.0.113.10")
    assert Subscription.objects.get(contact__email="bob@example.org").consent_ip == "198.51.100.4"


def test_a_host_herald_does_not_serve_is_refused_and_nothing_is_stored(form):
    answer = call(wsgi.application, "POST", {"email": "ann@example.org", "ts": served_ago(form)}, host="evil.example")
    assert answer["status"] == "400 Bad Request"
    assert not Subscription.objects.exists()


def test_only_the_form_itself_takes_the_lighter_handler():
    assert wsgi.SIGNUP_FORM.match("/s/weekly/")
    for path in ("/s/c/abc:def/", "/s/p/abc/", "/s/export/abc/", "/admin/", "/s/weekly/extra/"):
        assert not wsgi.SIGNUP_FORM.match(path), path
