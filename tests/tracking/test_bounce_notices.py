"""Bounces that are not RFC 3464 DSNs, each pinned by a real message from the corpus: who failed, why,
and what Herald does about it (suppress, record only, or ignore)."""

import pytest

from campaigns.models import Contact, MailingList, Subscription, Suppression
from delivery import tokens
from tests.tracking.conftest import make_send
from tests.tracking.corpus import ROOT
from tracking import bounces
from tracking.feedback import process_message
from tracking.models import Event


def corpus(path):
    return (ROOT / path).read_bytes()


def verp(send_id=42):
    return tokens.verp_address(send_id)


@pytest.mark.parametrize("path,kind,recipient", [
    # qmail: "This is a permanent error; I've given up." and not a word more.
    ("flufl_bounce/qmail_01.eml", "hard", "userx@example.de"),
    # Exchange 5.5: "The recipient name is not recognized".
    ("flufl_bounce/groupwise_01.eml", "hard", "userx@example.edu"),
    # vpopmail files an unknown mailbox under 5.7.17: "no mailbox here by that name".
    ("bounce_email/tt_1234211932.eml", "hard", "dace.balode@rigasvilni.lv"),
    # Yahoo's own format, four failed recipients, accounts "disabled or discontinued".
    ("flufl_bounce/yahoo_07.eml", "hard", "userw@example.com"),
    # Lotus Domino: "not listed in Domino Directory".
    ("flufl_bounce/simple_11.eml", "hard", "userx@example.com"),
    # French, Spanish and Portuguese, and Russian (an encoded subject) notices.
    ("flufl_bounce/simple_13.eml", "hard", "userx@example.fr"),
    ("flufl_bounce/simple_19.eml", "hard", "userx@example.com.ar"),
    ("flufl_bounce/simple_39.eml", "hard", "userx@example.ru"),
    # German: "Ihre Mail konnte nicht zugestellt werden", the account is full.
    ("bounced/empty-status.eml", "soft", "recipient@example.com"),
    # A mailbox full, in words only, from a provider no detector knows: Herald's own recipient rule.
    ("bounce_email/unknown_code_bounce_01.eml", "soft", "sdrake@tradingpost.ch"),
])
def test_a_free_text_notice_names_its_recipient_and_its_kind(path, kind, recipient):
    reading = bounces.read(corpus(path), verp())
    assert reading.kind == kind, reading.reason
    assert recipient in [r.recipient.lower() for r in reading.reports]
    assert all(r.send_id == 42 for r in reading.reports)


def test_a_greeting_in_the_transcript_is_no_diagnosis():
    """MDaemon quotes the session: "220 … ready" comes first, the 552 that failed comes later."""
    (report,) = bounces.parse(corpus("flufl_bounce/simple_01.eml"), verp())
    assert report.kind == "soft"
    assert report.diagnostic.startswith("The attached") or "552" in report.diagnostic
    assert "reply 552" in report.reason


def test_final_recipient_system_falls_back_to_original_recipient():
    """CommuniGate writes Final-Recipient: system;<> over a usable Original-Recipient."""
    (report,) = bounces.parse(corpus("bounce_email/tt_bounce_03.eml"), "")
    assert (report.recipient, report.kind) == ("agrisa@apollo.lv", "policy")  # "Messages without To: fields"


def test_a_mime_encoded_subject_is_read():
    """Symantec's subject is base64: "Delivery failure notification" (a warning that delivery goes on)."""
    (report,) = bounces.parse(corpus("flufl_bounce/simple_22.eml"), "")
    assert (report.kind, report.recipient) == ("delayed", "User@example.org")


@pytest.mark.parametrize("path,reason", [
    ("bounce_email/tt_1234210666.eml", "subject"),  # Lotus out of office, in Latvian
    ("bounce_email/tt_1234211024.eml", "X-Autoreply"),  # Gmail vacation reply
    ("flufl_bounce/qmail_08.eml", "Precedence: auto_reply"),
    ("baunsu/auto_earthlink.eml", "Precedence: auto_reply"),  # a challenge to prove one is human
])
def test_auto_replies_are_never_bounces(path, reason):
    reading = bounces.read(corpus(path), verp())
    assert (reading.kind, reading.reports) == ("auto_reply", [])
    assert reason in reading.reason


@pytest.mark.django_db
class TestWhatHeraldDoes:
    def contact_and_send(self, campaign, email):
        contact = Contact.objects.create(email=email)
        Subscription.objects.create(contact=contact, mailing_list=MailingList.objects.get())
        return contact, make_send(campaign, contact)

    def test_a_plain_text_hard_bounce_suppresses_its_send_and_says_why(self, campaign):
        contact, send = self.contact_and_send(campaign, "userx@example.de")
        (event,) = process_message(corpus("flufl_bounce/qmail_01.eml"), verp(send.pk))
        assert (event.type, event.send_id) == ("bounce", send.pk)
        assert "permanent" in event.reason
        assert Suppression.objects.get().email == "userx@example.de"

    def test_a_policy_block_is_recorded_and_suppresses_nobody(self, campaign):
        contact, send = self.contact_and_send(campaign, "mango3438kaskdmdfklas@att.net")
        (event,) = process_message(corpus("baunsu/bounce_att.eml"), verp(send.pk))  # "blocked by sbc:blacklist"
        assert (event.type, event.send_id) == ("rejected", send.pk)
        assert "DSN Action failed" in event.reason
        assert not Suppression.objects.exists()

    def test_an_auto_reply_to_the_verp_address_records_nothing(self, campaign):
        contact, send = self.contact_and_send(campaign, "agris.ameriks@accenture.com")
        assert process_message(corpus("bounce_email/tt_1234210666.eml"), verp(send.pk)) == []
        assert not Event.objects.exists()

    def test_a_recipient_other_than_the_tokens_send_is_recorded_not_acted_on(self, campaign):
        """Yahoo names four failed recipients under one token: only the send's own address may be suppressed."""
        contact, send = self.contact_and_send(campaign, "userx@example.com")
        events = process_message(corpus("flufl_bounce/yahoo_07.eml"), verp(send.pk))
        assert sorted((e.email, e.send_id is not None) for e in events) == [
            ("userw@example.com", False), ("userx@example.com", True), ("usery@example.com", False),
            ("userz@example.com", False)]
        assert list(Suppression.objects.values_list("email", flat=True)) == ["userx@example.com"]
        assert all("went elsewhere" in e.reason for e in events if e.send_id is None)

    def test_without_a_token_a_plain_text_bounce_needs_its_exact_message_id(self, campaign):
        """The returned headers quote the original Message-ID: with the named recipient, that ties it."""
        contact, send = self.contact_and_send(campaign, "kasparsramins@gmail.com")
        raw = corpus("bounce_email/tt_bounce_21.eml")  # Gmail: "failed permanently", original quoted
        (event,) = process_message(raw, "")
        assert event.send_id is None and not Suppression.objects.exists()  # Herald never sent that Message-ID
        message_id = bounces.parse(raw, "")[0].message_id
        assert message_id == "da960251050607073764db5d20@mail.gmail.com"
        send.message_id = message_id
        send.save()
        Event.objects.all().delete()
        (event,) = process_message(raw, "")
        assert (event.type, event.send_id) == ("bounce", send.pk)
        assert Suppression.objects.get().email == "kasparsramins@gmail.com"
