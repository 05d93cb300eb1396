"""The base classes every Herald admin page is built on.

Each app's ModelAdmin and inlines subclass these rather than Django's own, so
the admin's look is chosen in one place: django-unfold's (herald/theme.py).
Every date and time field names the operator's time zone beside it, since
times are shown and read in that zone (herald/timezones.py).
"""
from django.contrib.admin import helpers
from django.core.paginator import Paginator
from django.db import connections, models
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe
from unfold import admin as unfold

_PK = "__herald_pk__"
_checkbox = {}


def _name_zone(db_field, formfield):
    if formfield is not None and isinstance(db_field, models.DateTimeField):
        zone = timezone.get_current_timezone_name()
        formfield.help_text = f"{formfield.help_text} (time zone: {zone})".strip() if formfield.help_text \
            else f"Time zone: {zone}"
    return formfield


class LargeTablePaginator(Paginator):
    """For change lists of tables with millions of rows, where COUNT(*) costs more than the page.

    An unfiltered list takes PostgreSQL's own estimate of the table's rows; a
    filtered one counts at most CAP + 1 rows, so the last pages of a huge
    result are reached by narrowing it, not by paging.
    """

    CAP = 10_000

    @property
    def count(self):
        if "_count" not in self.__dict__:
            self.__dict__["_count"] = self._count()
        return self.__dict__["_count"]

    def _count(self):
        queryset = self.object_list
        connection = connections[queryset.db]
        if connection.vendor == "postgresql" and not queryset.query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                               [queryset.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] > self.CAP:
                return row[0]
        return queryset[:self.CAP + 1].count()


class ModelAdmin(unfold.ModelAdmin):
    @unfold.display(description=unfold.ModelAdmin.action_checkbox.short_description)
    def action_checkbox(self, obj):
        """The theme's row checkbox, its widget template rendered once per process rather than once per row."""
        if "html" not in _checkbox:
            _checkbox["html"] = str(unfold.checkbox.render(helpers.ACTION_CHECKBOX_NAME, _PK))
        return mark_safe(_checkbox["html"].replace(_PK, escape(str(obj.pk))))  # noqa: S308  (the pk is escaped)
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return _name_zone(db_field, super().formfield_for_dbfield(db_field, request, **kwargs))


class TabularInline(unfold.TabularInline):
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return _name_zone(db_field, super().formfield_for_dbfield(db_field, request, **kwargs))


class StackedInline(unfold.StackedInline):
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return _name_zone(db_field, super().formfield_for_dbfield(db_field, request, **kwargs))


def _headers_once_per_page():
    """The theme works out a change list's column headers again for every row (for the cells' data-label):
    a hundred rows cost a hundred times the headers. They are the same for every row of a page, so keep them."""
    from unfold.templatetags import unfold_list

    computed = unfold_list.result_headers

    def result_headers(cl):
        headers = getattr(cl, "_herald_headers", None)
        if headers is None:
            headers = cl._herald_headers = list(computed(cl))
        return iter(headers)

    unfold_list.result_headers = result_headers


_headers_once_per_page()
