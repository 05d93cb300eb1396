"""The import_contacts and create_api_token commands, on PostgreSQL and on a SQLite file."""

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from campaigns.models import Contact, Import, MailingList

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def command(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_import_creates_the_list_and_prints_counts(tmp_path):
    path = tmp_path / "people.csv"
    path.write_bytes(b"email,first name\nanna@example.com,Anna\nbroken,X\nANNA@example.com,Dup\n")
    report = tmp_path / "errors.csv"
    out = command("import_contacts", str(path), "--list", "Readers", "--errors", str(report))
    assert 'Created mailing list "Readers"' in out
    assert "3 rows, 1 created, 0 updated, 1 skipped, 1 invalid" in out
    assert "row 3, column 'email', value 'broken'" in out
    assert report.read_text().splitlines()[0] == "row,column,value,reason"
    assert MailingList.objects.get(name="Readers").subscriptions.count() == 1
    assert Import.objects.get().status == Import.Status.DONE


def test_import_reads_cr_line_ends_stray_crs_and_empty_spreadsheet_rows(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"email,first name\ranna@example.com,Anna\r,\rbert@example.com,Bert\r")
    out = command("import_contacts", str(path), "--list", "Readers")
    assert "2 rows, 2 created, 0 updated, 0 skipped, 0 invalid" in out
    path.write_bytes(b"email,first name\r\ncarl@example.com,Ca\rrl\r\n,\r\n")
    out = command("import_contacts", str(path), "--list", "Readers")
    assert "1 rows, 1 created, 0 updated, 0 skipped, 0 invalid" in out
    assert Contact.objects.get(email_key="carl@example.com").first_name == "Ca rl"


def test_skip_existing_mode_and_explicit_delimiter(tmp_path):
    Contact.objects.create(email="anna@example.com", first_name="Kept")
    path = tmp_path / "people.csv"
    path.write_bytes(b"email|first name\nanna@example.com|New\n")
    out = command("import_contacts", str(path), "--list", "R", "--mode", "skip-existing", "--delimiter", "|")
    assert "0 created, 0 updated, 1 skipped" in out
    assert Contact.objects.get().first_name == "Kept"


def test_bad_input_fails_with_a_message_and_writes_nothing(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        command("import_contacts", str(tmp_path / "missing.csv"), "--list", "R")
    path = tmp_path / "phones.csv"
    path.write_bytes(b"name,phone\nAnna,1\n")
    with pytest.raises(CommandError, match="No email column"):
        command("import_contacts", str(path), "--list", "R")
    with pytest.raises(CommandError, match="--delimiter"):
        command("import_contacts", str(path), "--list", "R", "--delimiter", "abc")
    assert Contact.objects.count() == 0
    assert Import.objects.get().status == Import.Status.FAILED


def test_create_api_token_prints_a_working_token(django_user_model):
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw")
    token = command("create_api_token", "ops").strip()
    assert Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/contacts").status_code == 200
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        command("create_api_token", "nobody")


@pytest.mark.django_db(False)
def test_the_command_on_a_sqlite_file(tmp_path):
    """The single-machine default: the same engine on SQLite, run as a user would."""
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'herald.sqlite3'}", HERALD_VAR_DIR=str(tmp_path))

    def manage(*args):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)

    assert manage("migrate", "-v0").returncode == 0
    path = tmp_path / "people.csv"
    path.write_bytes("email;vorname;stadt\nanna@example.com;Anna;Köln\nANNA@example.com;Dup;\nbroken;X;\n".encode())
    first = manage("import_contacts", str(path), "--list", "Demo")
    assert first.returncode == 0, first.stderr
    assert "3 rows, 1 created, 0 updated, 1 skipped, 1 invalid" in first.stdout
    path.write_bytes(b"email,vorname,plan\nAnna@Example.com,Anne,gold\nbert@example.com,Bert,\n")
    second = manage("import_contacts", str(path), "--list", "Demo")
    assert "2 rows, 1 created, 1 updated" in second.stdout, second.stderr
    shell = manage("shell", "-c", "from campaigns.models import Contact as C; a = C.objects.get(email_key='anna@example.com');"
                                  " print(a.first_name, sorted(a.attributes.items()), C.objects.count())")
    assert shell.stdout.strip().splitlines()[-1] == "Anne [('plan', 'gold'), ('stadt', 'Köln')] 2", shell.stderr
    path.write_bytes(b"email,vorname\nanna@example.com,Changed\n")
    third = manage("import_contacts", str(path), "--list", "Other", "--mode", "skip-existing")
    assert "1 rows, 0 created, 0 updated, 1 skipped" in third.stdout, third.stderr
    assert 'The list "Other" now has 1 subscriptions.' in third.stdout
    rejected = manage("import_contacts", str(tmp_path), "--list", "Demo")
    assert rejected.returncode != 0 and "Traceback" not in rejected.stderr
