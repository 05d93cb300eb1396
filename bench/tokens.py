"""The cost of a message's signed links: what Herald signs per message against a plain baseline.

    .venv/bin/python bench/tokens.py [--messages 20000]

Per message Herald signs eight tokens: the open pixel, two click links, the
unsubscribe link and its mailto, the web view, the VERP return path and the
preference centre link. The baseline, in the same run, signs the same eight
the straightforward way (``hmac.new(...).digest()`` through
``base64.b32encode``, and Django's ``Signer`` for the preference link), which
is how Herald signed them before; both give the same tokens, which is checked
first. Prints microseconds per message, fastest of five rounds, and the
ratio. Needs no database.
"""

import argparse
import base64
import hashlib
import hmac
import os
import sys
import time
from pathlib import Path

import benchlib  # noqa: F401  (sets a SECRET_KEY for benchmark processes)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core import signing  # noqa: E402

from delivery import tokens  # noqa: E402


def plain_sign(purpose, *parts):
    body = "-".join(tokens._b36.__wrapped__(p) for p in parts)
    key = hashlib.sha256(f"herald.tokens:{purpose}:{settings.SECRET_KEY}".encode()).digest()
    mac = base64.b32encode(hmac.new(key, body.encode(), hashlib.sha256).digest()).decode().lower()[:16]
    return f"{body}-{mac}"


def plain_message(send_id):
    base, bounce = settings.HERALD_BASE_URL, settings.HERALD_BOUNCE_DOMAIN
    prefs = signing.Signer(salt=tokens.PREFERENCES_SALT).sign(f"s{tokens._b36.__wrapped__(send_id)}")
    return [f"{base}/t/o/{plain_sign('open', send_id)}.gif", f"{base}/t/c/{plain_sign('click', send_id, 1)}",
            f"{base}/t/c/{plain_sign('click', send_id, 2)}", f"{base}/t/u/{plain_sign('unsubscribe', send_id)}",
            f"{base}/t/v/{plain_sign('view', send_id)}", f"bounces+{plain_sign('bounce', send_id)}@{bounce}",
            f"{base}/s/p/{prefs}/", f"unsubscribe+{plain_sign('unsubscribe', send_id)}@{bounce}"]


def herald_message(send_id):
    return [tokens.open_url(send_id), tokens.click_url(send_id, 1), tokens.click_url(send_id, 2),
            tokens.unsubscribe_url(send_id), tokens.view_url(send_id), tokens.verp_address(send_id),
            tokens.preferences_url(send_id), tokens.unsubscribe_mailto(send_id)]


def per_message(sign_message, n):
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for send_id in range(1_000_000, 1_000_000 + n):
            sign_message(send_id)
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    for send_id in range(1, 10**9, 10**9 // 997):
        assert herald_message(send_id) == plain_message(send_id), send_id
    herald, plain = per_message(herald_message, args.messages), per_message(plain_message, args.messages)
    print(f"signed links, 8 per message, CPU time, fastest of 5 rounds of {args.messages} messages:")
    print(f"  Herald    {herald:7.1f} µs per message")
    print(f"  baseline  {plain:7.1f} µs per message (hmac.new + base64.b32encode, Django's Signer)")
    print(f"  ratio     {plain / herald:7.2f}x faster")


if __name__ == "__main__":
    main()
