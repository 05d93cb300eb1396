"""Suppression list import and export as CSV, shared by the API and the admin.

Files are read by ``campaigns.csvfiles``, the reader of every CSV file Herald
accepts: the same size limit, encoding and delimiter detection, line ends and
messages as the contact import. Rows stream in batches, in one transaction:
a file refused half-way (over the size limit, binary data) adds nothing, and
nothing already stored is ever changed or removed by an import.
"""

from dataclasses import dataclass, field

from django.db import transaction

from campaigns import audit, csvfiles
from campaigns.imports import field_for, is_valid_address
from campaigns.models import Suppression, email_key

EXPORT_FIELDS = ["email", "reason", "detail", "created_at"]
MAX_ERRORS = 100
BATCH = 2000
# Without a header row, the columns are read in this order.
NO_HEADER = {"email": 0, "reason": 1, "detail": 2}


@dataclass
class ImportResult:
    added: int = 0
    # Already suppressed, before the import or by an earlier row of the file.
    existing: int = 0
    errors: list = field(default_factory=list)  # "row 12, column 'email', value 'x': …"
    invalid: int = 0


def check_email(value: str) -> str:
    """The address, trimmed, or ValueError saying what is wrong with it."""
    value = (value or "").strip()
    if not value:
        raise ValueError("is empty")
    reason = is_valid_address(value)
    if reason is not None:
        raise ValueError(reason)
    return value


def check_reason(value: str) -> str:
    value = (value or "").strip().lower() or Suppression.Reason.MANUAL
    if value not in Suppression.Reason.values:
        raise ValueError(f"{value!r} is not one of {', '.join(Suppression.Reason.values)}")
    return value


def import_csv(fileobj) -> ImportResult:
    """Suppress the address of every valid row of a CSV file (a binary, seekable file object).

    The columns are email and optionally reason and detail, named by a header
    row or, without one, in that order. A bad row is reported by number and
    column and skips only itself. Raises CsvRejected (TooLarge for the size)
    when the file as a whole cannot be read; then nothing is added.
    """
    source = csvfiles.CsvFile(fileobj, what="suppression list")
    result = source.read(_import_records)
    audit.record("suppressions.import", added=result.added, existing=result.existing, errors=len(result.errors))
    return result


def _import_records(records) -> ImportResult:
    result, batch, columns, names = ImportResult(), {}, None, {}
    row = 0  # the records read so far; the header, when there is one, is row 1
    with transaction.atomic():
        try:
            for cells in records:
                row += 1
                if columns is None:
                    columns, names = _header(cells)
                    if columns:
                        continue
                    columns, names = NO_HEADER, {}
                if csvfiles.is_blank(cells):
                    continue
                _read_row(result, batch, row, cells, columns, names)
                if len(batch) >= BATCH:
                    _store(result, batch)
        except csvfiles.READ_ERRORS as exc:
            raise csvfiles.rejected(exc, row + 1) from None
        _store(result, batch)
    return result


def _header(cells):
    """({field: index}, {field: column name}) when the row names an email column, else ({}, {})."""
    columns, names = {}, {}
    for index, name in enumerate(cells):
        target = field_for(name)
        if target in ("email", "reason", "detail") and target not in columns:
            columns[target], names[target] = index, name.strip()
    return (columns, names) if "email" in columns else ({}, {})


def _read_row(result, batch, row, cells, columns, names):
    def cell(name):
        index = columns.get(name)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    email = cell("email")
    problem = is_valid_address(email) if email else "the address is missing"
    if problem is not None:
        _error(result, row, names.get("email", "email"), email, problem)
        return
    try:
        reason = check_reason(cell("reason"))
    except ValueError as exc:
        _error(result, row, names.get("reason", "reason"), cell("reason"), str(exc))
        return
    key = email_key(email)
    if key in batch:
        result.existing += 1
    else:
        batch[key] = (email, reason, cell("detail")[:2000])


def _store(result, batch):
    """Insert the batch's addresses that are not suppressed yet; count the others as existing."""
    if not batch:
        return
    existing = set(Suppression.objects.filter(email_key__in=list(batch)).values_list("email_key", flat=True))
    new = [Suppression(email=e, email_key=k, reason=r, detail=d) for k, (e, r, d) in batch.items() if k not in existing]
    Suppression.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
    result.added += len(new)
    result.existing += len(existing)
    batch.clear()


def _error(result, row, column, value, reason):
    result.invalid += 1
    if len(result.errors) < MAX_ERRORS:
        result.errors.append(csvfiles.describe(row, column, value, reason))


def export_csv(queryset, out):
    """Write suppressions as CSV to a text stream (an HttpResponse works), formula-like cells neutralised.

    The detail is often text from a remote mail server, so it is never trusted.
    """
    audit.record("suppressions.export", rows=queryset.count())
    writer = csvfiles.writer(out)
    writer.writerow(EXPORT_FIELDS)
    for row in queryset.order_by("email_key").values_list("email", "reason", "detail", "created_at").iterator(2000):
        writer.writerow([row[0], row[1], row[2], row[3].isoformat()])
