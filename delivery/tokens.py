"""Signed tokens that tie what comes back (bounces, opens, clicks, unsubscribes) to a Send.

A token is ``<send id in base 36>[-<link index>]-<MAC>``: short enough for the
64-octet local part of a VERP address, lower-case so that MTAs which fold case
do not break it, and keyed per purpose so an open token is no click token. The
MAC is 80 bits of HMAC-SHA256 under a key derived from SECRET_KEY. Tokens are
always signed with SECRET_KEY and accepted under it or any key in
SECRET_KEY_FALLBACKS, so links in mail already sent keep working after a
rotation for as long as the old key stays listed there.
"""

import base64
import hashlib
import hmac
from functools import lru_cache

from django.conf import settings
from django.core import signing

PURPOSES = ("bounce", "unsubscribe", "open", "click", "view")
_MAC_CHARS = 16
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # ten bits -> two characters


@lru_cache(maxsize=4096)  # a message signs its send id several times over
def _b36(number: int) -> str:
    if number < 0:
        raise ValueError("token parts must not be negative")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


@lru_cache(maxsize=64)
def _key(purpose: str, secret: str) -> bytes:
    return hashlib.sha256(f"herald.tokens:{purpose}:{secret}".encode()).digest()


def _mac(purpose: str, body: str, secret: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    # The first 16 characters of the digest's base 32 (RFC 4648, lower-cased) are its first 80 bits,
    # read here ten bits at a time rather than by base64.b32encode, which loops in Python.
    n = int.from_bytes(hmac.digest(_key(purpose, secret), body.encode(), "sha256")[:10], "big")
    p = _B32_PAIRS
    return (p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
            + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023])


def _verifies(purpose: str, body: str, mac: str) -> bool:
    if hmac.compare_digest(mac, _mac(purpose, body, settings.SECRET_KEY)):
        return True
    return any(hmac.compare_digest(mac, _mac(purpose, body, old)) for old in settings.SECRET_KEY_FALLBACKS)


def sign(purpose: str, *parts: int) -> str:
    body = "-".join(_b36(p) for p in parts)
    return f"{body}-{_mac(purpose, body, settings.SECRET_KEY)}"


def unsign(purpose: str, token: str):
    """The integer parts of a valid token, or None for anything tampered, truncated or foreign."""
    if not isinstance(token, str) or len(token) > 100:
        return None
    token = token.strip().lower()
    body, _, mac = token.rpartition("-")
    if not body or len(mac) != _MAC_CHARS or not _verifies(purpose, body, mac):
        return None
    try:
        return tuple(int(p, 36) for p in body.split("-"))
    except ValueError:
        return None


def verp_address(send_id: int) -> str:
    return f"bounces+{sign('bounce', send_id)}@{settings.HERALD_BOUNCE_DOMAIN}"


def unsubscribe_mailto(send_id: int) -> str:
    return f"unsubscribe+{sign('unsubscribe', send_id)}@{settings.HERALD_BOUNCE_DOMAIN}"


# Public tracking URLs; tracking/urls.py answers these paths.
def open_url(send_id: int) -> str:
    return f"{settings.HERALD_BASE_URL}/t/o/{sign('open', send_id)}.gif"


def click_url(send_id: int, index: int) -> str:
    return f"{settings.HERALD_BASE_URL}/t/c/{sign('click', send_id, index)}"


def unsubscribe_url(send_id: int) -> str:
    return f"{settings.HERALD_BASE_URL}/t/u/{sign('unsubscribe', send_id)}"


def view_url(send_id: int) -> str:
    return f"{settings.HERALD_BASE_URL}/t/v/{sign('view', send_id)}"


# The preference centre: one link per message (``s``: a send) or per contact
# (``c``: pages and mail that have no send), signed with Django's signer under
# its own salt. It never expires: a newsletter from last year still leads to
# the recipient's own settings, and erasing the contact makes it lead nowhere.
PREFERENCES_SALT = "herald.preferences"


def _b36_or_none(text: str):
    try:
        return int(text, 36)
    except ValueError:
        return None


@lru_cache(maxsize=8)
def _preferences_key(secret: str) -> bytes:
    """The key Django's Signer(salt=PREFERENCES_SALT) derives on every call (django.utils.crypto.salted_hmac)."""
    return hashlib.sha256(f"{PREFERENCES_SALT}signer{secret}".encode()).digest()


def preferences_token(*, send_id: int | None = None, contact_id: int | None = None) -> str:
    """Exactly Django's ``Signer(salt=PREFERENCES_SALT).sign(body)``, with its key derived once, not per message."""
    body = f"s{_b36(send_id)}" if send_id is not None else f"c{_b36(contact_id)}"
    mac = base64.urlsafe_b64encode(hmac.digest(_preferences_key(settings.SECRET_KEY), body.encode(), "sha256"))
    return f"{body}:{mac.rstrip(b'=').decode()}"


def read_preferences_token(token: str):
    """("send" or "contact", id) for a valid token; None for anything tampered or foreign."""
    if not isinstance(token, str) or len(token) > 100:
        return None
    try:
        body = signing.Signer(salt=PREFERENCES_SALT).unsign(token)
    except signing.BadSignature:
        return None
    number = _b36_or_none(body[1:]) if body[:1] in ("s", "c") and body[1:] else None
    if number is None:
        return None
    return ("send" if body[0] == "s" else "contact"), number


def preferences_url(send_id: int) -> str:
    return f"{settings.HERALD_BASE_URL}/s/p/{preferences_token(send_id=send_id)}/"


def contact_preferences_url(contact_id: int) -> str:
    return f"{settings.HERALD_BASE_URL}/s/p/{preferences_token(contact_id=contact_id)}/"
