"""Herald reads a bounce's MIME structure itself, for speed: it must read what the standard library reads.

Every part of every corpus message, its headers and its text, comes out as ``email.message_from_bytes``
(compat32) gives them, but for the body of a returned message, of which only the headers are read;
and messages the email package calls broken are read as it reads them, not refused.
"""

from email import message_from_bytes

import pytest

from delivery.classify import hint
from tests.tracking.corpus import samples
from tracking import bounces


def same_parts(standard, ours, where):
    assert ours.items() == standard.items(), where
    assert ours.get_unixfrom() == standard.get_unixfrom(), where
    theirs, mine = standard.get_payload(), ours.get_payload()
    if ours.get_content_type() == "message/delivery-status":
        return  # left as text: Herald splits its field blocks itself
    if isinstance(mine, list) and ours.get_content_maintype() == "message" and not isinstance(mine[0].get_payload(),
                                                                                             list):
        assert mine[0].items() == theirs[0].items(), where  # a returned message: its headers alone
        return
    assert isinstance(mine, list) == isinstance(theirs, list), where
    if isinstance(mine, list):
        assert len(mine) == len(theirs), where
        for standard_part, our_part in zip(theirs, mine, strict=True):
            same_parts(standard_part, our_part, where)
    else:
        assert mine == theirs, where


@pytest.mark.parametrize("sample", samples(), ids=lambda s: s.path)
def test_every_part_herald_reads_is_what_the_standard_parser_reads(sample):
    same_parts(message_from_bytes(sample.raw), bounces._message(sample.raw), sample.path)


@pytest.mark.parametrize("raw", [
    b"From MAILER-DAEMON Mon Jan  1 00:00:00 2024\nFrom: postmaster@mx.example\nSubject: failure\n\nbody\n",
    b"Subject: no blank line\nthis line is no header\nSubject: body\n\ntext\n",
    b"Subject: lone carriage returns\rFrom: a@b.example\r\rbody\r",
    b" leading continuation\nSubject: x\n\nbody",
    b"Subject: folded\n\tover two lines\n \nTo: a@b.example\n\nbody",
    b"Content-Type: multipart/mixed; boundary=b\n\nno boundary at all\n",
    b"Content-Type: multipart/mixed\n\nno boundary parameter\n",
    b"Content-Type: multipart/mixed; boundary=b\n\npreamble\n--b\nSubject: one\n\nfirst\n--bb\n--b \t\n\nsecond\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n--b--\r\nepilogue",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\n--b--",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b--\nafter\n",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b--\nX: 1\n\nc\n--b--\n",
    b"Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: multipart/alternative; boundary=b\n\n"
    b"--b\n\nx\n--b--\n--a\n\ny\n--a--\n",
    b"Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: message/rfc822\n\nSubject: forwarded\n"
    b"Content-Type: multipart/report; boundary=c\n\n--c\n\nnotice\n--c--\n--a\n\nfooter\n--a--\n",
    b"",
    b"\n\nonly a body",
    b"Subject: caf\xc3\xa9 \xff\n\n\xfe\xff raw bytes\n",
], ids=range(17))
def test_broken_and_odd_messages_are_read_as_the_standard_parser_reads_them(raw):
    same_parts(message_from_bytes(raw), bounces._message(raw), raw[:40])


def test_a_bomb_of_nested_parts_is_cut_short_and_read_without_error():
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(500)) + b"\nend\n"
    reading = bounces.read(raw, "")
    assert reading.kind == bounces.NOT_BOUNCE


@pytest.mark.parametrize("text,kind", [
    ("550 USER UNKNOWN", "hard"),
    ("Mailbox Is Full", "soft"),
    ("Message REJECTED as SPAM", "policy"),
    ("EMPFÄNGER UNBEKANNT", "hard"),
    ("BOÎTE PLEINE", "soft"),
    ("ПОЛЬЗОВАТЕЛЬ НЕ СУЩЕСТВУЕТ", "hard"),
    ("Ваше письмо похоже на СПАМ", "policy"),
    ("Usuario DESCONOCIDO", "hard"),
])
def test_reply_words_are_found_in_capitals_too(text, kind):
    assert hint(text) == kind
