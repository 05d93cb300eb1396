"""The public pages: the hosted signup form, the confirmation page, the preference centre and the data download.

None needs a login and none uses CSRF cookies: the signup form is posted from
operators' own sites (the embed snippet), and the other pages are reached
only through a signed link that is itself the proof of who is acting.
A GET never changes anything (mail scanners fetch every link); only a POST
from the page's button does.
"""

import datetime
import json
import time

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from audience import confirmations, preferences, signup, tokens
from audience.models import SignupForm, redirect_allowed
from audience.texts import texts
from campaigns.imports import is_valid_address
from campaigns.models import Contact, MailingList

HONEYPOT = "website"


def _client_ip(request):
    # herald.proxy has already replaced REMOTE_ADDR with the client's address behind a trusted proxy.
    return request.META.get("REMOTE_ADDR") or None


# Forms as served, per process for a few seconds: every signup reads its form,
# and two queries are a third of a signup's cost. A change made in this process
# is seen at once (see forget_forms); other processes see it within FORM_CACHE_SECONDS.
FORM_CACHE_SECONDS = 5.0
_forms: dict[str, tuple] = {}


def forget_forms(**kwargs):
    _forms.clear()
    _thanks.clear()


def _form(slug) -> tuple[SignupForm, list]:
    now = time.monotonic()
    cached = _forms.get(slug)
    if cached is not None and now - cached[0] < FORM_CACHE_SECONDS:
        return cached[1], cached[2]
    form = SignupForm.objects.filter(slug=slug, enabled=True).first()
    if form is None:
        raise Http404("no such form")
    lists = list(form.lists.order_by("name").values_list("pk", "name", "optin"))
    if len(_forms) > 1000:
        _forms.clear()
    _forms[slug] = (now, form, lists)
    return form, lists


def _page(request, form, lists, values=None, errors=None, notice="", status=200):
    words = texts(form.language)
    values = values or {}
    fields = [{**spec, "label": spec.get("label") or spec["name"].replace("_", " ").capitalize(),
               "type": spec.get("type", "text"), "value": values.get(spec["name"], ""),
               "error": (errors or {}).get(spec["name"])} for spec in form.fields]
    chosen = set(values.get("lists") or [])
    context = {"form": form, "language": form.language, "words": words, "fields": fields, "values": values,
               "errors": errors or {},
               "lists": [{"id": pk, "name": name, "checked": pk in chosen} for pk, name, _ in lists],
               "token": tokens.form_token(form.pk), "notice": notice, "honeypot": HONEYPOT}
    return render(request, "audience/form.html", context, status=status)


def _message(request, language, title, text, status=200, link=None):
    return render(request, "audience/message.html",
                  {"language": language, "title": title, "text": text, "link": link}, status=status)


def _read(form, lists, post, words):
    """(values, errors) of a posted form: the address, the fields, the chosen lists."""
    values, errors = {"email": post.get("email", "").strip()[:320]}, {}
    reason = is_valid_address(values["email"]) if values["email"] else words["required"]
    if reason:
        errors["email"] = words["bad_email"] if values["email"] else words["required"]
    for spec in form.fields:
        name, kind = spec["name"], spec.get("type", "text")
        raw = post.get(name, "").strip()[:500]
        if kind == "checkbox":
            values[name] = bool(raw)
            if spec.get("required") and not raw:
                errors[name] = words["required"]
            continue
        values[name] = raw
        if not raw:
            if spec.get("required"):
                errors[name] = words["required"]
            continue
        if kind == "number":
            try:
                values[name] = float(raw) if any(c in raw for c in ".eE") else int(raw)
            except ValueError:
                errors[name] = words["bad_number"]
        elif kind == "date":
            try:
                values[name] = datetime.date.fromisoformat(raw).isoformat()
            except ValueError:
                errors[name] = words["bad_date"]
    ids = {pk for pk, _, _ in lists}
    if form.subscriber_chooses:
        chosen = []
        for item in post.getlist("lists"):
            if item.isdigit() and int(item) in ids:
                chosen.append(int(item))
        values["lists"] = chosen
        if not chosen:
            errors["lists"] = words["choose_list"]
    else:
        values["lists"] = sorted(ids)
    return values, errors


# The thank-you page, the same for every signup to a form: rendered once per form as served (see _form).
_thanks: dict[tuple, bytes] = {}


def _done(request, form):
    if form.redirect_url and redirect_allowed(form.redirect_url):
        return HttpResponseRedirect(form.redirect_url, status=303)
    key = (form.pk, form.language, form.thank_you_text)
    content = _thanks.get(key)
    if content is None:
        words = texts(form.language)
        content = _message(request, form.language, words["thanks_title"], form.thank_you_text or words["thanks"]).content
        if len(_thanks) > 1000:
            _thanks.clear()
        _thanks[key] = content
    return HttpResponse(content)


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def signup_form(request, slug):
    form, lists = _form(slug)
    if request.method == "GET":
        return _page(request, form, lists)
    words = texts(form.language)
    post = request.POST
    if post.get(HONEYPOT):
        # A field people never see was filled in: a bot. It is told what a person would be.
        return _done(request, form)
    values, errors = _read(form, lists, post, words)
    token = post.get("ts", "")
    if not token:
        # Posted from an embedded snippet, which cannot carry a fresh timestamp: the hosted
        # page asks once more, with what was typed kept.
        return _page(request, form, lists, values, errors, notice=words["check_and_send"])
    try:
        fresh = tokens.check_form_token(token, form.pk)
    except tokens.TooFast:
        return _page(request, form, lists, values, errors, notice=words["too_fast"], status=400)
    if not fresh:
        return _page(request, form, lists, values, errors, notice=words["expired_form"], status=400)
    if errors:
        return _page(request, form, lists, values, errors, notice=words["invalid"], status=400)
    optins = {pk: optin for pk, _, optin in lists if pk in values["lists"]}
    double = any(optin == MailingList.OptIn.DOUBLE for optin in optins.values())
    gate = signup.gate(_client_ip(request), values["email"], form.pk, double)
    if gate.over_limit:
        if gate.woke:
            confirmations.publish()  # the wake-up it claimed is not held back for others
        return _message(request, form.language, words["rate_limited"], words["rate_limited"], status=429)
    names = {k: values[k] for k in ("first_name", "last_name") if isinstance(values.get(k), str)}
    attributes = {spec["name"]: values[spec["name"]] for spec in form.fields
                  if spec["name"] not in ("first_name", "last_name") and values.get(spec["name"]) not in ("", None)}
    signup.sign_up(form, optins, gate=gate, data=signup.Signup(
        email=values["email"], attributes=attributes, list_ids=list(optins), ip=_client_ip(request),
        user_agent=request.META.get("HTTP_USER_AGENT", ""), **names))
    return _done(request, form)


def _confirm_context(token):
    try:
        read = tokens.read_confirm_token(token)
    except Exception:  # expired
        return None, None, None, True
    if read is None:
        return None, None, None, False
    contact_id, form_id, list_ids = read
    contact = Contact.objects.filter(pk=contact_id).first()
    form = SignupForm.objects.filter(pk=form_id).first()
    names = list(MailingList.objects.filter(pk__in=list_ids).order_by("name").values_list("name", flat=True))
    return contact, form, names, False


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def confirm(request, token):
    contact, form, names, expired = _confirm_context(token)
    language = form.language if form else "en"
    words = texts(language)
    if expired:
        return _message(request, language, words["link_expired_title"], words["link_expired"], status=410)
    if contact is None:
        raise Http404("unknown link")
    if request.method == "GET":
        question = words["confirm_question"].format(email=contact.email, lists=", ".join(names))
        return render(request, "audience/confirm.html", {"language": language, "words": words, "question": question})
    try:
        confirmed = signup.confirm(token)
    except signup.LinkExpired:
        return _message(request, language, words["link_expired_title"], words["link_expired"], status=410)
    if confirmed is None:
        raise Http404("unknown link")
    from delivery.tokens import contact_preferences_url

    return _message(request, language, words["confirmed_title"], words["confirmed"],
                    link=(contact_preferences_url(contact.pk), words["manage"]))


@csrf_exempt
@never_cache
@require_http_methods(["GET", "POST"])
def preference_centre(request, token):
    contact = preferences.contact_of(token)
    if contact is None:
        raise Http404("unknown link")
    notice = ""
    if request.method == "POST":
        notice = preferences.apply(contact, request.POST, ip=_client_ip(request),
                                   user_agent=request.META.get("HTTP_USER_AGENT", ""))
        contact.refresh_from_db()
    return render(request, "audience/preferences.html", {**preferences.page(contact), "notice": notice})


@never_cache
@require_http_methods(["GET"])
def export_download(request, token):
    from audience import gdpr
    contact_id = tokens.read_export_token(token)
    contact = Contact.objects.filter(pk=contact_id).first() if contact_id else None
    if contact is None:
        raise Http404("unknown or expired link")
    response = HttpResponse(json.dumps(gdpr.export(contact), indent=2, default=str),
                            content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="herald-data-{contact.pk}.json"'
    return response


def embed_snippet(form: SignupForm, lists=None) -> str:
    """The plain HTML form an operator pastes into their site: it posts to the hosted page, no JavaScript."""
    from django.template.loader import render_to_string

    lists = lists if lists is not None else list(form.lists.order_by("name").values_list("pk", "name", "optin"))
    words = texts(form.language)
    fields = [{**spec, "label": spec.get("label") or spec["name"].replace("_", " ").capitalize(),
               "type": spec.get("type", "text")} for spec in form.fields]
    return render_to_string("audience/embed.html", {
        "form": form, "words": words, "fields": fields, "honeypot": HONEYPOT,
        "action": f"{settings.HERALD_BASE_URL}/s/{form.slug}/",
        "lists": [{"id": pk, "name": name} for pk, name, _ in lists]})
