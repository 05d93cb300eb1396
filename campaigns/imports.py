"""CSV import of contacts: the one engine behind the command, the admin upload and the API.

How a file travels:

1. ``campaigns.csvfiles`` (the reader of every CSV file Herald accepts) checks
   the size, detects the encoding, the delimiter and the line ends, and refuses
   what is not a text CSV file. A file without an email column is rejected
   before anything is written.
2. The file is streamed row by row into a temporary staging table (``COPY`` on
   PostgreSQL, batched inserts on SQLite) in constant memory. Invalid rows go to
   the error report instead. Nothing outside the staging table is touched yet, so
   a failure half-way through (a NUL byte, an undecodable chunk) leaves the
   audience exactly as it was; a later chunk that is not UTF-8 after a UTF-8
   looking start makes the read start over as cp1252.
3. One transaction merges the staging table into contacts and subscriptions with
   set-based statements (``INSERT ... ON CONFLICT``), de-duplicating addresses
   case-insensitively, and stores the counts. Either all of it lands or none.
"""

# The SQL below is assembled from identifiers Herald generates (the staging table
# name, column numbers); every value from a file travels as a query parameter.
# ruff: noqa: S608

import contextlib
import csv
import heapq
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from campaigns import csvfiles, suppression
from campaigns.models import Import, MailingList, Subscription

log = logging.getLogger(__name__)

CHUNK_ROWS = 50_000
MAX_COLUMNS = 200

# Header names (lower-cased, spaces/underscores/hyphens folded) and what they mean.
ALIASES = {
    "email": "email",
    "e mail": "email",
    "email address": "email",
    "e mail address": "email",
    "email adresse": "email",
    "e mail adresse": "email",
    "mail": "email",
    "first name": "first_name",
    "firstname": "first_name",
    "given name": "first_name",
    "vorname": "first_name",
    "last name": "last_name",
    "lastname": "last_name",
    "surname": "last_name",
    "family name": "last_name",
    "nachname": "last_name",
    "name": "name",
    "full name": "name",
}

# Columns an import reads past: a status is never set from a file, so an import
# (say, of an old export) cannot bring back someone who unsubscribed.
IGNORED = {"status", "id", "created at", "updated at"}

REPORT_HEADER = ["row", "column", "value", "reason"]

# A common, plain address shape that email-validator always accepts: checked first
# because email-validator costs about 25 µs per call, which alone would cap an
# import near 40,000 rows/s. Anything else goes to email-validator.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_+-]{1,64}(?:\.[A-Za-z0-9_+-]{1,64})*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
).fullmatch
_SPECIAL_SUFFIXES = tuple("." + name for name in SPECIAL_USE_DOMAIN_NAMES)

# The file as a whole cannot be imported; the message says why, for a person.
ImportRejected = csvfiles.CsvRejected


@dataclass
class Outcome:
    rows: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    invalid: int = 0
    encoding: str = ""
    delimiter: str = ""
    report_rows: int = 0
    # A few first problems, for people reading a command's output.
    first_errors: list = field(default_factory=list)


@dataclass
class Columns:
    email: int
    first_name: int | None
    last_name: int | None
    name: int | None
    # (index, attribute key) for every column that is not a known field.
    attributes: list
    header: list


def is_valid_address(address: str) -> str | None:
    """None when the address is syntactically valid, else the reason (no DNS)."""
    if _PLAIN_ADDRESS(address) and len(address) <= 254 and len(address.partition("@")[0]) <= 64:
        domain = address.rpartition("@")[2].lower()
        if "--" not in domain and not domain.endswith(_SPECIAL_SUFFIXES):
            return None
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


# --- reading ---------------------------------------------------------------


def _fold(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower())).strip()


def field_for(name: str) -> str | None:
    """The field a header name gives (email, first_name, …), or the folded name when it is no known field."""
    folded = _fold(name)
    return ALIASES.get(folded, folded)


# What an operator may make of a column in the import preview (stored on Import.mapping by column index).
TARGETS = {"email": "email", "first_name": "first name", "last_name": "last name",
           "name": "full name (split into first and last)", "attribute": "attribute", "ignore": "ignored"}


def map_columns(header: list, chosen: dict | None = None) -> Columns:
    """Known fields by header name (case-insensitively, with aliases); the rest are attributes.

    ``chosen`` ({column index: target}) overrides that reading for the columns it names, as an
    operator set them in the preview: a target of TARGETS, "attribute:<key>" to rename one.
    """
    if len(header) > MAX_COLUMNS:
        raise ImportRejected(f"The header has {len(header)} columns; at most {MAX_COLUMNS} are supported.")
    chosen = {int(k): v for k, v in (chosen or {}).items()}
    found, attributes, seen, keys = {}, [], {}, {}
    for index, raw in enumerate(header):
        name = raw.strip()
        pick = chosen.get(index)
        if pick is None:
            folded = _fold(name)
            if not folded:
                continue
            if folded in seen:
                raise ImportRejected(
                    f"Column {name!r} appears twice in the header (columns {seen[folded] + 1} and {index + 1}).")
            seen[folded] = index
            if folded in IGNORED:
                continue
            target, key = ALIASES.get(folded), name
        else:
            kind, _, renamed = str(pick).partition(":")
            if kind not in TARGETS:
                raise ImportRejected(f"Column {index + 1} ({name!r}): {pick!r} is not something a column can become.")
            if kind == "ignore":
                continue
            target, key = (None, renamed.strip() or name) if kind == "attribute" else (kind, name)
        if target is None:
            if not _fold(key):
                raise ImportRejected(f"Column {index + 1} ({name!r}) becomes an attribute with no name; name it.")
            if _fold(key) in keys:
                raise ImportRejected(f"Columns {keys[_fold(key)] + 1} and {index + 1} both give the attribute {key!r}.")
            keys[_fold(key)] = index
            attributes.append((index, key))
        elif target in found:
            raise ImportRejected(
                f"Columns {header[found[target]].strip()!r} and {name!r} both give the {target.replace('_', ' ')}; keep one."
            )
        else:
            found[target] = index
    if "email" not in found:
        shown = ", ".join(repr(h.strip()) for h in header[:10]) or "(empty)"
        raise ImportRejected(
            f"No email column: the header must name one (email, e-mail or email address); it has {shown}."
        )
    return Columns(
        email=found["email"],
        first_name=found.get("first_name"),
        last_name=found.get("last_name"),
        name=found.get("name"),
        attributes=attributes,
        header=[h.strip() for h in header],
    )


# --- staging ---------------------------------------------------------------


class _Stage:
    """A temporary table holding the valid rows until the final merge."""

    def __init__(self, n_attributes):
        self.table = "herald_import_" + uuid.uuid4().hex[:12]
        self.attr_cols = [f"a{i}" for i in range(n_attributes)]

    @property
    def columns(self):
        return ["s_row", "s_email", "s_key", "s_first", "s_last", *self.attr_cols]

    def create(self, cursor):
        cols = ", ".join(f"{c} text" for c in self.attr_cols)
        cursor.execute(
            f"CREATE TEMPORARY TABLE {self.table} (s_row integer NOT NULL, s_email text NOT NULL, s_key text NOT NULL, "
            f"s_first text, s_last text{', ' + cols if cols else ''})"
        )

    def drop(self, cursor):
        cursor.execute(f"DROP TABLE IF EXISTS {self.table}")

    def duplicates_sql(self):
        """(row, email, first row) for every later occurrence of an address, in row order.

        Grouping by key (a hash aggregate) finds the few repeated addresses
        without sorting the whole staging table again.
        """
        return (
            f"WITH d AS (SELECT s_key, min(s_row) AS first_row FROM {self.table} GROUP BY s_key HAVING count(*) > 1) "
            f"SELECT s.s_row, s.s_email, d.first_row FROM {self.table} s JOIN d ON d.s_key = s.s_key "
            "WHERE s.s_row <> d.first_row ORDER BY s.s_row"
        )

    def analyse(self, cursor):
        # Temporary tables get no statistics from autovacuum; without them the
        # planner guesses a handful of rows and may pick nested loops.
        cursor.execute(f"ANALYZE {self.table}")


class _PostgresStage(_Stage):
    def writer(self, cursor):
        return _PostgresCopy(cursor, self)

    def attributes_sql(self, keys):
        if not keys:
            return "'{}'::jsonb", []
        # jsonb_build_object takes at most 100 arguments: join groups of 40 pairs.
        parts, params = [], []
        for start in range(0, len(keys), 40):
            pairs = [f"%s::text, a{i}" for i in range(start, min(start + 40, len(keys)))]
            parts.append(f"jsonb_build_object({', '.join(pairs)})")
            params.extend(keys[start : start + 40])
        return f"jsonb_strip_nulls({' || '.join(parts)})", params

    def merge(self, cursor, list_id, consent, mode, keys, now):
        attrs, params = self.attributes_sql(keys)
        source = (
            f"SELECT DISTINCT ON (s_key) s_key, s_email, s_first, s_last, {attrs} AS attrs "
            f"FROM {self.table} ORDER BY s_key, s_row"
        )
        insert = (
            "INSERT INTO campaigns_contact AS c "
            "(email, email_key, first_name, last_name, attributes, status, created_at, updated_at) "
            "SELECT s_email, s_key, COALESCE(s_first, ''), COALESCE(s_last, ''), attrs, 'active', %s, %s FROM src "
        )
        # A contact created by this statement cannot have a subscription yet, so
        # its subscription goes in with a plain INSERT: ON CONFLICT's speculative
        # insertion costs a quarter more per row. Known contacts may have one.
        subscribe = (
            "INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, source, source_detail, confirmed_at, "
            "created_at, updated_at) SELECT id, %s, %s, 'import', %s, %s, %s, %s FROM {ids}"
        )
        new_subs = subscribe.format(ids="{new}")
        old_subs = subscribe.format(ids="{old}") + " ON CONFLICT (contact_id, mailing_list_id) DO NOTHING"
        sub_args = [list_id, *consent, now, now]
        if mode == Import.Mode.UPSERT:
            # Empty cells (NULL in staging, '' in EXCLUDED) leave what is stored;
            # attributes are merged key by key.
            sql = (
                f"WITH src AS ({source}), up AS ({insert} ON CONFLICT (email_key) DO UPDATE SET "
                "first_name = COALESCE(NULLIF(EXCLUDED.first_name, ''), c.first_name), "
                "last_name = COALESCE(NULLIF(EXCLUDED.last_name, ''), c.last_name), "
                "attributes = c.attributes || EXCLUDED.attributes, updated_at = EXCLUDED.updated_at "
                "RETURNING c.id, (xmax = 0) AS inserted), "
                f"sub_new AS ({new_subs.format(new='up WHERE inserted')}), "
                f"sub_old AS ({old_subs.format(old='up WHERE NOT inserted')}) "
                "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), 0 FROM up"
            )
        else:
            # The join sees the contacts as they were before this statement: the existing ones.
            sql = (
                f"WITH src AS ({source}), up AS ({insert} ON CONFLICT (email_key) DO NOTHING RETURNING c.id), "
                "old AS (SELECT c.id FROM src JOIN campaigns_contact c ON c.email_key = src.s_key), "
                f"sub_new AS ({new_subs.format(new='up')}), "
                f"sub_old AS ({old_subs.format(old='old')}) "
                "SELECT (SELECT count(*) FROM up), 0, (SELECT count(*) FROM old)"
            )
        args = [*params, now, now, *sub_args, *sub_args]
        cursor.execute("SET LOCAL work_mem = '128MB'")
        cursor.execute(sql, args)
        return cursor.fetchone()

    def duplicates(self):
        # A server-side cursor: a file full of duplicates must not fill memory.
        with connection.connection.cursor(name=self.table + "_dups") as cursor:
            cursor.itersize = 5000
            cursor.execute(self.duplicates_sql())
            yield from cursor


class _PostgresCopy:
    """Rows into the staging table through COPY, chunk by chunk."""

    def __init__(self, cursor, stage):
        self._cursor = cursor
        self._stage = stage
        self._copy = None
        self._ctx = None

    def open(self):
        self._ctx = self._cursor.cursor.copy(f"COPY {self._stage.table} ({', '.join(self._stage.columns)}) FROM STDIN")
        self._copy = self._ctx.__enter__()
        return self._copy.write_row

    def close(self):
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = self._copy = None

    def abort(self, exc):
        if self._ctx is not None:
            try:
                self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            except Exception:  # the COPY is being abandoned; its own error adds nothing
                pass
            self._ctx = self._copy = None


class _SqliteStage(_Stage):
    def writer(self, cursor):
        return _SqliteBatch(cursor, self)

    def attributes_sql(self, keys):
        if not keys:
            return "'{}'", []
        # json_patch onto {} drops the nulls that empty cells produce.
        parts, params = [], []
        for start in range(0, len(keys), 40):
            pairs = [f"?, a{i}" for i in range(start, min(start + 40, len(keys)))]
            parts.append(f"json_object({', '.join(pairs)})")
            params.extend(keys[start : start + 40])
        expr = "'{}'"
        for part in parts:
            expr = f"json_patch({expr}, {part})"
        return expr, params

    def merge(self, cursor, list_id, consent, mode, keys, now):
        attrs, params = self.attributes_sql(keys)
        attrs = attrs.replace("?", "%s")
        source = (
            f"SELECT s_key, s_email, s_first, s_last, {attrs} AS attrs FROM {self.table} "
            f"WHERE s_row IN (SELECT min(s_row) FROM {self.table} GROUP BY s_key)"
        )
        cursor.execute(
            f"SELECT count(*) FROM ({source}) src JOIN campaigns_contact c ON c.email_key = src.s_key",
            params,
        )
        existing = cursor.fetchone()[0]
        cursor.execute(f"SELECT count(DISTINCT s_key) FROM {self.table}")
        distinct = cursor.fetchone()[0]
        conflict = (
            "ON CONFLICT (email_key) DO UPDATE SET "
            "first_name = COALESCE(NULLIF(excluded.first_name, ''), first_name), "
            "last_name = COALESCE(NULLIF(excluded.last_name, ''), last_name), "
            "attributes = json_patch(attributes, excluded.attributes), updated_at = excluded.updated_at"
            if mode == Import.Mode.UPSERT
            else "ON CONFLICT (email_key) DO NOTHING"
        )
        # "WHERE true" tells SQLite's parser the ON CONFLICT belongs to the INSERT.
        cursor.execute(
            "INSERT INTO campaigns_contact (email, email_key, first_name, last_name, attributes, status, created_at, updated_at) "
            f"SELECT s_email, s_key, COALESCE(s_first, ''), COALESCE(s_last, ''), attrs, 'active', %s, %s "
            f"FROM ({source}) WHERE true {conflict}",
            [now, now, *params],
        )
        cursor.execute(
            "INSERT INTO campaigns_subscription (contact_id, mailing_list_id, status, source, source_detail, confirmed_at, "
            "created_at, updated_at) SELECT c.id, %s, %s, 'import', %s, %s, %s, %s "
            f"FROM (SELECT DISTINCT s_key FROM {self.table}) s "
            "JOIN campaigns_contact c ON c.email_key = s.s_key "
            "ON CONFLICT (contact_id, mailing_list_id) DO NOTHING",
            [list_id, *consent, now, now],
        )
        if mode == Import.Mode.UPSERT:
            return distinct - existing, existing, 0
        return distinct - existing, 0, existing

    def duplicates_sql(self):
        # SQLite has no hash join: joining the repeated keys back to an
        # unindexed staging table would scan it once per key. A window does one sort.
        return (
            f"SELECT s_row, s_email, first_row FROM (SELECT s_row, s_email, "
            f"min(s_row) OVER (PARTITION BY s_key) AS first_row FROM {self.table}) d "
            "WHERE s_row <> first_row ORDER BY s_row"
        )

    def duplicates(self):
        with connection.cursor() as cursor:
            cursor.execute(self.duplicates_sql())
            while batch := cursor.fetchmany(5000):
                yield from batch


class _SqliteBatch:
    def __init__(self, cursor, stage):
        self._cursor = cursor
        self._sql = f"INSERT INTO {stage.table} VALUES ({', '.join('?' * len(stage.columns))})"
        self._rows = []

    def open(self):
        self._rows = []
        return self._rows.append

    def close(self):
        if self._rows:
            with transaction.atomic():
                self._cursor.cursor.executemany(self._sql, self._rows)
            self._rows = []

    def abort(self, exc):
        self._rows = []


def _stage_for(n_attributes):
    if connection.vendor == "postgresql":
        return _PostgresStage(n_attributes)
    if connection.vendor == "sqlite":
        return _SqliteStage(n_attributes)
    raise ImportRejected(f"Imports support PostgreSQL and SQLite, not {connection.vendor}.")


# --- the engine ------------------------------------------------------------


class ErrorReport:
    """Problems found while reading, spooled to a temporary file in row order."""

    def __init__(self):
        self.file = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
        self._writer = csv.writer(self.file)
        self.count = 0

    def add(self, row, column, value, reason):
        self._writer.writerow([row, column, value, reason])
        self.count += 1

    def reset(self):
        self.file.seek(0)
        self.file.truncate()
        self.count = 0

    def rows(self):
        self.file.flush()
        self.file.seek(0)
        for row in csv.reader(self.file):
            yield int(row[0]), row[1], row[2], row[3]

    def close(self):
        self.file.close()


def import_contacts(fileobj, mailing_list, *, mode=Import.Mode.UPSERT, delimiter=None, encoding=None,
                    report=None, progress=None, on_merged=None, confirmed=False, source_detail="",
                    mapping=None) -> Outcome:
    """Import a CSV file (a binary, seekable file object) into ``mailing_list``.

    New subscriptions record the import as their source (``source_detail`` says
    which and by whom). On a double opt-in list they stay unconfirmed, so no
    campaign mails them, unless ``confirmed`` says the people confirmed elsewhere.

    ``report`` is a writable text file that receives the error report as CSV;
    ``progress(rows)`` is called after each chunk; ``on_merged(outcome)`` runs in
    the merge's transaction, so what it stores commits with the contacts. Raises
    ImportRejected, with nothing written, when the file cannot be a contact list.
    ``mapping``: what the operator made of columns in the preview (see map_columns).
    """
    if mode not in Import.Mode.values:
        raise ImportRejected(f"Unknown mode {mode!r}: use one of {', '.join(Import.Mode.values)}.")
    source = csvfiles.CsvFile(fileobj, encoding=encoding, delimiter=delimiter, what="contact list")
    errors = ErrorReport()
    started = time.monotonic()

    def read(records):
        # A second reading (as cp1252) starts with an empty report.
        errors.reset()
        return _read_into_stage(source, records, errors, progress, mapping)

    try:
        outcome, stage, columns = source.read(read, raw=True)
        staged = time.monotonic()
        try:
            with transaction.atomic():
                _merge(stage, columns, outcome, mailing_list, mode, errors, report, confirmed, source_detail)
                if on_merged is not None:
                    on_merged(outcome)
            log.info("import of %d rows into %r: read %.1fs, merge %.1fs", outcome.rows, mailing_list.name,
                     staged - started, time.monotonic() - staged)
        finally:
            with connection.cursor() as cursor:
                stage.drop(cursor)
    finally:
        errors.close()
    return outcome


def read_header(records, chosen=None) -> Columns:
    """The first of the raw records, mapped to fields (``chosen``: see map_columns); raises ImportRejected."""
    try:
        header = next(records, None)
    except csvfiles.READ_ERRORS as exc:
        raise csvfiles.rejected(exc, 1) from None
    if not header or csvfiles.is_blank(header):
        raise ImportRejected("The first row must be a header naming the columns; it is empty.")
    return map_columns(csvfiles.unneutralised(header), chosen)


def _read_into_stage(source, records, errors, progress, mapping=None):
    """Stream the records into a new staging table; returns (outcome, stage, columns)."""
    columns = read_header(records, mapping)
    stage = _stage_for(len(columns.attributes))
    outcome = Outcome(encoding=source.encoding_name, delimiter=source.delimiter)
    # Inside a caller's transaction a failed COPY would abort it: a savepoint
    # keeps the failure (and the staging table) to this step.
    scope = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with scope, connection.cursor() as cursor:
            stage.create(cursor)
            _stream_rows(source, records, columns, stage.writer(cursor), outcome, errors, progress)
            stage.analyse(cursor)
    except BaseException:
        if not connection.in_atomic_block or not connection.needs_rollback:
            with connection.cursor() as cursor:
                stage.drop(cursor)
        raise
    return outcome, stage, columns


def _stream_rows(source, reader, columns, writer, outcome, errors, progress):
    """The hot loop: validate each row of the raw records and hand the good ones to the staging writer."""
    email_i, first_i, last_i, name_i = columns.email, columns.first_name, columns.last_name, columns.name
    attr_idx = [i for i, _ in columns.attributes]
    header = columns.header
    email_col = header[email_i]
    width = max([email_i, *(i for i in (first_i, last_i, name_i) if i is not None), *attr_idx]) + 1
    valid = is_valid_address
    is_blank, unneutralised = csvfiles.is_blank, csvfiles.unneutralised
    row_no = 1
    in_chunk = 0
    write = writer.open()
    try:
        for row in reader:
            row_no += 1
            if source.quotes_seen:
                row = unneutralised(row)
            if len(row) < width:
                if is_blank(row):
                    continue  # blank lines are not rows
                row = row + [""] * (width - len(row))
            email = row[email_i].strip()
            if not email and is_blank(row):
                continue  # nor are lines of only delimiters, a spreadsheet's empty rows
            outcome.rows += 1
            reason = valid(email) if email else "the address is missing"
            if reason is not None:
                outcome.invalid += 1
                errors.add(row_no, email_col, email, reason)
                continue
            first = row[first_i].strip() if first_i is not None else ""
            last = row[last_i].strip() if last_i is not None else ""
            if name_i is not None and not first and not last:
                first, _, last = row[name_i].strip().rpartition(" ")
                if not first:
                    first, last = last, ""
            if len(first) > 200 or len(last) > 200:
                outcome.invalid += 1
                errors.add(row_no, *_too_long_name(header, columns, first, last))
                continue
            write((row_no, email, email.lower(), first or None, last or None, *[row[i].strip() or None for i in attr_idx]))
            in_chunk += 1
            if in_chunk >= CHUNK_ROWS:
                writer.close()
                if progress:
                    progress(outcome.rows)
                in_chunk = 0
                write = writer.open()
        writer.close()
    except csvfiles.READ_ERRORS as exc:
        writer.abort(exc)
        raise csvfiles.rejected(exc, row_no + 1) from None
    except BaseException as exc:
        writer.abort(exc)
        raise
    if progress:
        progress(outcome.rows)


def _too_long_name(header, columns, first, last):
    """(column, value, reason) for a name over the 200 characters a contact can hold."""
    is_first = len(first) > 200
    index = columns.first_name if is_first else columns.last_name
    if index is None:
        index = columns.name
    value = first if is_first else last
    return header[index], value[:60] + "…", f"longer than 200 characters ({len(value)})"


def _merge(stage, columns, outcome, mailing_list, mode, errors, report, confirmed=False, source_detail=""):
    now = timezone.now()
    if mailing_list.optin == MailingList.OptIn.DOUBLE and not confirmed:
        consent = (Subscription.Status.UNCONFIRMED, source_detail[:200], None)
    else:
        consent = (Subscription.Status.CONFIRMED, source_detail[:200], now if confirmed else None)
    keys = [name for _, name in columns.attributes]
    # Subscriptions carry no foreign-key constraint: hold the list until commit
    # so that it cannot be deleted under the import.
    if not MailingList.objects.select_for_update(no_key=True).filter(pk=mailing_list.pk).exists():
        raise ImportRejected(f"The list {mailing_list.name!r} was deleted during the import; nothing was imported.")
    with connection.cursor() as cursor:
        created, updated, skipped = stage.merge(cursor, mailing_list.pk, consent, mode, keys, now)
        if connection.vendor == "postgresql":
            # An address erased before comes back blocklisted: its keyed hash is in the suppression list.
            suppression.blocklist_erased_in(cursor, f"SELECT DISTINCT s_key FROM {stage.table}")
    outcome.created, outcome.updated, outcome.skipped = created, updated, skipped
    email_col = columns.header[columns.email]
    # Every distinct address was created, updated or skipped as known: when they
    # add up to the rows staged, no address repeats and there is nothing to look for.
    staged = outcome.rows - outcome.invalid
    repeats = stage.duplicates() if created + updated + skipped < staged else iter(())
    duplicates = (
        (row, email_col, email, f"duplicate of row {first} (same address, ignoring case)")
        for row, email, first in repeats
    )
    # Column names and values come from the file: the report neutralises them like any export.
    writer = csvfiles.writer(report) if report is not None else None
    if writer:
        writer.writerow(REPORT_HEADER)
    for row, column, value, reason in heapq.merge(errors.rows(), _counting(duplicates, outcome)):
        outcome.report_rows += 1
        if len(outcome.first_errors) < 10:
            outcome.first_errors.append((row, column, value, reason))
        if writer:
            writer.writerow([row, column, value, reason])


def _counting(duplicates, outcome):
    for item in duplicates:
        outcome.skipped += 1
        yield item


# --- the Import row --------------------------------------------------------


def _import_detail(imp: Import) -> str:
    by = imp.created_by.get_username() if imp.created_by_id else "the command line"
    confirmed = ", confirmed elsewhere" if imp.confirmed else ""
    return f"import {imp.pk} of {imp.original_name or 'a file'} by {by}{confirmed}"


def run_import(imp: Import, fileobj=None) -> Import:
    """Run an Import row: read its file (or ``fileobj``), store counts, report and status.

    Never raises for a bad file: a rejected file marks the import failed with the reason.
    """
    from django.core.files import File

    if imp.mailing_list is None:
        return _fail(imp, "The import has no mailing list (was it deleted?).")
    Import.objects.filter(pk=imp.pk).update(status=Import.Status.RUNNING)
    imp.status = Import.Status.RUNNING
    own = fileobj is None
    report = tempfile.NamedTemporaryFile("w+", encoding="utf-8", newline="", suffix=".csv", delete=False)  # noqa: SIM115
    try:
        if own:
            if not imp.file:
                return _fail(imp, "The import has no file.")
            fileobj = imp.file.open("rb")

        def progress(rows):
            Import.objects.filter(pk=imp.pk).update(rows_processed=rows)

        def on_merged(outcome):
            # Runs in the merge's transaction: counts, report and contacts commit together.
            report.flush()
            for name in ("created", "updated", "skipped", "invalid"):
                setattr(imp, name, getattr(outcome, name))
            imp.rows_processed = outcome.rows
            imp.delimiter = imp.delimiter or outcome.delimiter
            imp.encoding = imp.encoding or outcome.encoding
            imp.status = Import.Status.DONE
            imp.error = ""
            imp.finished_at = timezone.now()
            if outcome.report_rows:
                with open(report.name, "rb") as fh:
                    imp.error_report.save(f"import-{imp.pk}-errors.csv", File(fh), save=False)
            imp.save()

        try:
            imp.outcome = import_contacts(fileobj, imp.mailing_list, mode=imp.mode, delimiter=imp.delimiter or None,
                                          encoding=imp.encoding or None, report=report, progress=progress,
                                          on_merged=on_merged, confirmed=imp.confirmed,
                                          source_detail=_import_detail(imp), mapping=imp.mapping or None)
        except ImportRejected as exc:
            return _fail(imp, str(exc))
        return imp
    finally:
        report.close()
        os.unlink(report.name)
        if own and fileobj is not None:
            fileobj.close()


def _fail(imp, message):
    imp.status = Import.Status.FAILED
    imp.error = message
    imp.finished_at = timezone.now()
    imp.save(update_fields=["status", "error", "finished_at"])
    imp.outcome = None
    return imp

