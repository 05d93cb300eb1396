"""Operator sign-in: lockout after repeated failures (django-axes) and an optional TOTP second factor.

An operator who has confirmed an authenticator app must give its current code
with the password; one who has not signs in with the password alone and can
turn the second factor on from the "Two-factor authentication" page.
"""

import base64

import segno
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import path
from django.utils.translation import gettext_lazy as _
from django_otp import login as otp_login
from django_otp.forms import OTPAuthenticationFormMixin
from django_otp.plugins.otp_totp.models import TOTPDevice
from unfold.forms import AuthenticationForm
from unfold.widgets import BASE_INPUT_CLASSES

from herald import adminkit


def confirmed_device(user):
    return TOTPDevice.objects.devices_for_user(user, confirmed=True).first()


class AdminLoginForm(OTPAuthenticationFormMixin, AuthenticationForm):
    """The theme's sign-in form (an AdminAuthenticationForm), with the authentication code."""

    otp_token = forms.CharField(
        label=_("Authentication code"), required=False,
        help_text=_("Only if you turned on two-factor authentication: the 6 digits your authenticator app shows."),
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric",
                                      "class": " ".join(BASE_INPUT_CLASSES)}),
    )
    otp_error_messages = dict(
        OTPAuthenticationFormMixin.otp_error_messages,
        token_required=_("This account has two-factor authentication: enter the code from your authenticator app."),
        invalid_token=_("That authentication code is wrong or expired. Enter the current one."),
    )

    def clean(self):
        super().clean()  # the password, through axes' backend, which counts failures
        user = self.get_user()
        device = confirmed_device(user) if user else None
        if device is not None:
            self.cleaned_data["otp_device"] = device.persistent_id
            self.clean_otp(user)
            otp_login(self.request, user.otp_device)
        return self.cleaned_data

    def _update_form(self, user):  # the mixin's device chooser: Herald has one app per operator
        pass


class ConfirmForm(forms.Form):
    token = forms.CharField(label=_("Code from your authenticator app"), max_length=8,
                            widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric",
                                                          "autofocus": True}))


@login_required(login_url="admin:login")
def two_factor(request):
    """Turn the second factor on (scan, then confirm a code) or off (confirm a code)."""
    device = confirmed_device(request.user)
    pending = None
    if device is None:
        pending = TOTPDevice.objects.filter(user=request.user, confirmed=False).first()
        if pending is None or request.POST.get("action") == "restart":
            TOTPDevice.objects.filter(user=request.user, confirmed=False).delete()
            pending = TOTPDevice.objects.create(user=request.user, name="Authenticator app", confirmed=False)
    form = ConfirmForm(request.POST if request.POST.get("action") in ("confirm", "disable") else None)
    if form.is_bound and form.is_valid():
        target = device or pending
        allowed, why = target.verify_is_allowed()
        if not allowed:
            form.add_error("token", _("Too many wrong codes: wait a few seconds, then enter the current one."))
        elif target.verify_token(form.cleaned_data["token"].strip()):
            if device is None:
                pending.confirmed = True
                pending.save(update_fields=["confirmed"])
                otp_login(request, pending)
                messages.success(request, _("Two-factor authentication is on: sign-in now asks for a code."))
            else:
                device.delete()
                messages.success(request, _("Two-factor authentication is off."))
            return redirect("herald-two-factor")
        else:
            form.add_error("token", _("That code is wrong or expired. Enter the current one."))
    context = {**admin.site.each_context(request), "title": _("Two-factor authentication"), "form": form,
               "enabled": device is not None}
    if pending is not None:
        context["qr_svg"] = segno.make(pending.config_url, error="m").svg_inline(scale=4)
        context["secret"] = base64.b32encode(pending.bin_key).decode().rstrip("=")
    return render(request, "admin/herald/two_factor.html", context)


def locked_out(request, original_response=None, credentials=None):
    """django-axes' answer to a sign-in while locked: a page that says for how long and who can lift it."""
    minutes = round(settings.AXES_COOLOFF_TIME * 60)
    context = {**admin.site.each_context(request), "title": _("Signing in is locked"), "cooloff_minutes": minutes}
    return render(request, "admin/herald/locked_out.html", context, status=429)


class AuthenticatorAdmin(adminkit.ModelAdmin):
    """Who has a second factor; a superuser deletes the device of an operator who lost it. The key is never shown."""

    list_display = ["user", "name", "confirmed", "created_at", "last_used_at"]
    list_filter = ["confirmed"]
    fields = list_display
    readonly_fields = list_display

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def install(site):
    """The sign-in form with the second factor, and the key-less device list in place of django-otp's."""
    site.login_form = AdminLoginForm
    if site.is_registered(TOTPDevice):
        site.unregister(TOTPDevice)
    site.register(TOTPDevice, AuthenticatorAdmin)


urlpatterns = [path("two-factor/", admin.site.admin_view(two_factor), name="herald-two-factor")]
