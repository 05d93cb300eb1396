"""Admin for contacts, lists, subscriptions, imports and API tokens.

The suppression list's admin lives with tracking. List pages stay cheap at a
million contacts: subscriber counts come from one annotated query, foreign keys
are joined, and full result counts are skipped where a table is large.
"""

import re

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from campaigns import audit, bulk
from campaigns.csvfiles import CsvRejected, check_encoding, parse_delimiter, size_refusal
from campaigns.exports import contact_rows
from campaigns.models import ApiToken, BulkJob, Contact, Import, MailingList, Subscription
from herald import adminkit


def _csv_response(rows, filename):
    response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


UNSUBSCRIBED_HELP = "Unsubscribed: kept as the record. Only Resubscribe, with a reason, brings the contact back."


class SubscriptionForm(forms.ModelForm):
    """An unsubscribed row is the record of an unsubscribe: its list and status cannot be edited away."""

    class Meta:
        model = Subscription
        fields = ("contact", "mailing_list", "status")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.is_unsubscribed:
            for name in ("contact", "mailing_list", "status"):
                if name in self.fields:
                    # A disabled field keeps the stored value whatever is posted.
                    self.fields[name].disabled = True
            if "status" in self.fields:
                self.fields["status"].help_text = UNSUBSCRIBED_HELP


class SubscriptionFormSet(forms.BaseInlineFormSet):
    def add_fields(self, form, index):
        super().add_fields(form, index)
        if form.instance.pk and form.instance.is_unsubscribed and "DELETE" in form.fields:
            form.fields["DELETE"].disabled = True


class SubscriptionInline(adminkit.TabularInline):
    model = Subscription
    form = SubscriptionForm
    formset = SubscriptionFormSet
    extra = 0
    fields = ("mailing_list", "status", "resubscribe", "evidence", "created_at")
    readonly_fields = ("resubscribe", "evidence", "created_at")

    @admin.display(description="consent")
    def evidence(self, obj):
        return consent_summary(obj) if obj.pk else ""

    @admin.display(description="")
    def resubscribe(self, obj):
        if obj.pk and obj.is_unsubscribed:
            return format_html('<a href="{}">Resubscribe…</a>',
                               reverse("admin:campaigns_subscription_resubscribe", args=[obj.pk]))
        if obj.pk and obj.resubscribed_at:
            who = obj.resubscribed_by.get_username() if obj.resubscribed_by else "the contact"
            return f"resubscribed {obj.resubscribed_at:%Y-%m-%d} by {who}: {obj.resubscribe_reason}"
        return ""


def consent_summary(sub) -> str:
    """How a subscription came about, in one line: the evidence kept for it."""
    parts = [sub.source or "unrecorded"]
    if sub.source_detail:
        parts.append(sub.source_detail)
    if sub.consent_ip:
        parts.append(f"from {sub.consent_ip}")
    if sub.confirmed_at:
        parts.append(f"confirmed {sub.confirmed_at:%Y-%m-%d %H:%M} UTC")
    return "; ".join(parts)


def bulk_spec(request) -> dict:
    """The contact list's filter as it is shown (all matching), or the ids ticked on the page."""
    spec = {"status": request.GET.get("status__exact") or None,
            "list": request.GET.get("subscriptions__mailing_list__id__exact") or None,
            "q": request.GET.get("q") or None}
    if request.POST.get("select_across") != "1":
        spec["ids"] = [int(i) for i in request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME) if i.isdigit()]
    return {k: v for k, v in spec.items() if v}


@admin.register(BulkJob)
class BulkJobAdmin(adminkit.ModelAdmin):
    list_display = ("__str__", "status", "created_by", "created_at", "finished_at")
    readonly_fields = ("action", "mailing_list", "spec", "status", "total", "processed", "progress", "error",
                       "created_by", "created_at", "finished_at")
    fields = readonly_fields

    @admin.display(description="progress")
    def progress(self, obj):
        return format_html('<progress max="100" value="{}"></progress> {}%', round(obj.share * 100),
                           round(obj.share * 100))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        job = BulkJob.objects.filter(pk=object_id).first()
        if job is not None and job.status in (BulkJob.Status.PENDING, BulkJob.Status.RUNNING):
            response["Refresh"] = "2"  # the page follows the job until it is done
        return response


def record_admin_consent(request, subscription):
    """A subscription an operator adds in the admin names them as its source."""
    if subscription.pk is None and not subscription.source:
        subscription.source = Subscription.Source.ADMIN
        subscription.source_detail = f"admin user {request.user.get_username()}"[:200]
        if subscription.status == Subscription.Status.CONFIRMED:
            subscription.confirmed_at = timezone.now()


class ContactForm(forms.ModelForm):
    class Meta:
        model = Contact
        fields = ("email", "first_name", "last_name", "attributes", "status")

    def clean_status(self):
        status = self.cleaned_data["status"]
        if (self.instance.pk and self.instance.status == Contact.Status.UNSUBSCRIBED
                and status == Contact.Status.ACTIVE):
            raise forms.ValidationError("This contact unsubscribed. Resubscribe them to a list, with a reason, "
                                        "to make them active again.")
        return status


@admin.register(Contact)
class ContactAdmin(adminkit.ModelAdmin):
    list_display = ("email", "first_name", "last_name", "status", "created_at")
    # A related filter (?subscriptions__mailing_list__id__exact=N), which other
    # admin pages link to; its choices are the lists themselves (one small query,
    # not a DISTINCT over every subscription).
    list_filter = ("status", ("subscriptions__mailing_list", admin.RelatedFieldListFilter))
    search_fields = ("email_key", "first_name", "last_name")
    readonly_fields = ("created_at", "updated_at", "paused_until", "history")
    fields = ("email", "first_name", "last_name", "attributes", "status", "paused_until", "history", "created_at",
              "updated_at")
    form = ContactForm
    inlines = [SubscriptionInline]
    actions = ["export_selected", "bulk_add_to_list", "bulk_remove_from_list", "bulk_unsubscribe", "bulk_blocklist",
               "bulk_delete"]
    show_full_result_count = False
    paginator = adminkit.LargeTablePaginator
    list_per_page = 100

    # Bulk actions: "select all N matching" in the admin means the filter, not a page of ids. Each
    # opens a confirmation page, then runs as a background job (campaigns.bulk) with its progress.
    @admin.action(description="Add to list… (background job)")
    def bulk_add_to_list(self, request, queryset):
        return self._bulk(request, queryset, BulkJob.Action.ADD_TO_LIST)

    @admin.action(description="Remove from list… (background job)")
    def bulk_remove_from_list(self, request, queryset):
        return self._bulk(request, queryset, BulkJob.Action.REMOVE_FROM_LIST)

    @admin.action(description="Unsubscribe from everything (background job)")
    def bulk_unsubscribe(self, request, queryset):
        return self._bulk(request, queryset, BulkJob.Action.UNSUBSCRIBE)

    @admin.action(description="Blocklist (background job)")
    def bulk_blocklist(self, request, queryset):
        return self._bulk(request, queryset, BulkJob.Action.BLOCKLIST)

    @admin.action(description="Delete (background job)")
    def bulk_delete(self, request, queryset):
        return self._bulk(request, queryset, BulkJob.Action.DELETE)

    def _bulk(self, request, queryset, action):
        perm = "campaigns.delete_contact" if action == BulkJob.Action.DELETE else "campaigns.change_contact"
        if not request.user.has_perm(perm):
            raise PermissionDenied
        spec = bulk_spec(request)
        needs_list = action in (BulkJob.Action.ADD_TO_LIST, BulkJob.Action.REMOVE_FROM_LIST)
        if request.POST.get("confirmed"):
            mailing_list = MailingList.objects.filter(pk=request.POST.get("mailing_list") or 0).first()
            if needs_list and mailing_list is None:
                messages.error(request, "Choose a list.")
            else:
                from django.db import transaction

                from campaigns.tasks import enqueue_bulk_job

                with transaction.atomic():
                    job = BulkJob.objects.create(action=action, mailing_list=mailing_list if needs_list else None,
                                                 spec=spec, created_by=request.user)
                    bulk.start(job)
                    # The filter's names only: a search word may be an address, and the log is for good.
                    audit.record("contacts.bulk", job, job_action=action, total=job.total, filters=sorted(spec))
                    enqueue_bulk_job(job)
                return redirect(reverse("admin:campaigns_bulkjob_change", args=[job.pk]))
        count = bulk.matching(spec).count()
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "title": "Confirm bulk action",
                   "action": action, "label": BulkJob.Action(action).label, "count": count,
                   "across": "ids" not in spec, "needs_list": needs_list, "lists": MailingList.objects.all(),
                   "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
                   "select_across": request.POST.get("select_across", "0")}
        return render(request, "admin/campaigns/contact/bulk_confirm.html", context)

    @admin.display(description="history")
    def history(self, obj):
        if not obj.pk:
            return ""
        # The timeline, export and erasure pages belong to the public-pages app above this one: linked by path.
        base = f"/admin/herald/contacts/{obj.pk}"
        return format_html('<a href="{}/timeline/">Timeline</a> · <a href="{}/export/">Export data (JSON)</a> · '
                           '<a href="{}/erase/">Erase personal data…</a>', base, base, base)

    def save_formset(self, request, form, formset, change):
        for inline_form in formset.forms:
            if isinstance(inline_form.instance, Subscription) and inline_form.has_changed():
                record_admin_consent(request, inline_form.instance)
        super().save_formset(request, form, formset, change)

    def get_search_results(self, request, queryset, search_term):
        # Addresses are stored lower-cased in email_key: search it in lower case. A whole address is looked up
        # in email_key's index first; only when no contact has it does the search read every contact for parts.
        term = search_term.strip().lower() if "@" in search_term else search_term
        if WHOLE_ADDRESS.fullmatch(term):
            exact = queryset.filter(email_key=term)
            if exact.exists():
                return exact, False
        return super().get_search_results(request, queryset, term)

    @admin.action(description="Export selected contacts as CSV")
    def export_selected(self, request, queryset):
        audit.record("contacts.export", selected=queryset.count())
        return _csv_response(contact_rows(queryset), "contacts.csv")


WHOLE_ADDRESS = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")


@admin.register(MailingList)
class MailingListAdmin(adminkit.ModelAdmin):
    list_display = ("name", "optin", "subscriber_count", "unsubscribed_count", "export_link", "created_at")
    search_fields = ("name",)
    list_filter = ("optin",)

    def get_queryset(self, request):
        # Counts for the whole page in one query, served by the (list, status) index.
        live = ~Q(subscriptions__status=Subscription.Status.UNSUBSCRIBED)
        return super().get_queryset(request).annotate(
            _subscribers=Count("subscriptions", filter=live),
            _unsubscribed=Count("subscriptions", filter=Q(subscriptions__status=Subscription.Status.UNSUBSCRIBED)),
        )

    @admin.display(description="subscribers", ordering="_subscribers")
    def subscriber_count(self, obj):
        return obj._subscribers

    @admin.display(description="unsubscribed", ordering="_unsubscribed")
    def unsubscribed_count(self, obj):
        return obj._unsubscribed

    @admin.display(description="CSV")
    def export_link(self, obj):
        return format_html('<a href="{}">export</a>', reverse("admin:campaigns_mailinglist_export", args=[obj.pk]))

    def get_urls(self):
        own = [path("<int:pk>/export/", self.admin_site.admin_view(self.export_view), name="campaigns_mailinglist_export")]
        return own + super().get_urls()

    def export_view(self, request, pk):
        if not request.user.has_perm("campaigns.view_contact"):
            raise PermissionDenied
        mailing_list = get_object_or_404(MailingList, pk=pk)
        contacts = Contact.objects.filter(subscriptions__mailing_list=mailing_list)
        audit.record("contacts.export", mailing_list)
        return _csv_response(contact_rows(contacts), f"list-{mailing_list.pk}.csv")


class ResubscribeForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=2000,
                             help_text="Why this contact is mailed again (e.g. their written request of 2 May). "
                                       "Kept with the subscription and in the contact's history.")


@admin.register(Subscription)
class SubscriptionAdmin(adminkit.ModelAdmin):
    form = SubscriptionForm
    list_display = ("contact", "mailing_list", "status", "created_at")
    list_filter = ("status", "mailing_list")
    list_select_related = ("contact", "mailing_list")
    search_fields = ("contact__email_key",)
    raw_id_fields = ("contact",)
    readonly_fields = ("resubscribed_at", "resubscribed_by", "resubscribe_reason", "source", "source_detail",
                       "consent_ip", "consent_user_agent", "consent_text", "confirmed_at")
    show_full_result_count = False
    list_per_page = 100

    def save_model(self, request, obj, form, change):
        record_admin_consent(request, obj)
        super().save_model(request, obj, form, change)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_unsubscribed:
            return False  # the record of the unsubscribe
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset):
        kept = queryset.filter(status=Subscription.Status.UNSUBSCRIBED).count()
        queryset.exclude(status=Subscription.Status.UNSUBSCRIBED).delete()
        if kept:
            messages.warning(request, f"{kept} unsubscribed subscription(s) kept: they record an unsubscribe.")

    def get_urls(self):
        own = [path("<int:pk>/resubscribe/", self.admin_site.admin_view(self.resubscribe_view),
                    name="campaigns_subscription_resubscribe")]
        return own + super().get_urls()

    def resubscribe_view(self, request, pk):
        """The admin's counterpart of POST /api/v1/contacts/{id}/resubscribe: a reason is required."""
        if not request.user.has_perm("campaigns.change_contact"):
            raise PermissionDenied
        sub = get_object_or_404(Subscription.objects.select_related("contact", "mailing_list"), pk=pk)
        back = reverse("admin:campaigns_contact_change", args=[sub.contact_id])
        if not sub.is_unsubscribed:
            messages.info(request, f"{sub.contact} is not unsubscribed from {sub.mailing_list} ({sub.status}).")
            return redirect(back)
        form = ResubscribeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                sub.resubscribe(request.user, form.cleaned_data["reason"])
            except ValidationError as exc:
                form.add_error("reason", exc.message_dict.get("reason", exc.messages))
            else:
                messages.success(request, f"{sub.contact} is subscribed to {sub.mailing_list} again.")
                return redirect(back)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
                   "subscription": sub, "title": f"Resubscribe {sub.contact} to {sub.mailing_list}"}
        return render(request, "admin/campaigns/subscription/resubscribe.html", context)


class ImportUploadForm(forms.Form):
    file = forms.FileField(help_text="CSV with a header row naming an email column; other columns become attributes.")
    mailing_list = forms.ModelChoiceField(MailingList.objects.all(), required=False, label="Into list")
    new_list = forms.CharField(required=False, max_length=200, label="…or a new list named")
    mode = forms.ChoiceField(choices=Import.Mode.choices, initial=Import.Mode.UPSERT,
                             help_text="upsert updates names and merges attributes of existing contacts; "
                                       "skip-existing leaves them untouched.")
    delimiter = forms.CharField(required=False, max_length=5, help_text="Empty to detect (comma, semicolon or tab).")
    encoding = forms.CharField(required=False, max_length=32, help_text="Empty to detect (UTF-8, else Windows-1252).")
    confirmed = forms.BooleanField(
        required=False, label="These people confirmed their subscription elsewhere",
        help_text="Only for a double opt-in list: without it, new subscriptions stay unconfirmed and are not mailed.")

    def clean_delimiter(self):
        value = self.cleaned_data["delimiter"]
        try:
            parse_delimiter(value)
        except CsvRejected as exc:
            raise forms.ValidationError(str(exc)) from None
        return value

    def clean_encoding(self):
        value = self.cleaned_data["encoding"].strip()
        if value:
            try:
                check_encoding(value)
            except CsvRejected as exc:
                raise forms.ValidationError(str(exc)) from None
        return value

    def clean(self):
        data = super().clean()
        if not data.get("mailing_list") and not (data.get("new_list") or "").strip():
            raise forms.ValidationError("Choose a list or name a new one.")
        upload = data.get("file")
        refusal = size_refusal(upload.size) if upload is not None else None
        if refusal:
            self.add_error("file", refusal)
        return data


@admin.register(Import)
class ImportAdmin(adminkit.ModelAdmin):
    list_display = ("id", "original_name", "mailing_list", "status", "rows_processed", "created", "updated",
                    "skipped", "invalid", "report_link", "created_at")
    list_filter = ("status", "mode")
    list_select_related = ("mailing_list",)
    readonly_fields = ("mailing_list", "original_name", "mode", "delimiter", "encoding", "status", "rows_processed",
                       "created", "updated", "skipped", "invalid", "error", "report_link", "created_by",
                       "created_at", "finished_at")
    fields = readonly_fields

    @admin.display(description="error report")
    def report_link(self, obj):
        if not obj.error_report:
            return "—"
        return format_html('<a href="{}">download</a>', reverse("admin:campaigns_import_errors", args=[obj.pk]))

    def has_change_permission(self, request, obj=None):
        return False  # an import is a record of what happened

    def get_urls(self):
        own = [path("<int:pk>/errors/", self.admin_site.admin_view(self.errors_view), name="campaigns_import_errors")]
        return own + super().get_urls()

    def add_view(self, request, form_url="", extra_context=None):
        """The upload page: saves the file, queues the import, shows its page.

        When the previewing upload flow is installed, "Add import" goes there instead.
        """
        if not self.has_add_permission(request):
            raise PermissionDenied
        try:
            return redirect(reverse("import-admin:upload"))
        except NoReverseMatch:
            pass
        form = ImportUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            imp = self._start(request, form.cleaned_data)
            messages.success(request, f"Import {imp.pk} queued: this page shows its progress and counts.")
            return redirect("admin:campaigns_import_change", imp.pk)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
                   "title": "Import contacts from CSV", "has_view_permission": self.has_view_permission(request)}
        return render(request, "admin/campaigns/import/add_form.html", context)

    def _start(self, request, data):
        from django.db import transaction

        from campaigns.tasks import enqueue_import

        mailing_list = data["mailing_list"]
        if mailing_list is None:
            mailing_list, _ = MailingList.objects.get_or_create(name=data["new_list"].strip())
        upload = data["file"]
        with transaction.atomic():
            imp = Import(mailing_list=mailing_list, original_name=(upload.name or "")[:255], mode=data["mode"],
                         delimiter=data["delimiter"], encoding=data["encoding"], created_by=request.user,
                         confirmed=data.get("confirmed", False))
            imp.file.save(f"import-{imp.original_name or 'upload.csv'}", upload, save=False)
            imp.save()
            enqueue_import(imp)
        return imp

    def errors_view(self, request, pk):
        if not self.has_view_permission(request):
            raise PermissionDenied
        imp = get_object_or_404(Import, pk=pk)
        if not imp.error_report:
            raise Http404("This import has no error report.")
        response = FileResponse(imp.error_report.open("rb"), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="import-{imp.pk}-errors.csv"'
        return response


class ApiTokenForm(forms.ModelForm):
    access = forms.ChoiceField(
        choices=[(ApiToken.FULL, "Everything the user may do"), (ApiToken.READ, "Read only")],
        initial=ApiToken.FULL, help_text="What the token may do, within the user's own permissions.",
    )

    class Meta:
        model = ApiToken
        fields = ("user", "name", "expires_at")


@admin.register(ApiToken)
class ApiTokenAdmin(adminkit.ModelAdmin):
    """Tokens are shown once, when created; only their hash is kept. Revoking is final."""

    list_display = ("prefix", "user", "name", "scope_list", "state", "expires_at", "created_at", "last_used_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "name", "prefix")
    form = ApiTokenForm
    actions = ["revoke"]

    @admin.display(description="scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes)

    @admin.display(description="state")
    def state(self, obj):
        if obj.revoked_at:
            return f"revoked {obj.revoked_at:%Y-%m-%d %H:%M}"
        return "active" if obj.is_usable(timezone.now()) else "expired"

    @admin.action(description="Revoke the selected tokens (they stop working at once)")
    def revoke(self, request, queryset):
        revoking = list(queryset.filter(revoked_at=None))
        ApiToken.objects.filter(pk__in=[t.pk for t in revoking]).update(revoked_at=timezone.now())
        for token in revoking:
            audit.record("token.revoke", token)
        messages.success(request, f"Revoked {len(revoking)} token(s).")

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "name", "access", "expires_at")
        return ("user", "name", "scope_list", "state", "prefix", "expires_at", "created_at", "last_used_at")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("user", "scope_list", "state", "prefix", "expires_at", "created_at", "last_used_at")

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        row, token = ApiToken.issue(obj.user, name=obj.name, scopes=[form.cleaned_data["access"]],
                                    expires_at=obj.expires_at)
        obj.pk, obj.prefix, obj.digest, obj.scopes = row.pk, row.prefix, row.digest, row.scopes
        messages.warning(request, f"The new token is {token} — copy it now: it is not shown again.")
