"""The public tracking URLs: open pixel, click redirect, unsubscribe page, view in browser.

Every URL carries a signed token (delivery.tokens); a tampered, truncated or
unknown token gets 404 and records nothing. The pixel and the redirect are the
hot paths (one per open, one per click of a large campaign): tracking.hotpath
records each with one query, and tracking.wsgi can serve them without the
rest of Django's request handling.
"""

from email import message_from_bytes, policy

from django.http import Http404, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from delivery.models import Send
from delivery.tokens import unsign
from tracking import hotpath
from tracking import unsubscribe as unsubscribing
from tracking.hotpath import PIXEL


def _parts(purpose, token, count):
    parts = unsign(purpose, token)
    if parts is None or len(parts) != count:
        raise Http404("unknown link")
    return parts


def _user_agent(request):
    return request.META.get("HTTP_USER_AGENT", "")[:1000]


@never_cache
@require_http_methods(["GET", "HEAD"])
def open_pixel(request, token):
    (send_id,) = _parts("open", token, 1)
    if not hotpath.record_open(send_id, _user_agent(request)):
        raise Http404("unknown message")
    response = HttpResponse(PIXEL, content_type="image/gif")
    response["Pragma"] = "no-cache"
    response["Expires"] = "0"
    return response


@never_cache
@require_http_methods(["GET", "HEAD"])
def click(request, token):
    send_id, index = _parts("click", token, 2)
    url = hotpath.record_click(send_id, index, _user_agent(request), head=request.method == "HEAD")
    if url is None:
        raise Http404("unknown link")
    return HttpResponseRedirect(url)


def _send(purpose, token):
    (send_id,) = _parts(purpose, token, 1)
    send = Send.objects.select_related("campaign", "campaign__frozen_content", "contact").filter(pk=send_id).first()
    if send is None:
        raise Http404("unknown message")
    return send


@csrf_exempt  # the token in the URL is the credential; RFC 8058 one-click POSTs carry no CSRF cookie
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request, token):
    send = _send("unsubscribe", token)
    if request.method != "POST":
        # Link scanners fetch every URL in a message: a GET only asks.
        return render(request, "tracking/unsubscribe_confirm.html", {"send": send, "token": token,
                                                                     "has_lists": _has_lists(send)})
    if request.POST.get("List-Unsubscribe") == "One-Click":
        unsubscribing.unsubscribe(send, unsubscribing.LISTS, source="one-click", user_agent=_user_agent(request))
        return HttpResponse("Unsubscribed.\n", content_type="text/plain; charset=utf-8")
    scope = request.POST.get("scope", unsubscribing.LISTS)
    if scope not in (unsubscribing.LISTS, unsubscribing.ALL):
        return HttpResponseBadRequest(f"scope must be '{unsubscribing.LISTS}' or '{unsubscribing.ALL}', not {scope[:40]!r}")
    unsubscribing.unsubscribe(send, scope, source="page", user_agent=_user_agent(request))
    return render(request, "tracking/unsubscribe_done.html", {"send": send, "scope": scope})


def _has_lists(send):
    return bool(send.campaign_id and send.contact_id and send.campaign.unsubscribe_list_ids())


@never_cache
@require_http_methods(["GET", "HEAD"])
def view_in_browser(request, token):
    """The HTML part of the message as this recipient received it: the content frozen at the start, not today's draft."""
    from delivery.message import compile_campaign

    send = _send("view", token)
    if send.campaign is None or send.contact is None:
        raise Http404("this message has no web version")
    built = compile_campaign(send.campaign.as_sent(send.variant)).build(send, send.contact)
    message = message_from_bytes(built.data, policy=policy.default)
    part = message.get_body(preferencelist=("html", "plain"))
    if part is None:
        raise Http404("this message has no web version")
    content = part.get_content()
    if part.get_content_subtype() == "plain":
        return HttpResponse(content, content_type="text/plain; charset=utf-8")
    response = HttpResponse(content, content_type="text/html; charset=utf-8")
    # The HTML came from the campaign author, not the visitor; still, keep it from
    # running scripts or being framed under this origin.
    response["Content-Security-Policy"] = "script-src 'none'; frame-ancestors 'none'"
    return response
