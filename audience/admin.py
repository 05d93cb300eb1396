"""Signup forms in the admin (growing a list), and each contact's timeline, export and erasure."""

import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils.html import escape, format_html

from audience import gdpr, timeline
from audience.models import SignupForm
from audience.views import embed_snippet
from campaigns.models import Contact
from herald import adminkit


@admin.register(SignupForm)
class SignupFormAdmin(adminkit.ModelAdmin):
    list_display = ("name", "slug", "language", "enabled", "version", "hosted_page")
    list_filter = ("enabled", "language")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("lists",)
    readonly_fields = ("version", "embed", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "slug", "enabled", "language", "lists", "subscriber_chooses", "fields")}),
        ("What the visitor is told", {"fields": ("consent_text", "thank_you_text", "redirect_url")}),
        ("Confirmation mail (double opt-in lists)", {"fields": ("from_email", "from_name", "confirm_subject",
                                                               "confirm_body")}),
        ("Publishing", {"fields": ("version", "embed", "created_at", "updated_at")}),
    )

    @admin.display(description="page")
    def hosted_page(self, obj):
        return format_html('<a href="/s/{}/" target="_blank">/s/{}/</a>', obj.slug, obj.slug)

    @admin.display(description="embed snippet (paste into your site)")
    def embed(self, obj):
        if not obj.pk:
            return "Save the form first."
        # escape(), not format_html's own escaping: the snippet is a safe string, and must show as text.
        return format_html('<textarea readonly rows="12" cols="90">{}</textarea>', escape(embed_snippet(obj)))


def timeline_view(request, contact_id):
    if not request.user.has_perm("campaigns.view_contact"):
        raise PermissionDenied
    contact = get_object_or_404(Contact, pk=contact_id)
    cursor = None
    if request.GET.get("cursor"):
        try:
            cursor = timeline.decode_cursor(request.GET["cursor"])
        except timeline.BadCursor:
            cursor = None
    entries, next_cursor = timeline.entries(contact.pk, cursor, 100)
    context = {**admin.site.each_context(request), "contact": contact, "entries": entries, "next_cursor": next_cursor,
               "title": f"Timeline of {contact}", "opts": Contact._meta}
    return render(request, "admin/audience/timeline.html", context)


def export_view(request, contact_id):
    if not request.user.has_perm("campaigns.view_contact"):
        raise PermissionDenied
    from campaigns import audit

    contact = get_object_or_404(Contact, pk=contact_id)
    audit.record("contact.export", contact_id=contact.pk)
    response = HttpResponse(json.dumps(gdpr.export(contact), indent=2, default=str), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="contact-{contact.pk}.json"'
    return response


def erase_view(request, contact_id):
    if not request.user.has_perm("campaigns.delete_contact"):
        raise PermissionDenied
    contact = get_object_or_404(Contact, pk=contact_id)
    if request.method == "POST":
        gdpr.erase(contact)
        messages.success(request, "The contact's personal data is erased.")
        return redirect(reverse("admin:campaigns_contact_changelist"))
    context = {**admin.site.each_context(request), "contact": contact, "title": f"Erase {contact}",
               "opts": Contact._meta}
    return render(request, "admin/audience/erase.html", context)


urlpatterns = [
    path("contacts/<int:contact_id>/timeline/", admin.site.admin_view(timeline_view), name="contact-timeline"),
    path("contacts/<int:contact_id>/export/", admin.site.admin_view(export_view), name="contact-export"),
    path("contacts/<int:contact_id>/erase/", admin.site.admin_view(erase_view), name="contact-erase"),
]
