"""Signing in to the admin: lockout after repeated failures, and an optional TOTP second factor.

Runs with the shipped settings: lockout is on by default, with no fixture that tunes it.
"""

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.support.wait import wait_until

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def quick_password_hashing(settings):
    """Dozens of sign-ins: hash with MD5 here, as lockout and the second factor do not depend on the hasher."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operator():
    return User.objects.create_user("olivia", password=PASSWORD, is_staff=True, is_superuser=True)


def sign_in(client, username, password, address="203.0.113.7", **extra):
    return client.post(LOGIN, {"username": username, "password": password, **extra}, REMOTE_ADDR=address)


def signed_in(client):
    return client.get("/admin/").status_code == 200


def current_code(device, offset=0):
    """The code the operator's app shows now; after a wrong code, once django-otp's back-off allows another try."""
    wait_until(lambda: TOTPDevice.objects.get(pk=device.pk).verify_is_allowed()[0], timeout=10,
               message="the back-off after a wrong code to pass")
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=offset):06d}"


def test_the_right_password_is_refused_after_too_many_wrong_ones(client, operator):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "olivia", "guess").status_code == 200  # the form again, with its error
    assert sign_in(client, "olivia", "guess").status_code == 429  # the last failure allowed locks
    response = sign_in(client, "olivia", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed sign-ins" in response.content.decode()
    assert not signed_in(client)


def test_a_locked_user_name_stays_locked_from_another_address(client, operator):
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, "olivia", "guess", address=f"198.51.100.{n + 1}")
    assert sign_in(client, "olivia", PASSWORD, address="192.0.2.200").status_code == 429


def test_an_address_guessing_many_user_names_is_locked_for_all_of_them(client, operator):
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, f"user{n}", "guess", address="198.51.100.99")
    assert sign_in(client, "olivia", PASSWORD, address="198.51.100.99").status_code == 429
    assert sign_in(client, "olivia", PASSWORD, address="192.0.2.1").status_code == 302


def test_a_success_resets_the_count(client, operator):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in(client, "olivia", "guess")
    assert sign_in(client, "olivia", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in(client, "olivia", "guess")
    assert sign_in(client, "olivia", PASSWORD).status_code == 302


def test_the_sign_in_page_asks_for_the_code_beside_the_password(client):
    page = client.get(LOGIN).content.decode()
    assert 'name="otp_token"' in page and "Authentication code" in page


def test_without_a_second_factor_the_password_alone_signs_in(client, operator):
    assert sign_in(client, "olivia", PASSWORD).status_code == 302
    assert signed_in(client)


def turn_on_two_factor(client):
    page = client.get("/admin/herald/two-factor/")
    assert "Two-factor authentication is off" in page.content.decode()
    assert "<svg" in page.content.decode()  # the QR code to scan
    device = TOTPDevice.objects.get(confirmed=False)
    assert device.config_url.startswith("otpauth://totp/") and "issuer=Herald" in device.config_url
    wrong = client.post("/admin/herald/two-factor/", {"action": "confirm", "token": "000000"})
    assert "wrong or expired" in wrong.content.decode()
    done = client.post("/admin/herald/two-factor/", {"action": "confirm", "token": current_code(device)}, follow=True)
    assert "Two-factor authentication is on" in done.content.decode()
    device.refresh_from_db()
    assert device.confirmed
    return device


def test_with_a_second_factor_the_password_alone_no_longer_signs_in(client, operator):
    client.force_login(operator)
    device = turn_on_two_factor(client)
    client.logout()

    response = sign_in(client, "olivia", PASSWORD)
    assert response.status_code == 200
    assert "enter the code from your authenticator app" in response.content.decode()
    assert not signed_in(client)

    assert "code is wrong" in sign_in(client, "olivia", PASSWORD, otp_token="123456").content.decode()
    assert not signed_in(client)

    assert sign_in(client, "olivia", PASSWORD, otp_token=current_code(device, offset=1)).status_code == 302
    assert signed_in(client)


def test_a_wrong_password_with_the_right_code_is_still_refused(client, operator):
    client.force_login(operator)
    device = turn_on_two_factor(client)
    client.logout()
    response = sign_in(client, "olivia", "guess", otp_token=current_code(device))
    assert response.status_code == 200 and not signed_in(client)


def test_turning_the_second_factor_off_needs_a_current_code(client, operator):
    client.force_login(operator)
    device = turn_on_two_factor(client)
    refused = client.post("/admin/herald/two-factor/", {"action": "disable", "token": "000000"})
    assert "wrong or expired" in refused.content.decode()
    assert TOTPDevice.objects.filter(confirmed=True).exists()
    client.post("/admin/herald/two-factor/", {"action": "disable", "token": current_code(device, offset=1)})
    assert not TOTPDevice.objects.filter(user=operator, confirmed=True).exists()


def test_the_two_factor_page_needs_a_signed_in_operator(client):
    response = client.get("/admin/herald/two-factor/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_other_operators_never_see_an_authenticator_key(client, operator):
    client.force_login(operator)
    device = turn_on_two_factor(client)
    listing = client.get("/admin/otp_totp/totpdevice/").content.decode()
    assert "olivia" in listing
    detail = client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/").content.decode()
    assert device.key not in listing + detail and "otpauth" not in listing + detail
