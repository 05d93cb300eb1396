"""Importing contacts from the admin: upload, preview of the first rows and the column mapping, then progress.

The file is stored with a pending Import row first; nothing touches contacts
until the operator has seen how the columns will be read and confirms. The
import then runs on a worker (campaigns.run_import) and its page follows the
row counts as they grow. Mounted under /admin/herald/.
"""

from django import forms
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.views.decorators.http import require_GET

from campaigns import csvfiles, imports
from campaigns.csvfiles import CsvRejected
from campaigns.models import Import, MailingList
from campaigns.tasks import enqueue_import

app_name = "import-admin"
PREVIEW_ROWS = 10
PERMISSION = "campaigns.add_contact"


class UploadForm(forms.Form):
    file = forms.FileField(help_text="CSV with a header row naming an email column; other columns become attributes.")
    mailing_list = forms.ModelChoiceField(MailingList.objects.all(), required=False, label="Into the list")
    new_list = forms.CharField(required=False, max_length=200, label="or a new list named")
    mode = forms.ChoiceField(choices=Import.Mode.choices, initial=Import.Mode.UPSERT,
                             help_text="upsert: update names and attributes of known contacts; "
                                       "skip-existing: leave them as they are.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        refusal = csvfiles.size_refusal(upload.size)
        if refusal:
            raise forms.ValidationError(refusal)
        return upload

    def clean(self):
        data = super().clean()
        name = (data.get("new_list") or "").strip()
        if not data.get("mailing_list") and not name:
            raise forms.ValidationError("Choose a list or name a new one.")
        if data.get("mailing_list") and name:
            raise forms.ValidationError("Choose a list or name a new one, not both.")
        return data


def context(request, title, **extra):
    from django.contrib import admin

    return {**admin.site.each_context(request), "title": title, "opts": Import._meta, **extra}


@staff_member_required
@permission_required(PERMISSION, raise_exception=True)
def upload(request):
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        mailing_list = data["mailing_list"] or MailingList.objects.get_or_create(name=data["new_list"].strip())[0]
        imp = Import(mailing_list=mailing_list, original_name=data["file"].name[:255], mode=data["mode"],
                     created_by=request.user)
        imp.file.save(data["file"].name, data["file"], save=False)
        imp.save()
        return redirect("import-admin:preview", imp.pk)
    return TemplateResponse(request, "admin/campaigns/import/upload.html", context(request, "Import contacts", form=form))


def read_preview(imp: Import, rows=PREVIEW_ROWS, chosen=None) -> dict:
    """The first rows as the import will read them, and what each column becomes. Raises CsvRejected.

    ``chosen`` ({column index: target}, default the import's stored mapping) is what the
    operator picked; a mapping that cannot be imported is shown with ``mapping_error``.
    """
    with imp.file.open("rb") as fh:
        source = csvfiles.CsvFile(fh, encoding=imp.encoding or None, delimiter=imp.delimiter or None)
        header, body = source.read(lambda records: _first_rows(records, rows))
    encoding, delimiter = source.encoding_name, source.delimiter
    chosen = imp.mapping if chosen is None else chosen
    picks = {int(k): v for k, v in (chosen or {}).items()}
    try:
        columns, mapping_error = imports.map_columns(header, picks), ""
    except CsvRejected as exc:
        columns, mapping_error = None, str(exc)
    mapping = []
    for index, name in enumerate(header):
        kind, key = _kind(columns, index, name, picks.get(index))
        mapping.append({"index": index, "column": name.strip(), "kind": kind, "name": key,
                        "target": f"attribute “{key}”" if kind == "attribute" else imports.TARGETS[kind]})
    return {"encoding": encoding, "delimiter": "tab" if delimiter == "\t" else delimiter, "header": [h.strip() for h in header],
            "rows": body, "mapping": mapping, "mapping_error": mapping_error,
            "targets": [(k, v) for k, v in imports.TARGETS.items()]}


def _kind(columns, index, name, pick):
    """(target, attribute key) of one column, as the import reads it (or would, by its name alone)."""
    if pick is not None:
        kind, _, renamed = str(pick).partition(":")
        if kind in imports.TARGETS:
            return kind, (renamed.strip() or name.strip()) if kind == "attribute" else ""
    if columns is not None:
        for field in ("email", "first_name", "last_name", "name"):
            if getattr(columns, field) == index:
                return field, ""
        for at, key in columns.attributes:
            if at == index:
                return "attribute", key
        return "ignore", ""
    folded = imports.field_for(name)
    if not folded or folded in imports.IGNORED:
        return "ignore", ""
    return (folded, "") if folded in imports.TARGETS else ("attribute", name.strip())


def chosen_mapping(post, columns: int) -> dict:
    """{column index: target} from the preview's form: a select per column, a name for attributes."""
    chosen = {}
    for index in range(columns):
        kind = post.get(f"col-{index}")
        if kind is None:
            continue
        if kind == "attribute":
            chosen[str(index)] = f"attribute:{post.get(f'name-{index}', '').strip()[:200]}"
        else:
            chosen[str(index)] = kind
    return chosen


def _first_rows(records, count):
    """(header, up to ``count`` rows that are not blank); raises CsvRejected naming the row."""
    header, body, row = [], [], 0  # row: the records read so far
    try:
        header = next(records, [])
        row = 1
        for cells in records:
            row += 1
            if not csvfiles.is_blank(cells):
                body.append(cells)
                if len(body) == count:
                    break
    except csvfiles.READ_ERRORS as exc:
        raise csvfiles.rejected(exc, row + 1) from None
    return header, body


@staff_member_required
@permission_required(PERMISSION, raise_exception=True)
def preview(request, import_id):
    imp = get_object_or_404(Import, pk=import_id)
    if imp.status != Import.Status.PENDING:
        return redirect("import-admin:progress", imp.pk)
    try:
        shown, error = read_preview(imp), ""
    except CsvRejected as exc:
        shown, error = None, str(exc)
    status = 422 if error else 200
    if request.method == "POST" and not error:
        chosen = chosen_mapping(request.POST, len(shown["header"]))
        if chosen:
            shown = read_preview(imp, chosen=chosen)
        if shown["mapping_error"]:
            status = 422
        elif "update" in request.POST:  # "Update the preview": keep the choice, show what it gives
            Import.objects.filter(pk=imp.pk, status=Import.Status.PENDING).update(mapping=chosen)
        elif Import.objects.filter(pk=imp.pk, status=Import.Status.PENDING).update(mapping=chosen):
            imp.mapping = chosen
            enqueue_import(imp)
            return redirect("import-admin:progress", imp.pk)
    elif request.method == "POST":
        messages.error(request, error)
    elif shown and shown["mapping_error"]:
        status = 422
    return TemplateResponse(request, "admin/campaigns/import/preview.html",
                            context(request, f"Import {imp.original_name}: check the columns", imp=imp, preview=shown,
                                    error=error), status=status)


@staff_member_required
@permission_required(PERMISSION, raise_exception=True)
def progress(request, import_id):
    imp = get_object_or_404(Import, pk=import_id)
    return TemplateResponse(request, "admin/campaigns/import/progress.html",
                            context(request, f"Importing {imp.original_name}", imp=imp, data=progress_data(imp)))


def progress_data(imp: Import) -> dict:
    try:
        list_url = reverse("admin:campaigns_contact_changelist")
        list_url += f"?subscriptions__mailing_list__id__exact={imp.mailing_list_id}"
    except NoReverseMatch:  # the contact admin is not installed
        list_url = ""
    try:
        report_url = reverse("admin:campaigns_import_errors", args=[imp.pk]) if imp.error_report else ""
    except NoReverseMatch:
        report_url = ""
    return {"id": imp.pk, "status": imp.status, "rows": imp.rows_processed, "created": imp.created, "updated": imp.updated,
            "skipped": imp.skipped, "invalid": imp.invalid, "error": imp.error,
            "list": str(imp.mailing_list) if imp.mailing_list else "", "contacts_url": list_url,
            "error_report": report_url}


@staff_member_required
@permission_required(PERMISSION, raise_exception=True)
@require_GET
def progress_json(request, import_id):
    return JsonResponse(progress_data(get_object_or_404(Import, pk=import_id)))


urlpatterns = [
    path("imports/new/", upload, name="upload"),
    path("imports/<int:import_id>/preview/", preview, name="preview"),
    path("imports/<int:import_id>/", progress, name="progress"),
    path("imports/<int:import_id>/progress.json", progress_json, name="progress-json"),
]
