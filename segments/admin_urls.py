"""The follow-up page of a sent campaign: who it goes to, with what subject, from when."""

import datetime

from django import forms
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from campaigns.models import Campaign, FollowUp, variant_letter
from segments import followups

app_name = "segments-admin"


class FollowUpForm(forms.Form):
    audience = forms.ChoiceField(choices=FollowUp.choices, widget=forms.RadioSelect, initial=FollowUp.NOT_OPENED,
                                 label="Send it to the recipients who")
    subject = forms.CharField(max_length=998, required=False, help_text="Empty: the original's subject.",
                              widget=forms.TextInput(attrs={"size": 80}))
    delay_hours = forms.IntegerField(min_value=0, max_value=24 * 365, initial=48, label="Not before (hours)",
                                     help_text="Hours after the original finished sending.")
    machine_opens = forms.BooleanField(required=False, label="Count machine opens and clicks",
                                       help_text="Privacy proxies (Apple Mail) open every message and link scanners "
                                                 "click every link: left unticked, only people's opens and clicks count.")
    variant = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Of the variant",
                                     help_text="An A/B-tested campaign: only the recipients who got this variant, "
                                               "with its content.")

    def __init__(self, *args, variants=(), **kwargs):
        super().__init__(*args, **kwargs)
        if variants:
            self.fields["variant"].choices = [("", "any variant"), *((n, variant_letter(n)) for n in variants)]
        else:
            del self.fields["variant"]


@staff_member_required
@permission_required("campaigns.add_campaign", raise_exception=True)
def follow_up(request, campaign_id):
    original = get_object_or_404(Campaign, pk=campaign_id)
    form = FollowUpForm(request.POST or None, variants=original.variant_numbers())
    error = ""
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            follow = followups.create(original, data["audience"], subject=data["subject"].strip(),
                                      delay=datetime.timedelta(hours=data["delay_hours"]),
                                      machine_opens=data["machine_opens"], variant=data.get("variant"))
        except followups.FollowUpError as exc:
            error = str(exc)
        else:
            messages.success(request, f"“{follow.name}” is a draft: check it, then send it from its page.")
            return redirect(reverse("admin:campaigns_campaign_change", args=[follow.pk]))
    return TemplateResponse(request, "admin/campaigns/campaign/follow_up.html", {
        "title": f"Follow up {original.name}", "original": original, "form": form, "error": error,
        "opts": Campaign._meta,
    })


urlpatterns = [path("campaigns/<int:campaign_id>/follow-up/", follow_up, name="campaign-follow-up")]
