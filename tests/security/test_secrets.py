"""Keys: rotating SECRET_KEY and HERALD_ENCRYPTION_KEY loses nothing, no secret is stored in plain text,
production refuses to make up a key, and forwarded headers count only from trusted proxies."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import signals
from django.core.management import call_command
from django.db import close_old_connections, connection
from django.test import RequestFactory, override_settings

from campaigns.models import Campaign, Contact, MailingList, Subscription
from delivery import tokens
from delivery.models import Relay, Send, SendingDomain
from herald import fields
from tracking.models import Event

ROOT = Path(__file__).resolve().parents[2]
OLD_KEY = "old-secret-key-of-last-year-0123456789abcdefghijklmnopqrstuvwxyz"
NEW_KEY = "new-secret-key-of-this-year-zyxwvutsrqponmlkjihgfedcba9876543210"
OLD_VAULT = "old-encryption-key-kept-with-the-backups-0123456789"
NEW_VAULT = "new-encryption-key-kept-with-the-backups-9876543210"


@pytest.fixture
def alice_send(db):
    newsletter = MailingList.objects.create(name="Newsletter")
    alice = Contact.objects.create(email="alice@example.org")
    Subscription.objects.create(contact=alice, mailing_list=newsletter)
    campaign = Campaign.objects.create(name="Spring", subject="Spring", from_email="news@shop.example",
                                       html_body="<p>Hi</p>", status=Campaign.Status.FINISHED)
    campaign.lists.add(newsletter)
    return Send.objects.create(campaign=campaign, contact=alice, email=alice.email, domain="example.org",
                               status=Send.Status.SENT)


def path_of(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def stored(model, pk, column):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {model._meta.db_table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def store_raw(model, pk, column, value):
    """Write a column as an older Herald left it, past the field."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {model._meta.db_table} SET {column} = %s WHERE id = %s", [value, pk])  # noqa: S608


# --- SECRET_KEY rotation ---------------------------------------------------------------------------------------


def test_an_unsubscribe_link_sent_before_a_key_rotation_still_unsubscribes(client, alice_send):
    with override_settings(SECRET_KEY=OLD_KEY, SECRET_KEY_FALLBACKS=[]):
        old_link = path_of(tokens.unsubscribe_url(alice_send.pk))

    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[]):
        assert client.get(old_link).status_code == 404  # without the old key the link is foreign

    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY]):
        new_link = path_of(tokens.unsubscribe_url(alice_send.pk))
        response = client.post(old_link, {"scope": "all"})
        assert response.status_code == 200
        assert b"You are unsubscribed" in response.content
    assert Contact.objects.get(pk=alice_send.contact_id).status == Contact.Status.UNSUBSCRIBED

    # New links are signed with the new key alone.
    assert new_link != old_link
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[]):
        assert client.get(new_link).status_code == 200


def fast_path(path):
    """A GET through tracking.wsgi, keeping the test's connection (and transaction) as the test client does."""
    from tracking.wsgi import application

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1", "HTTP_USER_AGENT": "Mozilla/5.0",
               "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO()}
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"] = status

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        b"".join(application(environ, start_response))
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
    return answer["status"]


def test_the_wsgi_fast_path_records_an_open_from_before_a_key_rotation(alice_send):
    with override_settings(SECRET_KEY=OLD_KEY, SECRET_KEY_FALLBACKS=[]):
        pixel = path_of(tokens.open_url(alice_send.pk))
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[]):
        assert fast_path(pixel) == "404 Not Found"
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY]):
        assert fast_path(pixel) == "200 OK"
    assert Event.objects.filter(type="open", send=alice_send).count() == 1


# --- HERALD_ENCRYPTION_KEY rotation ----------------------------------------------------------------------------


def rotate():
    out = io.StringIO()
    call_command("rotate_secrets", stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_relay_passwords_survive_rotating_the_encryption_key_and_rotate_secrets_moves_them():
    with override_settings(HERALD_ENCRYPTION_KEY=[OLD_VAULT]):
        relay = Relay.objects.create(name="relay", host="smtp.example.net", username="herald", password="s3cret!")
        domain = SendingDomain.objects.create(domain="shop.example", private_key="-----BEGIN PRIVATE KEY-----\nx\n")

    with override_settings(HERALD_ENCRYPTION_KEY=[NEW_VAULT]):
        with pytest.raises(ValueError, match="cannot be decrypted"):
            Relay.objects.get(pk=relay.pk)

    with override_settings(HERALD_ENCRYPTION_KEY=[NEW_VAULT, OLD_VAULT]):
        assert Relay.objects.get(pk=relay.pk).password == "s3cret!"
        out = rotate()
        assert "delivery.Relay.password: 1 re-encrypted, 0 already current, 0 failed" in out
        assert "delivery.SendingDomain.private_key: 1 re-encrypted" in out
        # Idempotent: a second run finds nothing to do.
        assert "Total: 0 re-encrypted, 2 already current, 0 failed" in rotate()

    with override_settings(HERALD_ENCRYPTION_KEY=[NEW_VAULT]):
        assert Relay.objects.get(pk=relay.pk).password == "s3cret!"
        assert SendingDomain.objects.get(pk=domain.pk).private_key.startswith("-----BEGIN PRIVATE KEY-----")
    with override_settings(HERALD_ENCRYPTION_KEY=[OLD_VAULT]):
        with pytest.raises(ValueError):
            Relay.objects.get(pk=relay.pk)


@pytest.mark.django_db
def test_secrets_written_under_secret_key_move_to_a_new_encryption_key():
    with override_settings(HERALD_ENCRYPTION_KEY=[], SECRET_KEY=OLD_KEY, SECRET_KEY_FALLBACKS=[]):
        relay = Relay.objects.create(name="relay", host="smtp.example.net", password="s3cret!")
    # SECRET_KEY replaced, the old one kept as a fallback: still readable.
    with override_settings(HERALD_ENCRYPTION_KEY=[], SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY]):
        assert Relay.objects.get(pk=relay.pk).password == "s3cret!"
    # An encryption key of its own set, then rotate_secrets: SECRET_KEY no longer matters.
    with override_settings(HERALD_ENCRYPTION_KEY=[NEW_VAULT], SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY]):
        assert "Total: 1 re-encrypted" in rotate()
    with override_settings(HERALD_ENCRYPTION_KEY=[NEW_VAULT], SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[]):
        assert Relay.objects.get(pk=relay.pk).password == "s3cret!"


# --- every value encrypted ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("secret", ["fernet:abc", "fernet:", "fernet:gAAAAAB-looks-like-a-token", "plain"])
def test_a_secret_round_trips_and_is_stored_encrypted_whatever_it_looks_like(secret):
    relay = Relay.objects.create(name="relay", host="smtp.example.net", password=secret)
    assert Relay.objects.get(pk=relay.pk).password == secret
    raw = stored(Relay, relay.pk, "password")
    assert raw != secret and raw.startswith("fernet:gAAAAA")


@pytest.mark.django_db
def test_values_stored_by_earlier_versions_still_read_and_rotate_secrets_encrypts_them():
    relay = Relay.objects.create(name="relay", host="smtp.example.net")
    other = Relay.objects.create(name="other", host="smtp.example.org")
    # Earlier versions left these as they were: one starting with the prefix, one from before encryption.
    store_raw(Relay, relay.pk, "password", "fernet:abc")
    store_raw(Relay, other.pk, "password", "hunter2")
    assert Relay.objects.get(pk=relay.pk).password == "fernet:abc"
    assert Relay.objects.get(pk=other.pk).password == "hunter2"

    assert "delivery.Relay.password: 2 re-encrypted" in rotate()
    assert stored(Relay, relay.pk, "password").startswith("fernet:gAAAAA")
    assert stored(Relay, other.pk, "password").startswith("fernet:gAAAAA")
    assert Relay.objects.get(pk=relay.pk).password == "fernet:abc"
    assert Relay.objects.get(pk=other.pk).password == "hunter2"


# --- no key made up in production --------------------------------------------------------------------------------


def manage_check(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "SECRET_KEY_FILE", "DEBUG")}
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env={**base, "HERALD_VAR_DIR": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=120)


def test_without_secret_key_and_debug_off_herald_refuses_to_start(tmp_path):
    result = manage_check(tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr and "SECRET_KEY_FILE" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "secret_key").exists()  # nothing made up behind the operator's back


def test_a_secret_key_file_or_debug_starts_it(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(NEW_KEY + "\n")
    assert manage_check(tmp_path, SECRET_KEY_FILE=str(key_file)).returncode == 0
    debug = manage_check(tmp_path, DEBUG="true")
    assert debug.returncode == 0, debug.stderr
    assert (tmp_path / "secret_key").exists()


# --- forwarded headers -------------------------------------------------------------------------------------------

BEHIND_TLS_PROXY = {"SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"), "SECURE_SSL_REDIRECT": True}


def test_x_forwarded_proto_from_an_untrusted_address_does_not_make_a_request_secure(client):
    with override_settings(**BEHIND_TLS_PROXY):
        response = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 301
    assert response["Location"] == "https://testserver/admin/login/"


def test_x_forwarded_proto_from_a_trusted_proxy_does(client):
    with override_settings(**BEHIND_TLS_PROXY, HERALD_TRUSTED_PROXIES=["10.0.0.0/8"]):
        response = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="10.1.2.3")
        assert response.status_code == 200
        assert response.wsgi_request.is_secure()


def seen_by_views(remote_addr, **headers):
    from herald.proxy import TrustedProxyMiddleware

    seen = {}

    def view(request):
        seen.update(addr=request.META["REMOTE_ADDR"], forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR"))

    TrustedProxyMiddleware(view)(RequestFactory().get("/", REMOTE_ADDR=remote_addr, **headers))
    return seen


def test_x_forwarded_for_is_ignored_from_an_untrusted_address():
    seen = seen_by_views("203.0.113.9", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert seen == {"addr": "203.0.113.9", "forwarded_for": None}


@override_settings(HERALD_TRUSTED_PROXIES=["10.0.0.1", "192.168.0.0/16"])
def test_x_forwarded_for_names_the_client_nearest_the_trusted_proxies():
    # The left-most entry is whatever the client claimed; the right-most untrusted one is what our proxy saw.
    seen = seen_by_views("10.0.0.1", HTTP_X_FORWARDED_FOR="1.1.1.1, 198.51.100.7, 192.168.3.4")
    assert seen["addr"] == "198.51.100.7"
    assert seen_by_views("::ffff:10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.8")["addr"] == "198.51.100.8"
    assert seen_by_views("10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.8")["addr"] == "10.0.0.2"


@pytest.mark.django_db
def test_a_single_old_key_with_a_comma_in_it_still_decrypts():
    with override_settings(HERALD_ENCRYPTION_KEY=["first half", "second half"]):
        encrypted = fields.encrypt("s3cret!")
    # Written as one key "first half,second half" by a version that took the whole string:
    legacy = fields._PREFIX + fields._fernet_for("first half,second half").encrypt(b"s3cret!").decode()
    with override_settings(HERALD_ENCRYPTION_KEY=["first half", "second half"]):
        assert fields.decrypt(encrypted) == fields.decrypt(legacy) == "s3cret!"
