"""Who may never be mailed: the one place that adds suppressions."""

import hashlib
import hmac

from django.conf import settings
from django.db import connection, transaction

from campaigns.models import Contact, Suppression, email_key


def suppress(email: str, reason: str, detail: str = "", source_event_id=None) -> Suppression:
    """Suppress an address for every later campaign. Idempotent: the first reason stays."""
    key = email_key(email)
    with transaction.atomic():
        row, _ = Suppression.objects.get_or_create(
            email_key=key,
            defaults={"email": email.strip(), "reason": reason, "detail": detail[:2000], "source_event_id": source_event_id},
        )
        if reason in (Suppression.Reason.COMPLAINT, Suppression.Reason.HARD_BOUNCE):
            Contact.objects.filter(email_key=key, status=Contact.Status.ACTIVE).update(status=Contact.Status.BLOCKLISTED)
    return row


def is_suppressed(email: str) -> bool:
    return Suppression.objects.filter(email_key=email_key(email)).exists()


# --- erased addresses ------------------------------------------------------------
#
# Erasing a person leaves only a keyed hash of their address in the suppression
# list: nobody can read the address back, yet an import or the API that brings
# the same address in again finds it and blocklists the contact. The key is
# derived from SECRET_KEY (a rotation forgets erasures: keep the old key in
# SECRET_KEY_FALLBACKS only for tokens, not for this); HMAC-SHA256, which
# PostgreSQL computes from its built-in sha256 for a whole import at once.

ERASED_PREFIX = "erased:"


def _erase_key() -> bytes:
    return hashlib.sha256(f"herald.erased:{settings.SECRET_KEY}".encode()).digest()


def erased_key(address: str) -> str:
    return ERASED_PREFIX + hmac.new(_erase_key(), email_key(address).encode(), hashlib.sha256).hexdigest()


def record_erasure(address: str) -> None:
    """Replace the address's suppression (if any) by its keyed hash, so it stays unmailable without being kept."""
    with transaction.atomic(), connection.cursor() as cursor:
        # Not through the ORM: its delete signal would write the address into the audit log.
        cursor.execute(f"DELETE FROM {Suppression._meta.db_table} WHERE email_key = %s",  # noqa: S608
                       [email_key(address)])
        # bulk_create, since save() would derive the key from the (empty) address.
        Suppression.objects.bulk_create([Suppression(email="", email_key=erased_key(address),
                                                     reason=Suppression.Reason.ERASED)], ignore_conflicts=True)


def is_erased(address: str) -> bool:
    return Suppression.objects.filter(email_key=erased_key(address)).exists()


def erased_key_sql(column: str) -> tuple[str, dict]:
    """SQL for ``erased_key`` of a column of lower-cased addresses (PostgreSQL), with its parameters."""
    key = _erase_key().ljust(64, b"\0")
    params = {"erase_ipad": bytes(b ^ 0x36 for b in key), "erase_opad": bytes(b ^ 0x5C for b in key)}
    sql = (f"'{ERASED_PREFIX}' || encode(sha256(%(erase_opad)s || sha256(%(erase_ipad)s || "
           f"convert_to({column}, 'UTF8'))), 'hex')")
    return sql, params


def blocklist_erased_in(cursor, keys_sql: str) -> int:
    """Blocklist the contacts of ``keys_sql`` (a query of email keys) whose address was erased before (PostgreSQL)."""
    if not Suppression.objects.filter(reason=Suppression.Reason.ERASED).exists():
        return 0
    hashed, params = erased_key_sql("k.key")
    cursor.execute(
        f"UPDATE campaigns_contact c SET status = 'blocklisted' FROM ({keys_sql}) k(key) "  # noqa: S608
        f"WHERE c.email_key = k.key AND c.status <> 'blocklisted' AND EXISTS "
        f"(SELECT 1 FROM campaigns_suppression x WHERE x.email_key = {hashed})", params)
    return cursor.rowcount
