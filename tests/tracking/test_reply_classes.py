"""One reading of an SMTP reply: the engine at send time and tracking, when the same reply comes back
later in a DSN or from an ESP, reach the same verdict from one table of rules (delivery/classify.py)."""

import re

import pytest

from campaigns.models import Contact, Suppression
from delivery import tokens
from delivery.classify import BOUNCED, DEFERRED, FAILED, classify_reply
from tests.tracking.conftest import make_send
from tracking import bounces
from tracking.feedback import process_message

# What each verdict means at send time (status, suppressed at once) and in a report.
ENGINE = {
    "hard": (BOUNCED, True),  # the address is dead
    "soft": (FAILED, False),  # permanent for this message; the mailbox may recover
    "policy": (FAILED, False),  # the sender or the message was refused, the mailbox is fine
    "transient": (DEFERRED, False),
    "transient-policy": (DEFERRED, False),
}
TRACKING = {"hard": "hard", "soft": "soft", "policy": "policy", "transient": "soft", "transient-policy": "policy"}

# Replies as providers write them.
REPLIES = [
    (550, "5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table", "hard"),
    (550, "5.1.1 The email account that you tried to reach does not exist. Please try double-checking the "
          "recipient's email address for typos or unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
     "hard"),
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "hard"),
    (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT012.eop-EUR03.prod.protection."
          "outlook.com]", "hard"),
    (554, "5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain", "hard"),
    (553, "5.1.3 The recipient address <bob@@example.net> is not a valid RFC-5321 address.", "hard"),
    (550, "5.2.1 The email account that you tried to reach is disabled.", "hard"),
    (556, "5.1.10 Recipient address has null MX", "hard"),
    (554, "delivery error: dd This user doesn't have a yahoo.com account (bob@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com",
     "hard"),
    (550, "No such user here", "hard"),
    # 550 is RFC 5321's "mailbox unavailable" for unknown users and policy alike: no proof of a dead address.
    (550, "Requested action not taken: mailbox unavailable", "soft"),
    (550, "5.0.0 mailbox unavailable, try again later", "soft"),
    (552, "5.2.2 The email account that you tried to reach is over quota. Please direct the recipient to "
          "https://support.google.com/mail/?p=OverQuotaPerm", "soft"),
    (552, "5.3.4 Message size exceeds fixed maximum message size", "policy"),
    (554, "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "policy"),
    (550, "5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users, and has "
          "been blocked. The sender must authenticate with at least one of SPF or DKIM.", "policy"),
    (554, "5.6.7 SMTPUTF8 is required, but was not offered by host mx.example.net", "policy"),
    (550, "5.1.8 <news@shop.example>: Sender address rejected: Domain not found", "policy"),
    # A precise code outranks the words: 5.7.x is a policy refusal, unless the text says plainly that the
    # mailbox does not exist and names no refusal of the sender (vpopmail files unknown users under 5.7.17).
    (550, "5.7.1 Client host rejected: user unknown sender blocked", "policy"),
    (550, "5.7.1 user unknown", "hard"),
    (550, "sorry, no mailbox here by that name. (#5.7.17)", "hard"),
    (421, "4.7.0 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP "
          "address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
     "transient-policy"),
    (451, "4.7.1 Greylisting in action, please come back later", "transient-policy"),
    (450, "4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend your message at a "
          "later time.", "transient"),
    (452, "4.2.2 The email account that you tried to reach is over quota.", "transient"),
    (451, "4.3.0 Temporary lookup failure", "transient"),
    # The enhanced code's class comes first, even when the basic code disagrees.
    (550, "4.2.2 mailbox full, user unknown", "transient"),
]


def dsn_status(code, text):
    """The Status a reporting MTA would write: the reply's enhanced code, else its class."""
    match = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", text)
    return match.group(1) if match else f"{code // 100}.0.0"


@pytest.mark.parametrize("code,text,verdict", REPLIES, ids=[f"{c}-{t[:30]}" for c, t, _ in REPLIES])
def test_engine_and_tracking_read_a_reply_alike(code, text, verdict):
    outcome = classify_reply(code, text)
    assert (outcome.status, outcome.suppress) == ENGINE[verdict]
    # The same reply reported later: in a DSN's Status and Diagnostic-Code, as bare text, or from an ESP.
    assert bounces.classify("failed", dsn_status(code, text), f"{code} {text}") == TRACKING[verdict]
    assert bounces.classify("failed", "", f"{code} {text}") == TRACKING[verdict]
    assert bounces.classify("failed", "", f"smtp; {code} {text}") == TRACKING[verdict]


def _dsn(verp, rcpt, status, diagnostic):
    return (
        f"From: MAILER-DAEMON@mx.example.net\r\nTo: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        f"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n--b--\r\n"
    ).encode()


@pytest.mark.django_db
@pytest.mark.parametrize("code,text,verdict", REPLIES, ids=[f"{c}-{t[:30]}" for c, t, _ in REPLIES])
def test_a_dsn_suppresses_exactly_when_the_engine_would(campaign, code, text, verdict):
    contact = Contact.objects.create(email="dana@example.net")
    send = make_send(campaign, contact)
    verp = tokens.verp_address(send.pk)
    process_message(_dsn(verp, contact.email, dsn_status(code, text), f"{code} {text}"), verp)
    assert Suppression.objects.filter(email=contact.email, reason="hard_bounce").exists() == classify_reply(code, text).suppress


# Replies in other languages: words decide where the code is generic, in the engine and in reports alike.
WORDED_REPLIES = [
    (550, "Benutzer unbekannt", "hard"),
    (550, "<bob@example.de>: Empfaenger unbekannt", "hard"),
    (552, "Postfach ist voll", "soft"),
    (554, "Nachricht als Spam abgelehnt", "policy"),
    (550, "Adresse destinataire inconnue", "hard"),
    (550, "L'adresse de messagerie n'existe pas", "hard"),
    (552, "Boîte aux lettres pleine", "soft"),
    (554, "Message bloqué: courrier indésirable", "policy"),
    (550, "Usuario desconocido", "hard"),
    (552, "El buzón está lleno", "soft"),
    (550, "A conta de e-mail não existe", "hard"),
    (552, "Caixa postal cheia", "soft"),
    (550, "Пользователь не существует", "hard"),
    (552, "Почтовый ящик переполнен", "soft"),
    (554, "Сообщение отклонено как спам", "policy"),
    # The sender's address unknown is no sign of a dead mailbox.
    (550, "Absender unbekannt", "soft"),
]


@pytest.mark.parametrize("code,text,verdict", WORDED_REPLIES, ids=[t for _, t, _ in WORDED_REPLIES])
def test_words_in_other_languages_break_ties(code, text, verdict):
    outcome = classify_reply(code, text)
    assert (outcome.status, outcome.suppress) == ENGINE[verdict]
    assert bounces.classify("failed", "", f"{code} {text}") == TRACKING[verdict]
