"""python manage.py import_contacts FILE --list NAME [--mode upsert|skip-existing] [--delimiter D] [--encoding E]
[--confirmed]"""

import shutil
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from campaigns.csvfiles import CsvRejected, describe, parse_delimiter
from campaigns.imports import run_import
from campaigns.models import Import, MailingList


class Command(BaseCommand):
    # System checks cost seconds at start-up and have nothing to say about a CSV file.
    requires_system_checks = []
    help = (
        "Import contacts from a CSV file into a mailing list (created when missing). "
        "Columns are matched by header name; other columns become attributes. "
        "In upsert mode existing contacts get the file's names and attributes; in skip-existing mode "
        "they are left untouched (and counted as skipped) but still added to the list."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV file (UTF-8 with or without BOM, or Windows-1252)")
        parser.add_argument("--list", required=True, dest="list_name", metavar="NAME", help="mailing list name")
        parser.add_argument("--mode", choices=Import.Mode.values, default=Import.Mode.UPSERT)
        parser.add_argument("--delimiter", default="", help="',' ';' or 'tab' (detected when omitted)")
        parser.add_argument("--encoding", default="", help="e.g. utf-8 or cp1252 (detected when omitted)")
        parser.add_argument("--errors", metavar="PATH", help="also write the error report to PATH")
        parser.add_argument("--confirmed", action="store_true",
                            help="the people confirmed their subscription elsewhere: without it, a double opt-in "
                                 "list's new subscriptions stay unconfirmed and are not mailed")

    def handle(self, *args, file, list_name, mode, delimiter, encoding, errors=None, confirmed=False, **options):
        path = Path(file)
        if not path.is_file():
            raise CommandError(f"{file}: no such file")
        list_name = list_name.strip()
        if not list_name:
            raise CommandError("--list needs a name")
        try:
            parse_delimiter(delimiter)
        except CsvRejected as exc:
            raise CommandError(f"--delimiter: {exc}") from None
        mailing_list, created = MailingList.objects.get_or_create(name=list_name)
        if created:
            self.stdout.write(f'Created mailing list "{mailing_list.name}".')
        imp = Import.objects.create(
            mailing_list=mailing_list, original_name=path.name, mode=mode, delimiter=delimiter, encoding=encoding,
            confirmed=confirmed,
        )
        with path.open("rb") as fh:
            imp = run_import(imp, fh)
        if imp.status == Import.Status.FAILED:
            raise CommandError(f"{file}: {imp.error}")
        self.stdout.write(
            f'{path.name} → "{mailing_list.name}": {imp.rows_processed} rows, {imp.created} created, '
            f"{imp.updated} updated, {imp.skipped} skipped, {imp.invalid} invalid "
            f"(encoding {imp.encoding}, delimiter {imp.delimiter!r})."
        )
        for row, column, value, reason in imp.outcome.first_errors:
            self.stdout.write(f"  {describe(row, column, value, reason)}")
        if imp.error_report:
            if errors:
                with imp.error_report.open("rb") as src, open(errors, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                self.stdout.write(f"Error report: {errors}")
            else:
                self.stdout.write(f"Error report: {imp.error_report.path}")
        total = mailing_list.subscriptions.count()
        self.stdout.write(f'The list "{mailing_list.name}" now has {total} subscriptions.')
