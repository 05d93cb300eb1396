"""What an SMTP reply means for one recipient, and when to try again.

``classify_reply(code, text) -> Outcome`` is the one place that reads replies:
the engine, the retry schedule and the throttles act on its verdict.
"""

import random
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings

SENT = "sent"
DEFERRED = "deferred"
BOUNCED = "bounced"
FAILED = "failed"

# RFC 3463 enhanced status code at the start of the text: "5.1.1 no such user".
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Providers often answer 550 with no enhanced code, or a wrong one: the text
# tells a dead mailbox from a policy refusal.
_UNKNOWN_USER = re.compile(
    r"user unknown|unknown user|no such user|no such mailbox|mailbox unavailable|mailbox not found|"
    r"does not exist|doesn'?t exist|invalid recipient|recipient rejected|address rejected|"
    r"unknown recipient|account (?:has been )?disabled|no mailbox|not a valid mailbox|unrouteable",
    re.IGNORECASE,
)
_THROTTLE = re.compile(
    r"rate limit|too many|throttl|try again later|temporarily deferred|slow down|exceeded|unusual rate",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Outcome:
    status: str  # sent | deferred | bounced | failed
    code: int | None
    text: str
    suppress: bool = False  # a hard bounce: never mail this address again
    throttle: bool = False  # the destination asks us to slow down

    @property
    def final(self):
        return self.status != DEFERRED

    @property
    def reply(self):
        return f"{self.code} {self.text}".strip() if self.code else self.text


def enhanced_status(text: str) -> str:
    match = _STATUS.match(text or "")
    return ".".join(match.groups()) if match else ""


def classify_reply(code: int | None, text: str = "") -> Outcome:
    """Classify one recipient's reply; ``code=None`` means the connection broke or timed out."""
    text = (text or "").strip()
    if code is None:
        return Outcome(DEFERRED, None, text or "connection lost")
    status = enhanced_status(text)
    subject = status.split(".")[1] if status else ""
    if 200 <= code < 300:
        return Outcome(SENT, code, text)
    if 400 <= code < 500:
        throttle = code == 421 or subject == "7" or bool(_THROTTLE.search(text))
        return Outcome(DEFERRED, code, text, throttle=throttle)
    if 500 <= code < 600:
        if subject == "7":
            # Policy (reputation, authentication, content): the address is fine.
            return Outcome(FAILED, code, text)
        if subject == "1" or _UNKNOWN_USER.search(text):
            return Outcome(BOUNCED, code, text, suppress=True)
        return Outcome(FAILED, code, text)
    return Outcome(FAILED, code, text or "unexpected reply")


def retry_delay(attempts: int, rng=random) -> float:
    """Seconds before the next try after ``attempts`` tries: doubling, capped, with ±20% jitter."""
    first = settings.HERALD_RETRY_FIRST_DELAY
    cap = max(settings.HERALD_RETRY_MAX_DELAY, first)
    base = min(cap, first * (2 ** max(attempts - 1, 0)))
    return base * rng.uniform(0.8, 1.2) if base else 0.0


def next_attempt(first_attempt_at, attempts: int, now, rng=random):
    """When to try again, or None when the give-up age is reached (the send then fails)."""
    if first_attempt_at is not None and (now - first_attempt_at).total_seconds() >= settings.HERALD_GIVE_UP_AFTER:
        return None
    at = now + timedelta(seconds=retry_delay(attempts, rng))
    if first_attempt_at is not None and (at - first_attempt_at).total_seconds() > settings.HERALD_GIVE_UP_AFTER:
        # One last try at the give-up age rather than none at all.
        at = first_attempt_at + timedelta(seconds=settings.HERALD_GIVE_UP_AFTER)
    return at
