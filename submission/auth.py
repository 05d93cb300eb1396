"""Checking logins for the submission server, and limiting failed ones per client address."""

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.db import close_old_connections

from submission.models import SmtpCredential

log = logging.getLogger(__name__)

PERIOD_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Login:
    """What a session knows about the credential it authenticated with."""

    id: int
    username: str
    domains: tuple
    rate_limit: int
    rate_period: int
    tracking: bool
    default_tag: str

    def may_send_from(self, address: str) -> bool:
        return address_domain(address) in self.domains


def address_domain(address: str) -> str:
    """The domain of an address already parsed out of its header (never of a raw header value)."""
    return address.rpartition("@")[2].strip().lower().rstrip(".")


class Verifier:
    """Checks a username and secret against the stored hash.

    Django's password hashers are slow on purpose (hundreds of milliseconds),
    and clients log in on every connection, so a secret that verified once is
    remembered by its SHA-256 together with the stored hash it matched. Rotating
    the secret changes the stored hash and so invalidates the memory at once;
    disabling the credential is seen because the row is read on every login.
    """

    def __init__(self):
        self._verified: dict[tuple[str, bytes], str] = {}
        self._dummy_hash = None

    def verify(self, username: str, secret: str) -> Login | None:
        close_old_connections()
        row = SmtpCredential.objects.filter(username=username).first()
        fingerprint = hashlib.sha256(secret.encode()).digest()
        if row is None or not row.enabled or not row.secret_hash:
            # Spend the same time as a real check so that logins do not reveal
            # which usernames exist.
            if self._dummy_hash is None:
                self._dummy_hash = make_password(secrets.token_urlsafe(24))
            check_password(secret, self._dummy_hash)
            return None
        if self._verified.get((username, fingerprint)) != row.secret_hash:
            if not row.check_secret(secret):
                return None
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[(username, fingerprint)] = row.secret_hash
        return Login(
            id=row.pk,
            username=row.username,
            domains=tuple(row.domain_list()),
            rate_limit=row.rate_limit,
            rate_period=PERIOD_SECONDS[row.rate_period],
            tracking=row.tracking,
            default_tag=row.default_tag,
        )


class Limits:
    """Counters in Redis, so that they hold across server processes and machines."""

    def __init__(self, redis):
        self.redis = redis
        self.max_failures = getattr(settings, "HERALD_SUBMISSION_AUTH_FAILURES", 5)
        self.failure_window = getattr(settings, "HERALD_SUBMISSION_AUTH_WINDOW", 300)

    def _fail_key(self, ip: str) -> str:
        return f"herald:submission:authfail:{ip}"

    async def login_blocked_for(self, ip: str) -> int:
        """Seconds until this address may try again, or 0 when it may log in now."""
        try:
            failures, ttl = await self.redis.pipeline().get(self._fail_key(ip)).ttl(self._fail_key(ip)).execute()
        except Exception:
            log.exception("Redis unavailable: not limiting failed logins")
            return 0
        if failures is not None and int(failures) >= self.max_failures:
            return max(int(ttl), 1)
        return 0

    async def record_failure(self, ip: str) -> None:
        # The window restarts with each failure: a client that keeps guessing
        # stays blocked.
        try:
            await self.redis.pipeline().incr(self._fail_key(ip)).expire(self._fail_key(ip), self.failure_window).execute()
        except Exception:
            log.exception("Redis unavailable: failed login from %s not counted", ip)

    async def take_message(self, login: Login) -> bool:
        """Count one message against the credential's rate; False when the limit is reached."""
        if not login.rate_limit:
            return True
        window = int(time.time() // login.rate_period)
        key = f"herald:submission:rate:{login.id}:{window}"
        try:
            count, _ = await self.redis.pipeline().incr(key).expire(key, login.rate_period + 5).execute()
        except Exception:
            log.exception("Redis unavailable: not limiting the rate of %s", login.username)
            return True
        return count <= login.rate_limit
