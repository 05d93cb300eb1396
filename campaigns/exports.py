"""Contacts as CSV, in the shape the import reads back, safe to open in a spreadsheet.

Cells that a spreadsheet would run as a formula (starting with = + - @, tab or
CR) get a leading single quote: the stored data keeps them as typed, the export
neutralises them (CSV injection, CWE-1236) through ``campaigns.csvfiles``, whose
reader takes the quote off again when the file is imported.
"""

import json

from django.db import connection

from campaigns import csvfiles
from campaigns.models import Contact

FIXED = ["email", "first_name", "last_name", "status"]
MAX_ATTRIBUTE_COLUMNS = 200


class _Echo:
    def write(self, value):
        return value


def attribute_keys(queryset) -> list:
    """Every attribute key used by the contacts, found by the database, sorted."""
    sub_sql, params = queryset.values("attributes").query.sql_with_params()
    if connection.vendor == "postgresql":
        sql = (
            f"SELECT DISTINCT jsonb_object_keys(x.attributes) FROM ({sub_sql}) x "  # noqa: S608
            "WHERE jsonb_typeof(x.attributes) = 'object'"
        )
    else:
        sql = (
            f"SELECT DISTINCT j.key FROM ({sub_sql}) x, json_each(x.attributes) j "  # noqa: S608
            "WHERE json_type(x.attributes) = 'object'"
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        keys = sorted(row[0] for row in cursor.fetchall() if row[0].lower() not in FIXED)
    return keys[:MAX_ATTRIBUTE_COLUMNS]


def contact_rows(queryset=None):
    """CSV lines (header first) for the contacts, streamed in constant memory."""
    queryset = (queryset if queryset is not None else Contact.objects.all()).order_by("id")
    keys = attribute_keys(queryset)
    writer = csvfiles.writer(_Echo())
    yield writer.writerow(FIXED + keys)
    rows = queryset.values_list("email", "first_name", "last_name", "status", "attributes")
    for email, first, last, status, attributes in rows.iterator(chunk_size=2000):
        if isinstance(attributes, str):
            attributes = json.loads(attributes)
        attributes = attributes or {}
        extra = [_cell(attributes.get(k)) for k in keys]
        yield writer.writerow([email, first, last, status, *extra])


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
