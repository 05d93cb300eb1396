"""Signed values of the public pages, each under a salt of its own (Django's signing, keyed by SECRET_KEY).

- the form token: when a form page was served, so a post that comes back
  faster than a person types is refused (and one from a stale page too);
- the confirmation token: which contact confirms which lists, expiring;
- the export token: a download link of one contact's data, mailed to them, expiring.

Preference links are made in delivery.tokens, since every message carries one.
"""

import time

from django.conf import settings
from django.core import signing

FORM_SALT = "herald.signup.form"
CONFIRM_SALT = "herald.signup.confirm"
EXPORT_SALT = "herald.preferences.export"


class TooFast(Exception):
    pass


def form_token(form_id: int) -> str:
    return signing.TimestampSigner(salt=FORM_SALT).sign(str(form_id))


def check_form_token(token: str, form_id: int) -> bool:
    """True for a token of this form served between HERALD_SIGNUP_MIN_SECONDS and HERALD_SIGNUP_FORM_MAX_AGE ago.

    Raises TooFast for a post quicker than a person; False for anything forged,
    of another form, or too old.
    """
    signer = signing.TimestampSigner(salt=FORM_SALT)
    try:
        value = signer.unsign(token or "", max_age=settings.HERALD_SIGNUP_FORM_MAX_AGE)
        stamp = signing.b62_decode(token.rsplit(":", 2)[1])
    except (signing.BadSignature, ValueError, IndexError):
        return False
    if value != str(form_id):
        return False
    if time.time() - stamp < settings.HERALD_SIGNUP_MIN_SECONDS:
        raise TooFast
    return True


def confirm_token(contact_id: int, form_id: int, list_ids) -> str:
    return signing.TimestampSigner(salt=CONFIRM_SALT).sign_object({"c": contact_id, "f": form_id, "l": sorted(list_ids)})


def read_confirm_token(token: str):
    """(contact id, form id, [list ids]) for a valid token; raises signing.SignatureExpired when it is too old,
    and returns None for anything forged."""
    signer = signing.TimestampSigner(salt=CONFIRM_SALT)
    max_age = settings.HERALD_CONFIRM_LINK_DAYS * 86400
    try:
        data = signer.unsign_object(token, max_age=max_age)
    except signing.SignatureExpired:
        raise
    except (signing.BadSignature, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), int) or not isinstance(data.get("l"), list):
        return None
    return data["c"], data.get("f"), [int(i) for i in data["l"] if isinstance(i, int)]


def export_token(contact_id: int) -> str:
    return signing.TimestampSigner(salt=EXPORT_SALT).sign(str(contact_id))


def read_export_token(token: str):
    try:
        return int(signing.TimestampSigner(salt=EXPORT_SALT).unsign(token, max_age=settings.HERALD_EXPORT_LINK_HOURS * 3600))
    except (signing.BadSignature, ValueError):
        return None
