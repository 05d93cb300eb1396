"""`manage.py check --deploy`: Herald's keys and proxy settings.

Warnings, as Django's own deployment checks are: `check --deploy --fail-level
WARNING` fails on any of them. A missing SECRET_KEY never gets this far: with
DEBUG off, Herald refuses to start without one.
"""

from django.conf import settings
from django.core import checks

from herald import fields
from herald.proxy import networks

# deploy/herald.env.example marks each value to replace with this.
PLACEHOLDER = "CHANGE-ME"
MIN_ENCRYPTION_KEY_LENGTH = 32


@checks.register(checks.Tags.security, deploy=True)
def check_keys(app_configs, **kwargs):
    found = []
    if PLACEHOLDER in settings.SECRET_KEY or any(PLACEHOLDER in key for key in settings.SECRET_KEY_FALLBACKS):
        found.append(checks.Warning(
            "SECRET_KEY is still the example's placeholder, which anyone can read.",
            hint="Set a long random string of your own: python3 -c 'import secrets; print(secrets.token_urlsafe(60))'",
            id="herald.W101"))
    configured = fields.key_list(settings.HERALD_ENCRYPTION_KEY)
    if not configured:
        found.append(checks.Warning(
            "HERALD_ENCRYPTION_KEY is not set: relay passwords and DKIM keys are encrypted with a key derived from "
            "SECRET_KEY, so replacing SECRET_KEY without keeping it in SECRET_KEY_FALLBACKS loses them.",
            hint="Set HERALD_ENCRYPTION_KEY to a long random string of its own, then run manage.py rotate_secrets.",
            id="herald.W102"))
    elif any(PLACEHOLDER in key or len(key) < MIN_ENCRYPTION_KEY_LENGTH for key in configured):
        found.append(checks.Warning(
            f"A key in HERALD_ENCRYPTION_KEY is the example's placeholder or shorter than {MIN_ENCRYPTION_KEY_LENGTH} "
            "characters.",
            hint="Put a long random key of your own first (new,old), run manage.py rotate_secrets, then drop the old one.",
            id="herald.W103"))
    return found


@checks.register(checks.Tags.security, deploy=True)
def check_proxies(app_configs, **kwargs):
    found = []
    everyone = [entry for entry, network in zip(settings.HERALD_TRUSTED_PROXIES, _each(settings.HERALD_TRUSTED_PROXIES),
                                                 strict=True) if network.prefixlen == 0]
    if everyone:
        found.append(checks.Warning(
            f"HERALD_TRUSTED_PROXIES trusts every address ({', '.join(everyone)}): any client can claim HTTPS with "
            "X-Forwarded-Proto and any address with X-Forwarded-For.",
            hint="List only the addresses (or networks) your TLS proxy connects from.",
            id="herald.W104"))
    if settings.SECURE_PROXY_SSL_HEADER and not settings.HERALD_TRUSTED_PROXIES:
        found.append(checks.Warning(
            "HERALD_BEHIND_TLS_PROXY is on but HERALD_TRUSTED_PROXIES is empty: X-Forwarded-Proto is ignored from "
            "every address, so no request counts as HTTPS (and SECURE_SSL_REDIRECT redirects forever).",
            hint="Set HERALD_TRUSTED_PROXIES to the addresses your TLS proxy connects from.",
            id="herald.W105"))
    return found


def _each(entries):
    """One network per entry, "*" being every address."""
    return [networks([entry])[0] for entry in entries]
