"""Tokens in mail already sent keep working: a faster signer must give byte for byte the tokens Herald gave."""

from django.core import signing

from delivery import tokens

KEY = "a known key for the token test"
# Tokens Herald signed under KEY: the VERP, open, click, unsubscribe and view links of mail out there.
SIGNED = [
    (("open", 123456), "2n9c-7lre6ip3zjk3vypx"),
    (("click", 123456, 7), "2n9c-7-tpq7idho2rd5e6kf"),
    (("bounce", 1), "1-teneeslzdvhnewha"),
    (("unsubscribe", 2**40), "e13wu1og-ezs6wv626lt6goes"),
    (("view", 99), "2r-tfyq774nrkgtqmo6"),
]


def test_tracking_tokens_are_the_ones_already_in_mailboxes(settings):
    settings.SECRET_KEY = KEY
    for (purpose, *parts), token in SIGNED:
        assert tokens.sign(purpose, *parts) == token
        assert tokens.unsign(purpose, token) == tuple(parts)


def test_preference_links_are_django_signer_s_and_verify_as_before(settings):
    settings.SECRET_KEY = KEY
    assert tokens.preferences_token(send_id=5) == "s5:wiWR8b6xBSr-rYBOqpJDfrHY5oJprS2fGx0rtDkd7us"
    assert tokens.preferences_token(contact_id=77) == "c25:7FP5Ze4BlA39g-W_fI4OAQWJEhzqmDnxpy0rzIGqxEE"
    for n in (0, 1, 35, 10**12):
        token = tokens.preferences_token(send_id=n)
        assert token == signing.Signer(salt=tokens.PREFERENCES_SALT).sign(token.partition(":")[0])
        assert tokens.read_preferences_token(token) == ("send", n)
    # Under another key the same link is refused.
    settings.SECRET_KEY = KEY + " rotated"
    assert tokens.read_preferences_token("s5:wiWR8b6xBSr-rYBOqpJDfrHY5oJprS2fGx0rtDkd7us") is None
