"""The rule builder: segments edited as forms of choices (no SQL, no query text), with a live count and sample;
contacts browsed (and bulk-acted on) by segment."""

import json

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from campaigns.audience import mailable
from campaigns.models import Campaign, Contact, MailingList, Segment, Suppression
from delivery.models import DomainThrottle
from herald import adminkit
from segments import rules
from segments.compiler import compile_rules, segment_q

SAMPLE = 10


class SegmentForm(forms.ModelForm):
    rules = forms.JSONField(widget=forms.HiddenInput, initial={"match": "all", "rules": []})

    class Meta:
        model = Segment
        fields = ("name", "description", "rules")
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}

    def clean_rules(self):
        tree = self.cleaned_data["rules"]
        errors = rules.validate(tree, self.instance.pk)
        if errors:
            raise forms.ValidationError([f"{e.path}: {e.message}" for e in errors])
        return tree


def builder_options():
    """What the rule builder offers in its menus: every choice comes from here, never typed into a query."""
    return {
        "lists": [[m.pk, m.name] for m in MailingList.objects.order_by("name")],
        "campaigns": [[c.pk, c.name] for c in Campaign.objects.exclude(started_at=None).order_by("-started_at")[:200]],
        "segments": [[s.pk, s.name] for s in Segment.objects.order_by("name")],
        "groups": [t.name for t in DomainThrottle.objects.order_by("name")],
        "kinds": rules.KIND_OPS,
        "fields": rules.FIELDS,
        "statuses": list(Contact.Status.values),
        "list_statuses": list(rules.LIST_STATUSES),
        "reasons": list(Suppression.Reason.values),
    }


@admin.register(Segment)
class SegmentAdmin(adminkit.ModelAdmin):
    form = SegmentForm
    list_display = ("name", "description", "updated_at", "contacts_link")
    search_fields = ("name", "description")
    change_form_template = "admin/campaigns/segment/change_form.html"

    @admin.display(description="contacts")
    def contacts_link(self, obj):
        return format_html('<a href="{}?segment={}">{}</a>', reverse("admin:campaigns_contact_changelist"), obj.pk,
                           "browse")

    def get_urls(self):
        own = [path("preview/", self.admin_site.admin_view(self.preview_view), name="campaigns_segment_preview")]
        return own + super().get_urls()

    def render_change_form(self, request, context, *args, **kwargs):
        context["builder_options"] = builder_options()
        return super().render_change_form(request, context, *args, **kwargs)

    def preview_view(self, request):
        """Count and sample for the tree being edited: JSON for the builder, errors naming the condition."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return _preview(request)


@require_POST
def _preview(request):
    try:
        tree = json.loads(request.body or b"{}").get("rules")
    except (ValueError, AttributeError):
        return JsonResponse({"errors": ["rules: not JSON"]}, status=400)
    segment_id = request.GET.get("segment")
    errors = rules.validate(tree, int(segment_id) if segment_id and segment_id.isdigit() else None)
    if errors:
        return JsonResponse({"errors": [str(e) for e in errors]}, status=422)
    members = Contact.objects.filter(compile_rules(tree))
    return JsonResponse({
        "matching": members.count(),
        "mailable": members.filter(mailable()).count(),
        "sample": [{"id": c.pk, "email": c.email, "name": f"{c.first_name} {c.last_name}".strip(), "status": c.status}
                   for c in members.order_by("id")[:SAMPLE]],
    })


class SegmentFilter(admin.SimpleListFilter):
    """Contacts by segment on the contacts page: every bulk action there then works on a segment."""

    title = "segment"
    parameter_name = "segment"

    def lookups(self, request, model_admin):
        return [(str(s.pk), s.name) for s in Segment.objects.order_by("name")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value or not value.isdigit():
            return queryset
        segment = Segment.objects.filter(pk=int(value)).first()
        return queryset.filter(segment_q(segment)) if segment else queryset.none()


def _add_segment_filter():
    contact_admin = admin.site._registry.get(Contact)
    if contact_admin is not None and SegmentFilter not in contact_admin.list_filter:
        contact_admin.list_filter = (*contact_admin.list_filter, SegmentFilter)


_add_segment_filter()
