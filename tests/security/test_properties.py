"""Property-based tests (Hypothesis) for what reads untrusted input: CSV imports, DSN and ARF
reports, header building and template rendering."""

import csv
import io
from email import message_from_bytes, policy

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError, TemplateError

from campaigns.csvfiles import FORMULA_PREFIXES, CsvRejected, neutralise, unneutralise
from campaigns.exports import contact_rows
from campaigns.imports import ImportRejected, import_contacts, is_valid_address
from campaigns.models import Campaign, Contact, MailingList, Suppression
from campaigns.rendering import ContactData, ContentError, check_template, html_env, text_env
from delivery.message import address_header, compile_campaign, fold_header
from delivery.tokens import sign, verp_address
from tracking.bounces import parse
from tracking.suppressions import export_csv, import_csv

FIXTURES_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
# Text with every kind of line break and control character mixed in.
hostile_text = st.lists(
    st.one_of(st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
              st.sampled_from(["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", ":", ";", "=?",
                               "Bcc: victim@example.net", " ", "\t"])),
    max_size=20,
).map("".join)


class FakeSend:
    def __init__(self, pk, email):
        self.pk = pk
        self.email = email


# --- header building ------------------------------------------------------------

TEXT_HEADERS = ["Subject", "X-Herald-Campaign", "Feedback-ID", "Precedence"]
ADDRESS_HEADERS = ["From", "To", "Reply-To"]


@given(name=st.sampled_from(TEXT_HEADERS + ADDRESS_HEADERS), value=hostile_text)
@example(name="Subject", value="Sale\r\nBcc: victim@example.net")
@example(name="From", value="Eve\r\nBcc: victim@example.net")
@settings(max_examples=250, deadline=None)
def test_a_folded_header_is_exactly_one_header_whatever_the_value(name, value):
    if name in ADDRESS_HEADERS:
        # Names are data; addresses were validated when stored.
        folded = address_header(name, value, "news@example.com")
    else:
        folded = fold_header(name, value)
    assert folded.endswith(b"\r\n")
    body = folded[:-2]
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    for line in body.split(b"\r\n")[1:]:
        assert line[:1] in (b" ", b"\t"), f"a continuation line must start with white space: {folded!r}"
    parsed = message_from_bytes(folded + b"\r\n", policy=policy.SMTP)
    assert [k.lower() for k in parsed.keys()] == [name.lower()]
    if name in ADDRESS_HEADERS:
        assert [a.addr_spec for a in parsed[name].addresses] == ["news@example.com"]


@pytest.fixture
def compiled(db):
    campaign = Campaign.objects.create(
        name="props", subject="News for {{ contact.first_name }} {{ contact.attributes.x }}",
        from_name="{{ contact.last_name }} via Herald", from_email="news@example.com", reply_to="r@example.com",
        html_body="<p>Hello {{ contact.first_name }}</p>", text_body="Hello {{ contact.attributes.x }}",
    )
    return compile_campaign(campaign)


EXPECTED = {"from", "to", "subject", "date", "message-id", "reply-to", "list-unsubscribe", "list-unsubscribe-post",
            "feedback-id", "x-herald-campaign", "precedence", "mime-version", "content-type"}


@given(first=hostile_text, last=st.one_of(hostile_text, st.sampled_from(["Eve <eve@evil.example>, é", "Bank, Inc. é"])),
       x=hostile_text,
       local=st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), noise=st.sampled_from(["", "\r\nBcc: v@example.net", "\n"]))
@FIXTURES_OK
def test_contact_data_never_adds_a_header(compiled, first, last, x, local, noise):
    email = f"{local}@example.com{noise}"
    built = compiled.build(FakeSend(7, email), ContactData(email, first, last, {"x": x}))
    assert "\r" not in built.rcpt and "\n" not in built.rcpt
    head = built.data.split(b"\r\n\r\n", 1)[0]
    msg = message_from_bytes(built.data, policy=policy.default)
    names = [k.lower() for k in msg.keys()]
    assert set(names) <= EXPECTED, names
    assert len(names) == len(set(names)), f"a header appears twice: {names}"
    # A display name full of commas, brackets and quotes is still one name for one address.
    assert [a.addr_spec for a in msg["From"].addresses] == ["news@example.com"]
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["r@example.com"]
    for line in head.split(b"\r\n"):
        assert len(line) <= 998
        assert b"\n" not in line and b"\r" not in line


# --- template sandbox -------------------------------------------------------------------

DANGEROUS = ["__class__", "__mro__", "__subclasses__", "__globals__", "__init__", "__builtins__", "__dict__",
             "__base__", "__bases__", "__getattribute__", "__reduce__", "_meta", "func_globals", "gi_frame",
             "f_locals", "mro", "format", "format_map", "objects", "save", "delete", "__self__", "im_func"]
step = st.one_of(
    st.sampled_from(DANGEROUS).map(lambda n: f".{n}"),
    st.sampled_from(DANGEROUS).map(lambda n: f"[{n!r}]"),
    st.sampled_from(DANGEROUS).map(lambda n: f"|attr({n!r})"),
    st.sampled_from(["()", "(1)", "('{0.__class__}')", "[0]", "[-1]", ".items()", ".keys()"]),
    st.from_regex(r"\.[a-z_]{1,8}", fullmatch=True),
)
root = st.sampled_from(["contact", "contact.email", "contact.attributes", "contact.first_name", "unsubscribe_url",
                        "''", "()", "[]", "{}", "lipsum", "cycler", "joiner", "namespace", "range", "self",
                        "config", "request", "settings", "loop"])
expression = st.builds(lambda r, steps: r + "".join(steps), root, st.lists(step, max_size=5))
template = st.one_of(
    expression.map(lambda e: "{{ " + e + " }}"),
    expression.map(lambda e: "{% for x in " + e + " %}{{ x }}{% endfor %}"),
    expression.map(lambda e: "{% set y = " + e + " %}{{ y }}"),
    st.sampled_from(["{% include '/etc/passwd' %}", "{% import 'os' as os %}", "{% extends 'base.html' %}",
                     "{% from 'x' import y %}", "{{ self._TemplateReference__context }}"]),
)
# A repr such as `{{ lipsum }}` or `{{ cycler }}` is harmless; a module, a frame or the subclass list is an escape.
LEAKS = ("<module", "__builtins__", "<frame", "Popen", "_wrap_close", "<Environment", "<Context", "catch_warnings")


@given(source=template, html=st.booleans())
@settings(max_examples=300, deadline=None)
def test_templates_never_reach_python_internals(source, html):
    env = html_env if html else text_env
    contact = ContactData("alice@example.com", "Alice", "Liddell", {"plan": "gold"})
    try:
        check_template(source, "html_body" if html else "text_body", env=env)
        out = env.from_string(source).render(contact=contact, unsubscribe_url="https://h.example/u/x")
    except (ContentError, SecurityError, TemplateError, TypeError, ValueError, IndexError, KeyError):
        return  # refused, with an error the editor shows
    assert django_settings.SECRET_KEY not in out
    for leak in LEAKS:
        assert leak not in out, f"{source!r} rendered {out[:200]!r}"
    assert contact.attributes == {"plan": "gold"} and contact.email == "alice@example.com"


# --- DSN and ARF parsing --------------------------------------------------------------------------

address = st.from_regex(r"[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,20}\.(com|net|example)", fullmatch=True)
status_code = st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.sampled_from([2, 4, 5]), st.integers(0, 7), st.integers(0, 9))
header_text = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "Zs"]), max_size=80)


def dsn(rcpt, action, status, diagnostic, envelope_token_id):
    return (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        f"To: {verp_address(envelope_token_id)}\r\n"
        "Subject: Delivery Status Notification\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--b1--\r\n"
    ).encode()


@given(rcpt=address, action=st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded"]),
       status=status_code, diagnostic=header_text, send_id=st.integers(1, 10**12))
@settings(max_examples=300, deadline=None)
def test_a_well_formed_dsn_yields_its_recipient_and_send(rcpt, action, status, diagnostic, send_id):
    verp = verp_address(send_id)
    reports = parse(dsn(rcpt, action, status, diagnostic, send_id), envelope_rcpt=verp)
    assert len(reports) == 1
    report = reports[0]
    assert report.recipient == rcpt and report.action == action and report.send_id == send_id
    assert report.status[:1] == status[:1]
    assert report.kind != "hard" or action == "failed"


@given(send_id=st.integers(1, 10**12), position=st.integers(0, 100), char=st.sampled_from("0123456789abcdefz-"))
@settings(max_examples=300, deadline=None)
def test_an_altered_verp_token_names_no_send(send_id, position, char):
    token = sign("bounce", send_id)
    position %= len(token)
    assume(token[position] != char)
    altered = token[:position] + char + token[position + 1:]
    rcpt = f"bounces+{altered}@{django_settings.HERALD_BOUNCE_DOMAIN}"
    for report in parse(dsn("x@example.com", "failed", "5.1.1", "550 5.1.1 no such user", 1)[:0] +
                        dsn("x@example.com", "failed", "5.1.1", "550 no such user", 1).replace(
                            verp_address(1).encode(), rcpt.encode()), envelope_rcpt=rcpt):
        assert report.send_id is None


def arf(feedback_type, rcpt, send_id, extra):
    return (
        "From: fbl@isp.example\r\nTo: abuse@herald.example\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b2"\r\n\r\n'
        "--b2\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
        "--b2\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {feedback_type}\r\nUser-Agent: fbl/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{verp_address(send_id)}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n{extra}\r\n"
        "--b2\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: news@herald.example\r\nTo: {rcpt}\r\nMessage-ID: <m{send_id}@herald.example>\r\n\r\n"
        "--b2--\r\n"
    ).encode()


@given(kind=st.sampled_from(["abuse", "fraud", "virus", "other", "ABUSE"]), rcpt=address, send_id=st.integers(1, 10**9),
       extra=header_text.map(lambda t: f"X-Note: {t}" if t.strip() else ""))
@settings(max_examples=200, deadline=None)
def test_an_arf_complaint_maps_back_to_its_send(kind, rcpt, send_id, extra):
    reports = parse(arf(kind, rcpt, send_id, extra))
    assert len(reports) == 1
    assert reports[0].kind == "complaint" and reports[0].send_id == send_id and reports[0].recipient == rcpt
    assert reports[0].message_id == f"m{send_id}@herald.example"


@given(base=st.sampled_from(["dsn", "arf"]), cuts=st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=30)),
                                                         max_size=6))
@settings(max_examples=300, deadline=None)
def test_mangled_reports_never_crash_the_parser(base, cuts):
    raw = bytearray(dsn("x@example.com", "failed", "5.1.1", "550 5.1.1 gone", 5) if base == "dsn"
                    else arf("abuse", "x@example.com", 5, ""))
    for at, junk in cuts:
        at %= len(raw) + 1
        raw[at:at + len(junk)] = junk
    from tracking import bounces

    reports = bounces._read(bytes(raw), "").reports  # the inner parser: an exception here would lose a report
    for report in reports:
        assert len(report.diagnostic) <= 2000 and isinstance(report.recipient, str)


# --- CSV import -----------------------------------------------------------------------------------

cell = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
row = st.tuples(st.one_of(address, cell), cell, cell, cell)


@given(rows=st.lists(row, max_size=25), delimiter=st.sampled_from([",", ";", "\t"]))
@FIXTURES_OK
def test_any_csv_either_imports_exactly_its_valid_rows_or_is_refused_with_a_reason(db, rows, delimiter):
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(["email", "first_name", "last_name", "city"])
    writer.writerows(rows)
    data = out.getvalue().encode("utf-8")
    mailing_list, _ = MailingList.objects.get_or_create(name="props")
    Contact.objects.all().delete()
    try:
        outcome = import_contacts(io.BytesIO(data), mailing_list, delimiter=delimiter)
    except ImportRejected as exc:
        assert str(exc), "a refusal must say why"
        return
    valid = {}
    for email, first, _last, _city in rows:
        # An export's neutralising quote is taken off, then the cell trimmed.
        email, first = unneutralise(email).strip(), unneutralise(first).strip()
        if email and is_valid_address(email) is None and len(first) <= 200:
            valid.setdefault(email.lower(), first)
    stored = dict(Contact.objects.values_list("email_key", "first_name"))
    assert set(stored) == set(valid)
    assert outcome.invalid + outcome.created + outcome.updated + outcome.skipped <= outcome.rows


@given(data=st.binary(max_size=400))
@FIXTURES_OK
def test_arbitrary_bytes_are_imported_or_refused_never_a_crash(db, data):
    mailing_list, _ = MailingList.objects.get_or_create(name="bytes")
    try:
        outcome = import_contacts(io.BytesIO(data), mailing_list)
    except ImportRejected as exc:
        assert str(exc)
        return
    assert outcome.rows >= outcome.invalid


# --- CSV export and import round trip -----------------------------------------------------------

formula_text = st.lists(st.one_of(cell, st.sampled_from(["'", "''", "=", "+", "-", "@", "\t", "\r", "=HYPERLINK("])),
                        max_size=6).map("".join)


@given(value=formula_text)
@example(value="'=already quoted")
@example(value="'+49 30 1234")
@settings(max_examples=500, deadline=None)
def test_neutralised_cells_never_start_a_formula_and_unneutralise_gives_them_back(value):
    safe = neutralise(value)
    assert not safe.startswith(FORMULA_PREFIXES)
    assert unneutralise(safe) == value


# What a contact can hold that an import gives back: trimmed text without NUL (the import trims cells).
stored_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"),
                      max_size=30).map(lambda v: v.strip())
formula_value = st.one_of(stored_text, st.tuples(st.sampled_from(["=", "+", "-", "@", "'=", "''+"]), stored_text)
                          .map("".join).map(lambda v: v.strip()))


@given(prefix=st.sampled_from(["", "=", "+", "-"]), local=st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
       first=formula_value, last=formula_value,
       attributes=st.dictionaries(st.sampled_from(["phone", "=key", "+k", "note", "@at", "-x", "'q"]),
                                  formula_value.filter(bool), max_size=4))
@example(prefix="", local="anna", first="'quoted", last="=SUM(A1)", attributes={"phone": "+49 30 1234"})
@FIXTURES_OK
def test_a_contact_export_imports_back_to_the_same_values(db, prefix, local, first, last, attributes):
    mailing_list, _ = MailingList.objects.get_or_create(name="round trip")
    Contact.objects.all().delete()
    email = f"{prefix}{local}@example.com"
    Contact.objects.create(email=email, first_name=first, last_name=last, attributes=attributes)
    exported = "".join(contact_rows()).encode()
    Contact.objects.all().delete()
    outcome = import_contacts(io.BytesIO(exported), mailing_list)
    assert (outcome.created, outcome.invalid) == (1, 0)
    back = Contact.objects.get()
    assert (back.email, back.first_name, back.last_name, back.attributes) == (email, first, last, attributes)


@given(email=st.sampled_from(["ann@example.com", "+ann@example.com", "-x@example.com", "=x@example.com"]),
       detail=formula_value)
@FIXTURES_OK
def test_a_suppression_export_imports_back_to_the_same_values(db, email, detail):
    Suppression.objects.all().delete()
    Suppression.objects.create(email=email, reason="complaint", detail=detail)
    out = io.StringIO()
    export_csv(Suppression.objects.all(), out)
    Suppression.objects.all().delete()
    result = import_csv(io.BytesIO(out.getvalue().encode()))
    assert (result.added, result.invalid) == (1, 0)
    assert list(Suppression.objects.values_list("email", "reason", "detail")) == [(email, "complaint", detail)]


@given(data=st.binary(max_size=400))
@FIXTURES_OK
def test_arbitrary_bytes_are_suppressed_or_refused_never_a_crash(db, data):
    try:
        result = import_csv(io.BytesIO(data))
    except CsvRejected as exc:
        assert str(exc)
        return
    assert result.added + result.existing + result.invalid >= 0
