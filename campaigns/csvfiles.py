"""The one CSV reader and writer: every CSV file Herald accepts or hands out goes through here.

Files read here: contact imports (admin, API, ``import_contacts``) and their
preview in the admin, suppression imports (admin, API). Each gets the same rules:

* size: at most HERALD_IMPORT_MAX_BYTES, refused before reading when the size is
  known and while streaming otherwise (``TooLarge``);
* text: no NUL bytes (binary data), no UTF-16. The first 64 KB decide the
  encoding: UTF-8 with or without BOM, else Windows-1252. When a later chunk of
  a UTF-8-looking file is not UTF-8, ``CsvFile.read`` reads it again as cp1252;
* delimiter: ``csv.Sniffer`` among comma, semicolon and tab, checked against the header;
* line ends: LF, CRLF, or CR alone (Excel for Mac), as the first 64 KB use them.
  In a file of LF or CRLF lines a CR that ends no line, outside quotes, is read
  as a space, so a stray CR in a cell can neither split a row nor make it
  unreadable (inside a quoted cell it is content, and kept);
* records stream in constant memory as lists of strings, with the quote that an
  export put before formula-like cells taken off again (``unneutralise``). A
  row of only delimiters (a spreadsheet's empty row) is blank: ``is_blank``.

What cannot be read becomes ``CsvRejected`` with a sentence for a person that
names the row (``rejected``). Rows are numbered as records, the header being
row 1, as a spreadsheet numbers them (a quoted cell may span several lines).

Files written here (contact and suppression exports, import error reports) go
through ``writer``: a cell a spreadsheet would run as a formula gets a leading
quote (OWASP CSV injection, CWE-1236), and ``unneutralise`` on import takes it
off again, so that an export imports back as it was.
"""

import codecs
import csv
import io
import itertools
import os
import re

from django.conf import settings

SAMPLE_BYTES = 64 * 1024
CHUNK_BYTES = 256 * 1024
# A physical line longer than this is not a CSV row anyone wrote; refusing it
# keeps memory bounded (and the carrying of a partial line linear).
MAX_LINE_CHARS = 8 * 1024 * 1024
DELIMITERS = ",;\t"

# Characters that make a spreadsheet treat a cell as a formula (OWASP's list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A cell an export neutralised: quotes, then a formula character. A cell that
# already looks like this gets one more quote on export, so the round trip is exact.
_NEUTRALISED = re.compile(r"'+[=+\-@\t\r]").match
_LONE_CR = re.compile(r"\r(?!\n)")
_NUL = b"\x00"


class CsvRejected(Exception):
    """The file as a whole cannot be read; the message says why, for a person."""


class TooLarge(CsvRejected):
    """The file is over HERALD_IMPORT_MAX_BYTES (an API answers 413)."""


class _NotUtf8(Exception):
    """A chunk after the sample of a UTF-8-looking file is not UTF-8: read it again as cp1252."""


class _BadBytes(Exception):
    """Bytes that end the reading, met in the row after the last one handed out."""

    def __init__(self, byte, problem, advice):
        super().__init__(problem)
        self.byte, self.problem, self.advice = byte, problem, advice


# --- writing ---------------------------------------------------------------


def neutralise(value: str) -> str:
    """A cell made safe for spreadsheets: a formula becomes text with a leading quote."""
    if value and (value.startswith(FORMULA_PREFIXES) or (value[0] == "'" and _NEUTRALISED(value))):
        return "'" + value
    return value


def unneutralise(value: str) -> str:
    """The cell as it was before ``neutralise``."""
    if value[:1] == "'" and _NEUTRALISED(value):
        return value[1:]
    return value


class _SafeWriter:
    def __init__(self, out, **fmtparams):
        self._writer = csv.writer(out, **fmtparams)

    def writerow(self, row):
        return self._writer.writerow([neutralise(cell) if isinstance(cell, str) else cell for cell in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def writer(out, **fmtparams):
    """A ``csv.writer`` on ``out`` whose every string cell is neutralised; returns what ``out.write`` returns."""
    return _SafeWriter(out, **fmtparams)


# --- checks before reading -------------------------------------------------


def size_refusal(size: int | None) -> str | None:
    """Why a file of ``size`` bytes is refused (None when it is not, or the size is unknown)."""
    limit = settings.HERALD_IMPORT_MAX_BYTES
    if size is None or size <= limit:
        return None
    return (f"The file has {size:,} bytes, over the import limit of {limit:,} bytes (HERALD_IMPORT_MAX_BYTES); "
            "split it or raise the limit.")


def _over_limit(limit):
    return (f"The file is larger than the import limit of {limit:,} bytes (HERALD_IMPORT_MAX_BYTES); "
            "split it or raise the limit.")


def file_size(fileobj) -> int | None:
    """Bytes from the current position to the end, when the file object can tell."""
    try:
        return os.fstat(fileobj.fileno()).st_size - fileobj.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    size = getattr(fileobj, "size", None)
    return size if isinstance(size, int) else None


def check_encoding(name: str) -> str:
    """The codec's canonical name, or CsvRejected for an unknown one."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise CsvRejected(f"Unknown encoding {name!r}: use e.g. utf-8 or cp1252.") from None


def parse_delimiter(value: str | None) -> str | None:
    """A delimiter as a user writes it: ``,`` ``;`` ``\\t`` or ``tab``; None to detect."""
    if value in (None, ""):
        return None
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}
    value = named.get(value.lower(), value)
    if len(value) != 1 or value in "\"'\r\n" or value.isalnum() or value.isspace() and value != "\t":
        raise CsvRejected(f"Delimiter {value!r} cannot be used: give one character such as , ; or tab.")
    return value


def detect_encoding(sample: bytes, complete: bool) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CsvRejected("The file is UTF-16; save it as UTF-8 CSV and import it again.")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=complete)
        return "utf-8"
    except UnicodeDecodeError:
        return "cp1252"


def detect_delimiter(text: str) -> str:
    # The sniffer gets whole lines only: a cut-off last line would skew its counts.
    lines = text[: 16 * 1024].splitlines()
    if len(lines) > 1:
        lines = lines[:-1]
    sample = "\n".join(lines[:50])
    header = lines[0] if lines else ""
    counts = {d: header.count(d) for d in DELIMITERS}
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    # The sniffer can be misled by a quoted column full of commas; a header
    # normally has no quotes, so a delimiter missing from it is not the one.
    if sniffed and counts[sniffed]:
        return sniffed
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _lines_end_with_cr(text: str) -> bool:
    """True for old-Mac files: more lone CRs than LFs."""
    crlf = text.count("\r\n")
    return text.count("\r") - crlf > text.count("\n")


# --- reading ---------------------------------------------------------------


def is_blank(row: list) -> bool:
    """An empty line, or one of only delimiters and spaces (what spreadsheets write for an empty row)."""
    return not "".join(row).strip()


def unneutralised(row: list) -> list:
    """The row with ``unneutralise`` applied to every cell."""
    # One scan per row: most rows have no quote at all.
    if "'" in "".join(row):
        return [unneutralise(cell) for cell in row]
    return row


def rejected(exc: Exception, row: int) -> CsvRejected:
    """CsvRejected naming ``row`` for an error raised while reading it; other errors are returned as they are."""
    if isinstance(exc, CsvRejected):
        return exc
    if isinstance(exc, _BadBytes):
        return CsvRejected(f"Row {row} {exc.problem} at byte {exc.byte:,}; {exc.advice}.")
    if isinstance(exc, csv.Error):
        hint = ""
        if "field larger than field limit" in str(exc):
            hint = " (a cell over 128 KB: is a quote (\") opened in this row never closed?)"
        return CsvRejected(f"Row {row} cannot be read as CSV: {exc}{hint}.")
    return exc


READ_ERRORS = (csv.Error, _BadBytes)


def _lines(text):
    # Lines end at CR, LF or CRLF and keep their ends, as the csv module wants them.
    return io.StringIO(text, newline="")


def describe(row: int, column: str, value: str, reason: str) -> str:
    """A problem with one cell, for people: where, what (cut short when long), and why."""
    if len(value) > 80:
        value = value[:77] + "…"
    return f"row {row}, column {column!r}, value {value!r}: {reason}"


class CsvFile:
    """A CSV upload checked and sniffed, ready to be read from its top (more than once).

    ``fileobj`` is a binary, seekable file object (an open file, an upload).
    ``what`` names what the file should be, for messages ("contact list").
    Raises CsvRejected (TooLarge for the size) when the file cannot be read.
    """

    def __init__(self, fileobj, *, encoding=None, delimiter=None, what="contact list"):
        self.what = what
        self.limit = settings.HERALD_IMPORT_MAX_BYTES
        refusal = size_refusal(file_size(fileobj))
        if refusal:
            raise TooLarge(refusal)
        if not fileobj.seekable():
            raise CsvRejected("The file must be one that can be read twice (a seekable file).")
        self._file = fileobj
        self._start = fileobj.tell()
        sample = fileobj.read(SAMPLE_BYTES)
        fileobj.seek(self._start)
        if not sample.strip():
            raise CsvRejected("The file is empty.")
        if not encoding and sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise CsvRejected("The file is UTF-16; save it as UTF-8 CSV and import it again.")
        if _NUL in sample:
            # Before the header is read: an image or a spreadsheet is not a CSV file without an email column.
            raise CsvRejected(f"The file contains binary data (a NUL byte at byte {sample.index(_NUL):,}); "
                              f"a {what} must be a text CSV file (UTF-8 or Windows-1252).")
        if encoding:
            self.encoding = check_encoding(encoding)
            if self.encoding == "utf-8" and sample.startswith(codecs.BOM_UTF8):
                self.encoding = "utf-8-sig"
        else:
            self.encoding = detect_encoding(sample, len(sample) < SAMPLE_BYTES)
        self._fallback = not encoding and self.encoding == "utf-8"
        text = sample.decode(self.encoding, errors="replace")
        self.delimiter = parse_delimiter(delimiter) or detect_delimiter(text)
        self._cr_lines = _lines_end_with_cr(text)
        self.quotes_seen = False

    @property
    def encoding_name(self) -> str:
        """The encoding as people name it (a BOM is a detail of UTF-8)."""
        return "utf-8" if self.encoding == "utf-8-sig" else self.encoding

    def read(self, consume, *, raw=False):
        """``consume(records)`` with the records from the top; again as cp1252 if a late chunk is not UTF-8.

        ``consume`` must leave nothing behind when it raises (a transaction, a
        temporary table dropped): the second reading starts from scratch.
        ``raw`` hands it ``raw_records`` instead of ``records``.
        """
        records = self.raw_records if raw else self.records
        try:
            return consume(records())
        except _NotUtf8:
            self.encoding, self._fallback = "cp1252", False
            return consume(records())

    def records(self):
        """An iterator over the records from the top, header first: lists of strings.

        While iterating, READ_ERRORS may be raised: ``rejected(exc, row)`` says
        what to tell a person. A reading started by ``read`` may also raise the
        private exception that makes ``read`` start over as cp1252.
        """
        return map(unneutralised, self.raw_records())

    def raw_records(self):
        """Like ``records``, with the cells exactly as in the file: for a hot loop.

        Such a loop must apply ``unneutralised`` itself, which it may skip while
        ``quotes_seen`` is false: no row read until then holds a quote at all.
        The contact import does (bench/import.py measures it; the CSV properties
        in tests/security/test_properties.py hold it to the same results).
        """
        self._file.seek(self._start)
        self.quotes_seen = self._in_quotes = False
        # The reader pulls lines from StringIOs over big decoded chunks: the per-line
        # work stays in C, and the Python generator runs once per chunk.
        lines = itertools.chain.from_iterable(map(_lines, self._chunks()))
        return csv.reader(lines, delimiter=self.delimiter)

    def _chunks(self):
        """The decoded text in pieces of whole lines, line ends made plain for the csv module."""
        decoder = codecs.getincrementaldecoder(self.encoding)()
        carry, consumed = "", 0
        while True:
            data = self._file.read(CHUNK_BYTES)
            final = not data
            problem = None
            base = consumed  # the file offset of data[0]
            if data:
                consumed += len(data)
                if consumed > self.limit:
                    raise TooLarge(_over_limit(self.limit))
                nul = data.find(_NUL)
                if nul >= 0:
                    problem = (base + nul, "contains binary data (a NUL byte)",
                               f"a {self.what} must be a text CSV file (UTF-8 or Windows-1252)")
                    data = data[:nul]
            try:
                text = decoder.decode(data, final and problem is None)
            except UnicodeDecodeError as exc:
                if self._fallback:
                    raise _NotUtf8() from None
                # exc.object is what the decoder held back from the last chunk, then data
                # (or data without its BOM): its offset in the file follows from the lengths.
                at = base + len(data) - len(exc.object) + exc.start
                problem = (at, f"is not valid {self.encoding_name} ({exc.reason})",
                           "save the file as UTF-8 and import it again")
                text = codecs.decode(exc.object[: exc.start], self.encoding, "replace")
            text = carry + text
            if problem is not None:
                # Hand out the complete lines before the problem, so that the reader
                # raises it in the very row it is in.
                whole, _ = self._split(text, final=False)
                if whole:
                    self.quotes_seen = self.quotes_seen or "'" in whole
                    yield whole
                raise _BadBytes(*problem)
            whole, carry = self._split(text, final)
            if whole:
                # Set before the reader sees any line of this piece.
                self.quotes_seen = self.quotes_seen or "'" in whole
                yield whole
            if len(carry) > MAX_LINE_CHARS:
                raise _BadBytes(consumed, f"has a line longer than {MAX_LINE_CHARS:,} characters",
                                "is this a CSV file?")
            if final:
                return

    def _split(self, text, final):
        """(complete lines, the unfinished line to carry), stray CRs made spaces."""
        if final:
            tail = ""
        else:
            cut = text.rfind("\n")
            if self._cr_lines:
                # A CR at the very end may be the first half of a CRLF.
                cut = max(cut, text.rfind("\r", 0, len(text) - 1))
            text, tail = text[: cut + 1], text[cut + 1 :]
        if self._cr_lines:
            return text, tail  # every CR ends a line (the reader splits lines at CR, LF and CRLF)
        if "\r" in text and text.count("\r") != text.count("\r\n"):
            return self._stray_crs_as_spaces(text), tail
        self._in_quotes ^= text.count('"') & 1
        return text, tail

    def _stray_crs_as_spaces(self, text):
        """In a file of LF lines, a CR outside quotes that ends no line is a space.

        Inside a quoted cell it stays, as the cell's content. Whether a CR is
        inside quotes follows from the number of quote characters before it,
        since a quoted cell doubles its quotes (a quote inside an unquoted cell,
        which csv reads as text, is the one case this misjudges).
        """
        parts, last, inside = [], 0, self._in_quotes
        for match in _LONE_CR.finditer(text):
            inside ^= text.count('"', last, match.start()) & 1
            parts.append(text[last : match.start()])
            parts.append("\r" if inside else " ")
            last = match.end()
        self._in_quotes = inside ^ (text.count('"', last) & 1)
        parts.append(text[last:])
        return "".join(parts)
