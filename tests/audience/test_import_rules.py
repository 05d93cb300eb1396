"""The import engine's rules, each pinned with a messy file written by the test."""

import csv
import io

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.exports import contact_rows
from campaigns.imports import ImportRejected, import_contacts, is_valid_address
from campaigns.models import Contact, Import, MailingList, Subscription

pytestmark = pytest.mark.django_db


def run(data: bytes, mailing_list, **options):
    """Import ``data``; returns (outcome, error report rows without the header)."""
    report = io.StringIO()
    outcome = import_contacts(io.BytesIO(data), mailing_list, report=report, **options)
    rows = list(csv.reader(io.StringIO(report.getvalue())))
    assert not rows or rows[0] == ["row", "column", "value", "reason"]
    return outcome, rows[1:]


def contact(address):
    return Contact.objects.get(email_key=address.lower())


def test_utf8_bom_is_not_part_of_the_first_column_name(readers):
    data = "\ufeffEmail,First name\nanna@example.com,Änne\n".encode()
    outcome, _ = run(data, readers)
    assert outcome.created == 1
    assert contact("anna@example.com").first_name == "Änne"
    assert "\ufeff" not in str(contact("anna@example.com").attributes)


def test_semicolons_with_crlf_line_ends(readers):
    data = b"E-Mail;Vorname;Nachname;Stadt\r\nanna@example.com;Anna;Schmidt;K\xc3\xb6ln\r\nbert@example.com;Bert;;Bonn\r\n"
    outcome, _ = run(data, readers)
    assert (outcome.delimiter, outcome.created) == (";", 2)
    anna = contact("anna@example.com")
    assert (anna.first_name, anna.last_name, anna.attributes) == ("Anna", "Schmidt", {"Stadt": "Köln"})


def test_tab_delimited(readers):
    outcome, _ = run(b"email\tplan\nanna@example.com\tgold\n", readers)
    assert outcome.delimiter == "\t"
    assert contact("anna@example.com").attributes == {"plan": "gold"}


def test_quoted_newlines_stay_in_the_cell_and_rows_are_numbered_as_records(readers):
    data = b'email,note\nanna@example.com,"line one\nline two"\nnot-an-address,x\n'
    outcome, report = run(data, readers)
    assert contact("anna@example.com").attributes == {"note": "line one\nline two"}
    # The bad row is the file's third record (header = row 1), though its fourth line.
    assert report == [["3", "email", "not-an-address", report[0][3]]]
    assert "@" in report[0][3]


def test_cp1252_names_when_the_bytes_are_not_utf8(readers):
    data = "email;first name;last name\njoerg@example.com;Jörg;Müller\n".encode("cp1252")
    outcome, _ = run(data, readers)
    assert outcome.encoding == "cp1252"
    assert (contact("joerg@example.com").first_name, contact("joerg@example.com").last_name) == ("Jörg", "Müller")


def test_cp1252_bytes_after_a_long_ascii_start_restart_the_read_without_half_writing(readers):
    rows = "".join(f"user{i}@example.com,plain\n" for i in range(6000))  # well past the detection sample
    data = ("email,name\n" + rows + "francois@example.com,François\n").encode("cp1252")
    assert len(data) > 64 * 1024
    outcome, _ = run(data, readers)
    assert outcome.encoding == "cp1252"
    assert outcome.created == 6001
    assert contact("francois@example.com").first_name == "François"


def test_explicit_encoding_that_does_not_fit_rejects_the_file_and_writes_nothing(readers):
    data = "email,name\nanna@example.com,Anna\njoerg@example.com,J\xf6rg\n".encode("latin-1")
    with pytest.raises(ImportRejected, match="not valid utf-8"):
        run(data, readers, encoding="utf-8")
    assert Contact.objects.count() == 0


def test_case_variant_duplicates_in_the_file_keep_the_first_and_report_the_rest(readers):
    data = b"email,first name\nAnna@Example.com,First\nanna@example.COM,Second\n  ANNA@example.com ,Third\n"
    outcome, report = run(data, readers)
    assert (outcome.rows, outcome.created, outcome.skipped) == (3, 1, 2)
    anna = contact("anna@example.com")
    assert (anna.email, anna.first_name) == ("Anna@Example.com", "First")
    assert [r[0] for r in report] == ["3", "4"]
    assert report[0][3] == "duplicate of row 2 (same address, ignoring case)"


def test_case_variant_of_a_stored_contact_updates_it_in_upsert_mode(readers):
    Contact.objects.create(email="anna@example.com", first_name="Old", last_name="Keep", attributes={"a": "1", "b": "2"})
    outcome, _ = run(b"email,first name,last name,b,c\nANNA@EXAMPLE.COM,New,,20,30\n", readers)
    assert (outcome.created, outcome.updated) == (0, 1)
    anna = contact("anna@example.com")
    # Names given replace, empty cells keep, attributes merge key by key.
    assert (anna.first_name, anna.last_name) == ("New", "Keep")
    assert anna.attributes == {"a": "1", "b": "20", "c": "30"}
    assert Contact.objects.count() == 1
    assert Subscription.objects.filter(contact=anna, mailing_list=readers).exists()


def test_skip_existing_leaves_stored_contacts_untouched_but_adds_them_to_the_list(readers):
    Contact.objects.create(email="anna@example.com", first_name="Old", attributes={"a": "1"})
    data = b"email,first name,a\nAnna@example.com,New,2\nbert@example.com,Bert,3\n"
    outcome, _ = run(data, readers, mode=Import.Mode.SKIP_EXISTING)
    assert (outcome.created, outcome.updated, outcome.skipped) == (1, 0, 1)
    anna = contact("anna@example.com")
    assert (anna.first_name, anna.attributes) == ("Old", {"a": "1"})
    assert Subscription.objects.filter(mailing_list=readers).count() == 2


def test_invalid_addresses_are_reported_with_row_column_and_reason(readers):
    data = b"Email Address,name\nanna@example.com,Anna\nno-at-sign,X\n,Empty\nbert@@example.com,Y\ncarl@example.com,Carl\n"
    outcome, report = run(data, readers)
    assert (outcome.rows, outcome.created, outcome.invalid) == (5, 2, 3)
    assert [(r[0], r[1], r[2]) for r in report] == [
        ("3", "Email Address", "no-at-sign"),
        ("4", "Email Address", ""),
        ("5", "Email Address", "bert@@example.com"),
    ]
    assert report[1][3] == "the address is missing"
    assert all(r[3] for r in report)


def test_counts_add_up_to_the_rows_read(readers):
    Contact.objects.create(email="old@example.com")
    data = b"email\nold@example.com\nnew@example.com\nNEW@example.com\nbad\n\n\n"
    outcome, _ = run(data, readers)
    assert outcome.rows == 4  # blank lines are not rows
    assert outcome.created + outcome.updated + outcome.skipped + outcome.invalid == outcome.rows


def test_a_file_without_an_email_column_is_rejected_as_a_whole(readers):
    with pytest.raises(ImportRejected, match="No email column") as excinfo:
        run(b"name,phone\nAnna,123\n", readers)
    assert "'name', 'phone'" in str(excinfo.value)
    assert Contact.objects.count() == 0


def test_bytes_that_no_supported_encoding_reads_reject_the_file(readers):
    # 0x81 and 0x8D are undefined in Windows-1252 too.
    with pytest.raises(ImportRejected, match="not valid cp1252"):
        run(b"email,name\nanna@example.com,\x81\x8d\n", readers)
    assert Contact.objects.count() == 0


def test_a_header_without_rows_imports_nothing(readers):
    outcome, report = run(b"email,first name\r\n", readers)
    assert (outcome.rows, outcome.created, report) == (0, 0, [])


def test_binary_data_is_rejected(readers):
    with pytest.raises(ImportRejected, match="binary data"):
        run(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), readers)


def test_a_nul_byte_late_in_the_file_rejects_it_and_nothing_is_half_written(readers):
    rows = b"".join(b"user%d@example.com\n" % i for i in range(8000))
    assert len(rows) > 64 * 1024
    with pytest.raises(ImportRejected, match="NUL byte"):
        run(b"email\n" + rows + b"late\x00@example.com\n", readers)
    assert Contact.objects.count() == 0
    assert Subscription.objects.count() == 0


def test_a_file_over_the_size_limit_is_rejected_before_reading(readers, settings):
    settings.HERALD_IMPORT_MAX_BYTES = 100
    with pytest.raises(ImportRejected, match="HERALD_IMPORT_MAX_BYTES"):
        run(b"email\n" + b"anna@example.com\n" * 10, readers)
    assert Contact.objects.count() == 0


def test_formula_cells_are_stored_as_typed_and_neutralised_on_export(readers):
    data = b'email,first name,total\n=evil@example.com,=HYPERLINK("http://x"),+1+2\nanna@example.com,@SUM(A1),-3\n'
    outcome, _ = run(data, readers)
    assert outcome.created == 2
    evil = contact("=evil@example.com")
    assert (evil.first_name, evil.attributes) == ('=HYPERLINK("http://x")', {"total": "+1+2"})
    exported = list(csv.reader(io.StringIO("".join(contact_rows(Contact.objects.all())))))
    assert exported[0] == ["email", "first_name", "last_name", "status", "total"]
    assert exported[1] == ["'=evil@example.com", "'=HYPERLINK(\"http://x\")", "", "active", "'+1+2"]
    assert exported[2] == ["anna@example.com", "'@SUM(A1)", "", "active", "'-3"]


def test_export_reads_back_into_the_same_contacts(readers):
    run(b"email,first name,last name,city\nanna@example.com,Anna,Smith,Paris\n", readers)
    exported = "".join(contact_rows()).encode()
    other = MailingList.objects.create(name="Copy")
    outcome, _ = run(exported, other)
    assert (outcome.created, outcome.updated) == (0, 1)
    assert contact("anna@example.com").attributes == {"city": "Paris"}


def test_aliases_and_full_name_columns(readers):
    data = b"Mail,Name,Plan\nanna@example.com,Anna Maria Schmidt,gold\nbert@example.com,Bert,\n"
    run(data, readers)
    anna, bert = contact("anna@example.com"), contact("bert@example.com")
    assert (anna.first_name, anna.last_name, anna.attributes) == ("Anna Maria", "Schmidt", {"Plan": "gold"})
    assert (bert.first_name, bert.last_name, bert.attributes) == ("Bert", "", {})


def test_a_header_with_two_email_columns_is_rejected(readers):
    with pytest.raises(ImportRejected, match="both give the email"):
        run(b"email,e-mail\na@example.com,b@example.com\n", readers)


def test_double_opt_in_list_subscribes_unconfirmed_and_keeps_unsubscribed_ones(db):
    weekly = MailingList.objects.create(name="Weekly", optin=MailingList.OptIn.DOUBLE)
    gone = Contact.objects.create(email="gone@example.com")
    Subscription.objects.create(contact=gone, mailing_list=weekly, status=Subscription.Status.UNSUBSCRIBED)
    run(b"email\nnew@example.com\ngone@example.com\n", weekly)
    statuses = dict(Subscription.objects.filter(mailing_list=weekly).values_list("contact__email_key", "status"))
    assert statuses == {"new@example.com": "unconfirmed", "gone@example.com": "unsubscribed"}


def test_names_longer_than_a_contact_holds_are_reported(readers):
    data = b"email,first name\nanna@example.com," + b"A" * 201 + b"\nbert@example.com,Bert\n"
    outcome, report = run(data, readers)
    assert (outcome.created, outcome.invalid) == (1, 1)
    assert report[0][:2] == ["2", "first name"] and "200 characters" in report[0][3]


def test_an_unclosed_quote_rejects_the_file(readers, settings):
    data = b'email,note\nanna@example.com,"never closed\n' + b"x" * 200_000 + b"\n"
    with pytest.raises(ImportRejected, match="cannot be read as CSV"):
        run(data, readers)
    assert Contact.objects.count() == 0


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_.+=-]{1,12}@[A-Za-z0-9.-]{1,20}\.[A-Za-z0-9]{1,6}", fullmatch=True))
def test_the_fast_address_check_agrees_with_email_validator(address):
    try:
        validate_email(address, check_deliverability=False)
        expected = True
    except EmailNotValidError:
        expected = False
    assert (is_valid_address(address) is None) == expected


def test_progress_is_reported_after_each_chunk(readers, monkeypatch):
    monkeypatch.setattr("campaigns.imports.CHUNK_ROWS", 2)
    seen = []
    rows = b"".join(b"user%d@example.com\n" % i for i in range(5))
    import_contacts(io.BytesIO(b"email\n" + rows), readers, progress=seen.append)
    assert seen == [2, 4, 5]


def test_cr_only_line_ends_as_excel_for_mac_writes_them(readers):
    data = b"email,first name,city\ranna@example.com,Anna,Paris\rnot-an-address,X,\rbert@example.com,Bert,Lyon\r"
    outcome, report = run(data, readers)
    assert (outcome.rows, outcome.created, outcome.invalid) == (3, 2, 1)
    assert contact("bert@example.com").attributes == {"city": "Lyon"}
    assert [r[:3] for r in report] == [["3", "email", "not-an-address"]]


def test_a_stray_cr_in_a_cell_neither_splits_nor_breaks_the_row(readers):
    data = b"email,first name,city\r\nanna@example.com\r,Anna,Pa\rris\r\nbert@example.com,Bert,Lyon\r\nbad,X,Y\r\n"
    outcome, report = run(data, readers)
    assert (outcome.rows, outcome.created, outcome.invalid) == (3, 2, 1)
    assert contact("anna@example.com").attributes == {"city": "Pa ris"}
    assert [r[0] for r in report] == ["4"]


def test_a_line_of_only_delimiters_is_a_blank_line(readers):
    # What a spreadsheet writes for an empty row: as many cells as columns, all empty.
    data = b"email,first name,city\n,,\nanna@example.com,Anna,Paris\n , ,\n\"\",,\nbert@example.com,Bert,\n,,\n"
    outcome, report = run(data, readers)
    assert (outcome.rows, outcome.created, outcome.invalid) == (2, 2, 0)
    assert report == []


def test_cells_an_export_neutralised_come_back_as_they_were(readers):
    Contact.objects.create(email="anna@example.com", first_name="'quoted", last_name="=SUM(A1)",
                           attributes={"phone": "+49 30 1234", "note": "'=already quoted", "=key": "-1"})
    exported = "".join(contact_rows()).encode()
    assert b"'+49 30 1234" in exported and b"''=already quoted" in exported
    Contact.objects.all().delete()
    outcome, _ = run(exported, readers)
    assert outcome.created == 1
    anna = contact("anna@example.com")
    assert (anna.first_name, anna.last_name) == ("'quoted", "=SUM(A1)")
    assert anna.attributes == {"phone": "+49 30 1234", "note": "'=already quoted", "=key": "-1"}


def test_a_quote_typed_before_a_formula_by_hand_is_read_like_an_export(readers):
    run(b"email,phone\nanna@example.com,'+49 30 1234\n", readers)
    assert contact("anna@example.com").attributes == {"phone": "+49 30 1234"}


def test_bytes_no_encoding_reads_are_reported_in_their_row(readers):
    rows = b"".join(b"user%d@example.com,x\n" % i for i in range(8000))
    data = b"email,name\n" + rows + b'late@example.com,"two\nlines"\nbad@example.com,\x81\n'
    with pytest.raises(ImportRejected, match=r"Row 8003 is not valid cp1252 .* at byte [\d,]+; save the file as UTF-8"):
        run(data, readers)
    assert Contact.objects.count() == 0


def test_an_unclosed_quote_is_reported_in_the_row_it_opens(readers):
    data = b'email,note\nanna@example.com,fine\nbert@example.com,"never closed\n' + b"x" * 200_000 + b"\n"
    with pytest.raises(ImportRejected, match=r"Row 3 cannot be read as CSV: .* never closed"):
        run(data, readers)


def test_the_error_report_neutralises_what_came_from_the_file(readers):
    _, report = run(b"email,name\n=HYPERLINK(\"http://evil\"),X\n", readers)
    assert report[0][:3] == ["2", "email", "'=HYPERLINK(\"http://evil\")"]
