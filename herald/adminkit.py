"""The base classes every Herald admin page is built on.

Each app's ModelAdmin and inlines subclass these rather than Django's own, so
the admin's look is chosen in one place: django-unfold's (herald/theme.py).
Every date and time field names the operator's time zone beside it, since
times are shown and read in that zone (herald/timezones.py).
"""
from django.db import models
from django.utils import timezone
from unfold import admin as unfold


def _name_zone(db_field, formfield):
    if formfield is not None and isinstance(db_field, models.DateTimeField):
        zone = timezone.get_current_timezone_name()
        formfield.help_text = f"{formfield.help_text} (time zone: {zone})".strip() if formfield.help_text \
            else f"Time zone: {zone}"
    return formfield


class ModelAdmin(unfold.ModelAdmin):
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return _name_zone(db_field, super().formfield_for_dbfield(db_field, request, **kwargs))


class TabularInline(unfold.TabularInline):
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return _name_zone(db_field, super().formfield_for_dbfield(db_field, request, **kwargs))


class StackedInline(unfold.StackedInline):
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return _name_zone(db_field, super().formfield_for_dbfield(db_field, request, **kwargs))
