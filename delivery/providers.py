"""Which mailbox provider an MX host set belongs to, from the ProviderRule table.

Direct mode counts sends per destination group: without these rules, each
Microsoft 365 tenant (its own ``*.mail.protection.outlook.com`` host) and each
Google Workspace domain (its own subset of Google's hosts) would get a limit of
its own, and one provider would take many times its limit.
"""

import threading
import time

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from delivery.models import ProviderRule

TTL = 5.0
_state = {"at": 0.0, "rules": []}  # [(suffix, name)], longest suffix first
_lock = threading.Lock()


def _rules():
    if time.monotonic() - _state["at"] > TTL:
        rules = ProviderRule.objects.filter(enabled=True).values_list("mx_suffix", "name")
        with _lock:
            _state["rules"] = sorted(rules, key=lambda r: -len(r[0]))
            _state["at"] = time.monotonic()
    return _state["rules"]


def matches(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


def provider_of(mx_names) -> str | None:
    """The provider of the first MX host (by preference) that a rule names, or None."""
    rules = _rules()
    for host in mx_names:
        host = host.lower().rstrip(".")
        for suffix, name in rules:
            if matches(host, suffix):
                return name
    return None


def forget():
    _state["at"] = 0.0


@receiver([post_save, post_delete], sender=ProviderRule, dispatch_uid="herald-provider-rules")
def rules_changed(**kwargs):
    forget()
