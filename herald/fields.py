"""A model field that keeps secrets (relay passwords, DKIM keys) encrypted at rest."""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import models

_PREFIX = "fernet:"


def _fernet():
    key = getattr(settings, "HERALD_ENCRYPTION_KEY", "") or settings.SECRET_KEY
    digest = hashlib.sha256(("herald.fields:" + key).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(value: str) -> str:
    return _PREFIX + _fernet().encrypt(value.encode()).decode()


def decrypt(stored: str) -> str:
    if not stored.startswith(_PREFIX):
        return stored
    try:
        return _fernet().decrypt(stored[len(_PREFIX):].encode()).decode()
    except InvalidToken:
        raise ValueError("stored secret cannot be decrypted: was SECRET_KEY (or HERALD_ENCRYPTION_KEY) changed?") from None


class EncryptedTextField(models.TextField):
    """Plain text in Python, Fernet ciphertext in the database."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, "") or value.startswith(_PREFIX):
            return value
        return encrypt(value)
