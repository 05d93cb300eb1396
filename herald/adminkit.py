"""The base classes every Herald admin page is built on.

Each app's ModelAdmin and inlines subclass these rather than Django's own, so
the admin's look is chosen in one place.
"""
from django.contrib import admin


class ModelAdmin(admin.ModelAdmin):
    pass


class TabularInline(admin.TabularInline):
    pass


class StackedInline(admin.StackedInline):
    pass
