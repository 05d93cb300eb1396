"""Suppression list import and export as CSV, shared by the API and the admin."""

import csv
import io
from dataclasses import dataclass, field

from email_validator import EmailNotValidError, validate_email

from campaigns.models import Suppression, email_key

EXPORT_FIELDS = ["email", "reason", "detail", "created_at"]
MAX_ERRORS = 100


@dataclass
class ImportResult:
    added: int = 0
    existing: int = 0
    errors: list = field(default_factory=list)  # "row 12, column email: …"
    invalid: int = 0


def check_email(value: str) -> str:
    """The address, trimmed, or ValueError saying what is wrong with it."""
    value = (value or "").strip()
    if not value:
        raise ValueError("is empty")
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return value


def check_reason(value: str) -> str:
    value = (value or "").strip().lower() or Suppression.Reason.MANUAL
    if value not in Suppression.Reason.values:
        raise ValueError(f"{value!r} is not one of {', '.join(Suppression.Reason.values)}")
    return value


def _rows(text):
    """(row number, email, reason, detail) from a CSV with or without a header row."""
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    first = next(reader, None)
    if first is None:
        return
    header = [h.strip().lower() for h in first]
    if "email" in header:
        columns = {name: header.index(name) for name in ("email", "reason", "detail") if name in header}
        start = 2
    else:
        columns = {"email": 0, "reason": 1, "detail": 2}
        reader = csv.reader(io.StringIO(text), dialect)
        start = 1
    for number, row in enumerate(reader, start=start):
        if not any(cell.strip() for cell in row):
            continue

        def cell(name, row=row):
            index = columns.get(name)
            return row[index] if index is not None and index < len(row) else ""

        yield number, cell("email"), cell("reason"), cell("detail")


def import_csv(data: bytes) -> ImportResult:
    """Add every valid row; a bad row is reported by number and column and skips only itself."""
    result = ImportResult()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if "\x00" in text:
        # csv refuses NUL bytes mid-file; a list of addresses never has them.
        _error(result, "the file contains binary data (NUL bytes); a suppression list must be a text CSV file")
        return result
    valid = {}
    for number, email, reason, detail in _rows(text):
        try:
            email = check_email(email)
        except ValueError as exc:
            _error(result, f"row {number}, column email: {email!r} {exc}")
            continue
        try:
            reason = check_reason(reason)
        except ValueError as exc:
            _error(result, f"row {number}, column reason: {exc}")
            continue
        valid.setdefault(email_key(email), (email, reason, detail.strip()[:2000]))
    existing = set(Suppression.objects.filter(email_key__in=list(valid)).values_list("email_key", flat=True))
    new = [Suppression(email=e, email_key=k, reason=r, detail=d) for k, (e, r, d) in valid.items() if k not in existing]
    Suppression.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
    result.added, result.existing = len(new), len(existing)
    return result


def _error(result, message):
    result.invalid += 1
    if len(result.errors) < MAX_ERRORS:
        result.errors.append(message)


def export_csv(queryset, out):
    """Write suppressions as CSV to a text stream (an HttpResponse works)."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_FIELDS)
    for row in queryset.order_by("email_key").values_list("email", "reason", "detail", "created_at").iterator(2000):
        writer.writerow([row[0], row[1], row[2], row[3].isoformat()])
