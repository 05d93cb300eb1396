"""Admin for templates and campaigns: editor, preview, test sends.

Templates are checked when saved: a syntax error is shown on its field with
its line number, and nothing is stored. The preview builds the real message
for a chosen contact and shows the HTML in a sandboxed iframe (no scripts, no
same-origin access), the text part, the raw headers and the variables the
contact lacks, and warns of what the text part cannot carry of the HTML (the
same warnings follow a save). "Send test" sends the real message to a few addresses through
the configured relay. Both are the delivery layer's work, reached by dotted
path so that campaigns never imports delivery.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.decorators import method_decorator
from django.utils.module_loading import import_string
from django.views.decorators.http import require_POST
from email_validator import EmailNotValidError, validate_email

from campaigns import formats, gallery, presend, preview, rendering
from campaigns.models import Campaign, CampaignVariant, Contact, Template, variant_letter
from herald import adminkit

DEFAULT_LAYOUT = formats.DEFAULT_LAYOUT
CODE = forms.Textarea(attrs={"rows": 24, "cols": 110, "spellcheck": "false",
                             "style": "font-family: ui-monospace, monospace; font-size: 13px"})
# Before the start; from then on the content is frozen (campaigns.models.CampaignContent).
EDITABLE = (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.MISSED)
CONTENT_FIELDS = ("name", "subject", "from_name", "from_email", "reply_to", "template", "html_body", "text_body",
                  "lists", "segments", "exclude_lists", "exclude_segments", "track_opens", "track_clicks",
                  "test_share", "winner_metric", "winner_wait", "local_date", "local_time", "passed_zones",
                  "quiet_start", "quiet_end")


def _add_errors(form, errors):
    for error in errors:
        message = f"Line {error.line}: {error.message}" if error.line else error.message
        form.add_error(error.field if error.field in form.fields else None, message)


class TemplateForm(forms.ModelForm):
    class Meta:
        model = Template
        fields = ("name", "format", "layout", "html", "text")
        widgets = {"html": CODE, "text": CODE}
        labels = {"html": "Source"}
        help_texts = {
            "html": "HTML, Markdown or MJML as chosen above, with Jinja2: contact, unsubscribe_url, preferences_url, "
                    "view_in_browser_url. {{ content }} marks where a campaign's body goes (in MJML, inside an "
                    "mj-text); a campaign's body is written in its template's format.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["format"].required = False  # HTML when not given, as before formats existed

    def clean_format(self):
        return self.cleaned_data.get("format") or formats.HTML

    def clean(self):
        data = super().clean()
        fmt = data.get("format") or formats.HTML
        layout = data.get("layout") if fmt == formats.MARKDOWN else None
        if layout is not None and self.instance.pk is not None and layout.pk == self.instance.pk:
            self.add_error("layout", "A template cannot be its own layout.")
            return data
        if fmt != formats.MARKDOWN:
            data["layout"] = None
        _add_errors(self, rendering.validate_template_row(data.get("html") or "", data.get("text") or "", fmt, layout))
        return data


def _live_context(request, url, editor):
    return {"live_preview_url": url, "live_preview_editor": editor,
            "live_preview_contacts": list(Contact.objects.order_by("pk").values_list("email", flat=True)[:50])}


def _errors_json(errors):
    return [{"field": e.field, "line": e.line, "message": e.message} for e in errors]


def _live_reply(campaign, choice):
    """The JSON answer of a live preview: the message as the chosen contact gets it, or the errors."""
    contact, address = preview.contact_for(choice)
    try:
        result = preview.render(campaign, contact, address)
    except rendering.ContentError as exc:
        return JsonResponse({"errors": _errors_json([exc])})
    return JsonResponse({**result, "errors": []})


@admin.register(Template)
class TemplateAdmin(adminkit.ModelAdmin):
    form = TemplateForm
    list_display = ("name", "format", "updated_at")
    list_filter = ("format",)
    search_fields = ("name",)
    change_form_template = "admin/campaigns/template/change_form.html"

    def get_urls(self):
        own = [
            path("gallery/", self.admin_site.admin_view(self.gallery_view), name="campaigns_template_gallery"),
            path("live-preview/", self.admin_site.admin_view(self.live_preview_view),
                 name="campaigns_template_live_preview"),
        ]
        return own + super().get_urls()

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        starter = gallery.BY_KEY.get(request.GET.get("starter", ""))
        if starter is not None:
            name = starter.name
            n = 2
            while Template.objects.filter(name=name).exists():
                name, n = f"{starter.name} {n}", n + 1
            initial.update(name=name, format=starter.format, html=starter.source)
        elif DEFAULT_LAYOUT.exists():
            initial.setdefault("html", DEFAULT_LAYOUT.read_text(encoding="utf-8"))
        return initial

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "starters": gallery.STARTERS,
                         **_live_context(request, reverse("admin:campaigns_template_live_preview"), "id_html")}
        return super().changeform_view(request, object_id, form_url, extra_context)

    def gallery_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        starters = []
        for starter in gallery.STARTERS:
            template = Template(name=starter.name, format=starter.format, html=starter.source)
            campaign = preview.template_campaign(template)
            campaign.html_body = starter.sample
            starters.append((starter, preview.render(campaign, None, "reader@example.com")["html"]))
        return TemplateResponse(request, "admin/campaigns/template/gallery.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": "Start from the gallery",
            "starters": starters,
        })

    @method_decorator(require_POST)
    def live_preview_view(self, request):
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        fmt = request.POST.get("format") or formats.HTML
        if fmt not in dict(formats.CHOICES):
            return JsonResponse({"errors": [{"field": "format", "line": None, "message": f"unknown format {fmt!r}"}]})
        layout_id = request.POST.get("layout") or ""
        layout = Template.objects.filter(pk=int(layout_id)).first() if layout_id.isdigit() else None
        template = Template(name=request.POST.get("name") or "this template", format=fmt,
                            html=request.POST.get("html") or "", text=request.POST.get("text") or "",
                            layout=layout if fmt == formats.MARKDOWN else None)
        errors = rendering.validate_template_row(template.html, template.text, fmt, template.layout)
        if errors:
            return JsonResponse({"errors": _errors_json(errors)})
        return _live_reply(preview.template_campaign(template), request.POST.get("preview_contact"))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if obj.format != formats.HTML:
            return
        html = rendering.CONTENT_MARKER.sub("", obj.html or "", count=1)
        for warning in rendering.text_part_warnings(html, obj.text, f"Layout {obj.name!r}"):
            messages.warning(request, warning)


class CampaignForm(forms.ModelForm):
    class Meta:
        model = Campaign
        fields = CONTENT_FIELDS
        widgets = {"html_body": CODE, "text_body": CODE, "subject": forms.TextInput(attrs={"size": 100})}
        help_texts = {
            "subject": "Jinja2: {{ contact.first_name }}, {{ contact.attributes.city | default('') }} …",
            "html_body": "Written in the template's format (HTML, Markdown, or HTML inside an MJML template), with "
                         "Jinja2: contact, unsubscribe_url, preferences_url and view_in_browser_url. Links are tracked "
                         "when click tracking is on; CSS is inlined and the text part derived when the text body is "
                         "empty.",
        }

    # Left out of a posted form, these keep their defaults (a script or an older form that knows nothing of A/B tests).
    OPTIONAL = ("test_share", "winner_metric", "passed_zones")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.OPTIONAL:
            if name in self.fields:
                self.fields[name].required = False

    def clean(self):
        data = super().clean()
        if "subject" not in self.fields:
            return data  # the content is read-only: frozen when the campaign started
        errors = rendering.validate_campaign_fields(
            data.get("subject") or "", data.get("from_name") or "", data.get("html_body") or "",
            data.get("text_body") or "", data.get("from_email") or "", data.get("reply_to") or "")
        _add_errors(self, errors)
        for field, required in (("from_email", True), ("reply_to", False)):
            value = data.get(field) or ""
            if (value or required) and field not in self.errors:
                try:
                    validate_email(value, check_deliverability=False)
                except EmailNotValidError as exc:
                    self.add_error(field, f"Not a valid address: {exc}")
        if not (data.get("html_body") or "").strip() and not (data.get("text_body") or "").strip():
            self.add_error("html_body", "A campaign needs an HTML body or a text body.")
        for first, second in (("local_date", "local_time"), ("quiet_start", "quiet_end")):
            if (data.get(first) is None) != (data.get(second) is None) and first in self.fields:
                self.add_error(second if data.get(second) is None else first, "Give both, or neither.")
        if "html_body" not in self.errors:
            _add_errors(self, rendering.check_body_format(data.get("template"), data.get("html_body") or ""))
        return data


class VariantFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        kept = [f for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        if len(kept) == 1:
            raise forms.ValidationError("An A/B test needs 2 to 5 variants: add another, or remove this one.")
        numbers = [f.cleaned_data.get("number") for f in kept]
        if len(set(numbers)) != len(numbers):
            raise forms.ValidationError("Each variant needs a number of its own (1 for A, 2 for B …).")
        for form in kept:
            data = form.cleaned_data
            _add_errors(form, rendering.validate_campaign_fields(
                data.get("subject") or "", data.get("from_name") or "", data.get("html_body") or "",
                data.get("text_body") or "", "a@example.com", ""))


class VariantInline(adminkit.StackedInline):
    """A/B variants: what each changes of the campaign (blank fields keep the campaign's)."""

    model = CampaignVariant
    formset = VariantFormSet
    extra = 0
    max_num = 5
    fields = ("number", "subject", "preheader", "from_name", "html_body", "text_body")
    verbose_name = "A/B variant"
    verbose_name_plural = "A/B variants (2 to 5; blank fields keep the campaign's)"

    def _editable(self, obj):
        return obj is None or obj.status in EDITABLE

    def has_add_permission(self, request, obj=None):
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._editable(obj) and super().has_delete_permission(request, obj)


def _text_warnings(campaign):
    """What the campaign's text part cannot carry of its HTML part (see rendering.text_part_warnings)."""
    layout = campaign.template if campaign.template_id else None
    return rendering.campaign_text_warnings(layout, campaign.html_body or "", campaign.text_body or "")


class PreviewForm(forms.Form):
    contact = forms.ModelChoiceField(Contact.objects.order_by("email"), required=False,
                                     widget=forms.NumberInput(attrs={"placeholder": "contact id"}))
    email = forms.CharField(required=False, widget=forms.TextInput(attrs={"placeholder": "or an address"}))
    variant = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Variant")

    def __init__(self, *args, variants=(), **kwargs):
        super().__init__(*args, **kwargs)
        if variants:  # an A/B test: which variant's message to show
            self.fields["variant"].choices = [("", "the campaign's own"),
                                              *((n, f"variant {variant_letter(n)}") for n in variants)]
        else:
            del self.fields["variant"]


class TestForm(PreviewForm):
    addresses = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
                                help_text="Up to 10 addresses, one per line or comma-separated.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["contact"], self.fields["email"]

    def clean_addresses(self):
        items = [a.strip() for a in self.cleaned_data["addresses"].replace(",", "\n").splitlines() if a.strip()]
        if not items:
            raise forms.ValidationError("Give at least one address.")
        if len(items) > 10:
            raise forms.ValidationError(f"At most 10 addresses per test send, not {len(items)}.")
        return items


@admin.register(Campaign)
class CampaignAdmin(adminkit.ModelAdmin):
    form = CampaignForm
    list_display = ("name", "status", "subject", "total", "scheduled_at", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "subject")
    filter_horizontal = ("lists", "segments", "exclude_lists", "exclude_segments")
    change_form_template = "admin/campaigns/campaign/change_form.html"
    actions = ["send_test_action"]
    inlines = [VariantInline]
    fieldsets = (
        (None, {"fields": ("name", "lists", "segments")}),
        ("Leave out", {"fields": ("exclude_lists", "exclude_segments"), "classes": ("collapse",)}),
        ("Envelope", {"fields": ("subject", "from_name", "from_email", "reply_to")}),
        ("Content", {"fields": ("template", "html_body", "text_body", "track_opens", "track_clicks")}),
        ("A/B test", {"fields": ("test_share", "winner_metric", "winner_wait", "winner"),
                      "description": "With two or more variants (below): the test share is split evenly between "
                                     "them; after the wait the winner by the metric (people only, never machine "
                                     "opens) goes to the rest. 100 % splits everyone, with no winner."}),
        ("Local time", {"fields": ("local_date", "local_time", "passed_zones", "quiet_start", "quiet_end"),
                        "description": "Send at a time of day in each recipient's own time zone (their timezone "
                                       "attribute, else their country, else their list's default), and never "
                                       "inside quiet hours. Blank: as soon as it starts."}),
        ("Status", {"fields": ("status", "status_reason", "scheduled_at", "total", "started_at", "finished_at")}),
    )
    follow_up_fieldset = ("Follow-up", {"fields": ("follow_up_of", "follow_up_audience", "follow_up_machine_opens",
                                                   "follow_up_variant",
                                                   "not_before")})

    def get_inline_instances(self, request, obj=None):
        if request.method == "POST" and "variants-TOTAL_FORMS" not in request.POST:
            # A form posted without the variants (a script, or a page from before them) changes none of them.
            return []
        return super().get_inline_instances(request, obj)

    def get_fieldsets(self, request, obj=None):
        if obj is not None and obj.follow_up_of_id is not None:
            # A follow-up's audience is the original's recipients, chosen by what they did: no lists or segments.
            first = (None, {"fields": ("name",)})
            return (first, self.fieldsets[1], self.follow_up_fieldset, *self.fieldsets[2:])
        return self.fieldsets

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        for warning in _text_warnings(obj):
            messages.warning(request, warning)

    def get_readonly_fields(self, request, obj=None):
        fixed = ["status", "status_reason", "scheduled_at", "total", "started_at", "finished_at", "winner",
                 "follow_up_of", "follow_up_audience", "follow_up_machine_opens", "follow_up_variant", "not_before"]
        if obj is not None and obj.status not in EDITABLE:
            # Frozen when it started: what went out, and what the rest of the
            # audience gets after a pause, is what the ledger says went out.
            return fixed + list(CONTENT_FIELDS)
        return fixed

    def get_urls(self):
        own = [
            path("<int:campaign_id>/preview/", self.admin_site.admin_view(self.preview_view),
                 name="campaigns_campaign_preview"),
            path("<int:campaign_id>/test/", self.admin_site.admin_view(self.test_view), name="campaigns_campaign_test"),
            path("live-preview/", self.admin_site.admin_view(self.live_preview_view),
                 name="campaigns_campaign_live_preview"),
        ]
        return own + super().get_urls()

    def add_view(self, request, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), **self._live_context(request)}
        return super().add_view(request, form_url, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        extra_context["lifecycle_links"] = self._lifecycle_links(object_id)
        campaign = Campaign.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        if campaign is not None and campaign.status in EDITABLE:
            extra_context.update(self._live_context(request))
            # Without the network: the links are asked for on the send page and through the API.
            extra_context["presend"] = presend.check(campaign, preview.sample_contact(campaign), links=False)
        return super().change_view(request, object_id, form_url, extra_context)

    def _live_context(self, request):
        return _live_context(request, reverse("admin:campaigns_campaign_live_preview"), "id_html_body")

    @method_decorator(require_POST)
    def live_preview_view(self, request):
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        post = request.POST
        template_id = post.get("template") or ""
        campaign = Campaign(subject=post.get("subject") or "", from_name=post.get("from_name") or "",
                            from_email=post.get("from_email") or preview.PREVIEW_FROM,
                            reply_to=post.get("reply_to") or "", html_body=post.get("html_body") or "",
                            text_body=post.get("text_body") or "",
                            template=Template.objects.filter(pk=int(template_id)).first() if template_id.isdigit() else None)
        errors = rendering.validate_campaign_fields(campaign.subject, campaign.from_name, campaign.html_body,
                                                    campaign.text_body)
        errors += rendering.check_body_format(campaign.template, campaign.html_body)
        if errors:
            return JsonResponse({"errors": _errors_json(errors)})
        return _live_reply(campaign, post.get("preview_contact"))

    @staticmethod
    def _lifecycle_links(object_id):
        links = []
        for label, name in (("Send…", "campaign-send"), ("Pause", "campaign-pause"), ("Resume", "campaign-resume"),
                            ("Cancel", "campaign-cancel"), ("Progress", "campaign-progress")):
            try:
                links.append((label, reverse(f"delivery-admin:{name}", args=[object_id])))
            except NoReverseMatch:
                continue
        return links

    def preview_view(self, request, campaign_id):
        campaign = get_object_or_404(Campaign, pk=campaign_id)
        if not self.has_view_or_change_permission(request, campaign):
            raise PermissionDenied
        form = PreviewForm(request.GET or None, variants=campaign.variant_numbers())
        contact, email = None, ""
        if form.is_valid():
            contact, email = form.cleaned_data["contact"], form.cleaned_data["email"].strip()
            if contact is None and email:
                contact = Contact.objects.filter(email_key=email.lower()).first()
        if contact is None and not email:
            contact = Contact.objects.filter(subscriptions__mailing_list__in=campaign.lists.all()).first()
        result, error = None, ""
        try:
            variant = form.cleaned_data.get("variant") if form.is_valid() else None
            result = import_string("delivery.testsend.preview")(campaign, contact, email, variant=variant)
        except (rendering.ContentError, ValueError) as exc:
            error = str(exc)
        return TemplateResponse(request, "admin/campaigns/campaign/preview.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "original": campaign,
            "title": f"Preview: {campaign}", "form": form, "contact": contact, "preview": result, "error": error,
            "text_warnings": _text_warnings(campaign) if not error else [],
        })

    def test_view(self, request, campaign_id):
        campaign = get_object_or_404(Campaign, pk=campaign_id)
        if not self.has_change_permission(request, campaign):
            raise PermissionDenied
        form = TestForm(request.POST or None, initial={"addresses": request.user.email},
                        variants=campaign.variant_numbers())
        results = None
        if request.method == "POST" and form.is_valid():
            try:
                results = import_string("delivery.testsend.send_test")(campaign, form.cleaned_data["addresses"],
                                                                      user=request.user,
                                                                      variant=form.cleaned_data.get("variant"))
            except (rendering.ContentError, ValueError) as exc:
                # Includes the hourly test send limit (delivery.testsend.TestSendLimited), with the wait.
                form.add_error(None, str(exc))
                if getattr(exc, "retry_after", None):
                    messages.error(request, f"Not sent: {exc}")
        return TemplateResponse(request, "admin/campaigns/campaign/send_test.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "original": campaign,
            "title": f"Send a test of {campaign}", "form": form, "results": results,
        })

    @admin.action(description="Send a test of the selected campaign…", permissions=["change"])
    def send_test_action(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Choose exactly one campaign to test.", messages.WARNING)
            return None
        return redirect("admin:campaigns_campaign_test", queryset.first().pk)
