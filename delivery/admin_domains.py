"""Admin for sending domains: DKIM key generation and the DNS record to publish.

The private key is write-only: it can be generated or imported (PEM), is
stored encrypted, and no page ever shows it back.
"""

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from delivery import dkim
from delivery.models import SendingDomain
from herald import adminkit


class SendingDomainForm(forms.ModelForm):
    generate_key = forms.BooleanField(
        required=False, initial=True, label="Generate a new key pair",
        help_text="Creates a fresh key of the chosen algorithm on save; publish the new DNS record before sending.")
    import_private_key = forms.CharField(
        required=False, label="Or import a private key", widget=forms.Textarea(attrs={"rows": 6, "cols": 70}),
        help_text="PEM (RSA or Ed25519). Write-only: it is stored encrypted and never shown again.")

    class Meta:
        model = SendingDomain
        fields = ("domain", "selector", "algorithm")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.private_key:
            self.fields["generate_key"].initial = False

    def clean_domain(self):
        domain = self.cleaned_data["domain"].strip().lower().rstrip(".")
        if not domain or "@" in domain or " " in domain or "." not in domain:
            raise forms.ValidationError("Give a domain name such as example.com.")
        return domain

    def clean_import_private_key(self):
        pem = self.cleaned_data["import_private_key"].strip()
        if not pem:
            return ""
        try:
            self.imported_key = dkim.load_private_key(pem)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return pem

    def save(self, commit=True):
        row = super().save(commit=False)
        pem = self.cleaned_data.get("import_private_key")
        if pem:
            row.private_key = pem
            row.algorithm = dkim.algorithm_of(self.imported_key)
            row.public_key = dkim.public_key_b64(self.imported_key)
        elif self.cleaned_data.get("generate_key") or not row.private_key:
            row.private_key, row.public_key = dkim.generate_key(row.algorithm)
        if commit:
            row.save()
        return row


@admin.register(SendingDomain)
class SendingDomainAdmin(adminkit.ModelAdmin):
    form = SendingDomainForm
    list_display = ("domain", "selector", "algorithm", "has_key", "created_at")
    search_fields = ("domain",)
    readonly_fields = ("dns_record",)

    def get_fields(self, request, obj=None):
        fields = ["domain", "selector", "algorithm", "generate_key", "import_private_key"]
        return fields + (["dns_record"] if obj is not None else [])

    @admin.display(boolean=True, description="Key")
    def has_key(self, obj):
        return bool(obj.private_key)

    @admin.display(description="DNS record to publish")
    def dns_record(self, obj):
        if not obj.public_key:
            return "No key yet."
        record = dkim.dns_record(obj.domain, obj.selector, obj.algorithm, obj.public_key)
        return format_html(
            "<p><strong>{}</strong> TXT</p><pre style='white-space: pre-wrap; max-width: 60em'>{}</pre>"
            "<p>Zone file:</p><pre style='white-space: pre-wrap; max-width: 60em'>{}</pre>",
            record["name"], record["value"], record["zone_line"])

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("generate_key") or form.cleaned_data.get("import_private_key") or not change:
            messages.info(request, f"Publish the TXT record at {obj.selector}._domainkey.{obj.domain} before sending: "
                                   "receivers check the signature against it.")
