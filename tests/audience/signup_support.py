"""Helpers for the signup tests: a form served a while ago, and posting it as a visitor would."""

import re
import time

from django.core import signing

from audience import tokens


def served_ago(form, seconds=10) -> str:
    """The form token of a page served ``seconds`` ago (a person takes that long to fill it in)."""
    stamp = signing.b62_encode(int(time.time()) - seconds)
    return signing.Signer(salt=tokens.FORM_SALT).sign(f"{form.pk}:{stamp}")


def post_signup(client, form, email, ip="198.51.100.7", seconds=10, **fields):
    data = {"email": email, "ts": served_ago(form, seconds), "website": "", **fields}
    return client.post(f"/s/{form.slug}/", data, REMOTE_ADDR=ip, HTTP_USER_AGENT="Mozilla/5.0 (test)")


def token_in_page(html: str) -> str:
    return re.search(r'name="ts" value="([^"]+)"', html).group(1)


def confirm_link(text: str) -> str:
    return re.search(r"https?://\S+/s/c/\S+/", text).group(0)
