"""A model field that keeps secrets (relay passwords, DKIM keys) encrypted at rest.

Every value is stored as ``fernet:<Fernet token>``, whatever it contains. The
keys come from HERALD_ENCRYPTION_KEY, newest first: the first encrypts, each
one decrypts (Fernet's MultiFernet), so a new key can be put in front of the
old one and ``manage.py rotate_secrets`` then re-encrypts everything under it.
Without HERALD_ENCRYPTION_KEY the key derives from SECRET_KEY (and values
under SECRET_KEY_FALLBACKS stay readable); values written that way are also
read after HERALD_ENCRYPTION_KEY is set, until rotate_secrets moves them.

Older versions of Herald stored a value as it was when it already began with
``fernet:``, and values from before encryption as plain text: both still read
back as they were, and are encrypted the next time they are saved.
"""

import base64
import binascii
import hashlib
import re
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

_PREFIX = "fernet:"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def _fernet_for(key: str) -> Fernet:
    digest = hashlib.sha256(("herald.fields:" + key).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def key_list(value) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [key.strip() for key in value or () if key and key.strip()]


def keys() -> tuple[str, ...]:
    """The keys that decrypt, the one that encrypts first."""
    derived = [settings.SECRET_KEY, *key_list(getattr(settings, "SECRET_KEY_FALLBACKS", ()))]
    configured = key_list(getattr(settings, "HERALD_ENCRYPTION_KEY", ()))
    # Before several keys were accepted, a key could contain a comma: it still decrypts.
    whole = [",".join(configured)] if len(configured) > 1 else []
    return tuple(dict.fromkeys(configured + derived + whole))


@lru_cache(maxsize=8)
def _multi(key_list: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([_fernet_for(key) for key in key_list])


def _current() -> MultiFernet:
    return _multi(keys())


def newest() -> Fernet:
    return _fernet_for(keys()[0])


def encrypt(value: str) -> str:
    return _PREFIX + _current().encrypt(value.encode()).decode()


def is_token(text: str) -> bool:
    """Whether text has the shape of a Fernet token: version 0x80, timestamp, IV, whole AES blocks, HMAC."""
    if not _TOKEN.match(text):
        return False
    try:
        raw = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        return False
    return len(raw) >= 73 and (len(raw) - 57) % 16 == 0 and raw[0] == 0x80


def is_encrypted(stored: str) -> bool:
    """Whether a stored value is ciphertext rather than plain text written by an older Herald."""
    return stored.startswith(_PREFIX) and is_token(stored[len(_PREFIX):])


def under_newest_key(stored: str) -> bool:
    """Whether a stored value is ciphertext that the newest key decrypts (nothing for rotate_secrets to do)."""
    if not is_encrypted(stored):
        return False
    try:
        newest().decrypt(stored[len(_PREFIX):].encode())
    except InvalidToken:
        return False
    return True


def decrypt(stored: str) -> str:
    if not is_encrypted(stored):
        return stored
    try:
        return _current().decrypt(stored[len(_PREFIX):].encode()).decode()
    except InvalidToken:
        raise ValueError("stored secret cannot be decrypted with any key: was HERALD_ENCRYPTION_KEY (or SECRET_KEY) "
                         "changed without keeping the old key after the new one?") from None


class EncryptedTextField(models.TextField):
    """Plain text in Python, Fernet ciphertext in the database."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        # Always encrypted: a value that merely looks like ciphertext is still a secret.
        return encrypt(value)
