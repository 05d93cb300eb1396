"""The public tracking URLs: open pixel, click redirect, unsubscribe page, view in browser.

Every URL carries a signed token (delivery.tokens); a tampered, truncated or
unknown token gets 404 and records nothing. The pixel and the redirect are the
hot paths (one per open, one per click of a large campaign), so each records
its Event with a single INSERT … SELECT from the Send row: one round trip.
"""

import base64
from email import message_from_bytes, policy

from django.db import connection
from django.http import Http404, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from campaigns.models import CampaignLink
from delivery.models import Send
from delivery.tokens import unsign
from tracking import unsubscribe as unsubscribing
from tracking.machine import CLICK_BURST_SECONDS, SECONDS_AFTER_SENT, is_machine_agent
from tracking.models import Event

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

_EVENT = Event._meta.db_table
_SEND = Send._meta.db_table
_LINK = CampaignLink._meta.db_table
_COLUMNS = "type, send_id, contact_id, campaign_id, email, created_at, machine, url, link_index, status, diagnostic, " \
           "user_agent, source, raw, key"

_OPEN_SQL = f"""
INSERT INTO {_EVENT} ({_COLUMNS})
SELECT 'open', s.id, s.contact_id, s.campaign_id, s.email, %s, (%s OR s.sent_at IS NULL OR s.sent_at > %s),
       '', NULL, '', '', %s, 'pixel', '', NULL
FROM {_SEND} s WHERE s.id = %s
RETURNING id
"""  # noqa: S608 (table names come from the models, values are parameters)

# The link must belong to the send's own campaign: the token names an index,
# and only a URL stored for that campaign can be the target.
_CLICK_SQL = f"""
INSERT INTO {_EVENT} ({_COLUMNS})
SELECT 'click', s.id, s.contact_id, s.campaign_id, s.email, %s,
       (%s OR s.sent_at IS NULL OR s.sent_at > %s OR EXISTS (
            SELECT 1 FROM {_EVENT} e WHERE e.send_id = s.id AND e.type = 'click'
            AND e.link_index <> %s AND e.created_at > %s)),
       l.url, l."index", '', '', %s, 'redirect', '', NULL
FROM {_SEND} s JOIN {_LINK} l ON l.campaign_id = s.campaign_id AND l."index" = %s
WHERE s.id = %s
RETURNING url, machine
"""  # noqa: S608

_MARK_BURST_SQL = f"""
UPDATE {_EVENT} SET machine = %s WHERE send_id = %s AND type = 'click' AND created_at > %s AND machine = %s
"""  # noqa: S608


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
    agent = _user_agent(request)
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_OPEN_SQL, [now, is_machine_agent(agent), now - timezone.timedelta(seconds=SECONDS_AFTER_SENT),
                                   agent, send_id])
        if cursor.fetchone() is None:
            raise Http404("unknown message")
    response = HttpResponse(PIXEL, content_type="image/gif")
    response["Pragma"] = "no-cache"
    response["Expires"] = "0"
    return response


@never_cache
@require_http_methods(["GET", "HEAD"])
def click(request, token):
    send_id, index = _parts("click", token, 2)
    agent = _user_agent(request)
    now = timezone.now()
    # Link scanners often send HEAD first; a person's browser never does.
    declared_machine = request.method == "HEAD" or is_machine_agent(agent)
    burst_since = now - timezone.timedelta(seconds=CLICK_BURST_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(_CLICK_SQL, [now, declared_machine, now - timezone.timedelta(seconds=SECONDS_AFTER_SENT),
                                    index, burst_since, agent, index, send_id])
        row = cursor.fetchone()
        if row is None:
            raise Http404("unknown link")
        url, machine = row
        if machine and not declared_machine:
            # The clicks just before this one were the same scanner walking the links.
            cursor.execute(_MARK_BURST_SQL, [True, send_id, burst_since, False])
    return HttpResponseRedirect(url)


def _send(purpose, token):
    (send_id,) = _parts(purpose, token, 1)
    send = Send.objects.select_related("campaign", "contact").filter(pk=send_id).first()
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
    return bool(send.campaign_id and send.contact_id and send.campaign.lists.exists())


@never_cache
@require_http_methods(["GET", "HEAD"])
def view_in_browser(request, token):
    """The HTML part of the message as this recipient received it."""
    from delivery.message import compile_campaign

    send = _send("view", token)
    if send.campaign is None or send.contact is None:
        raise Http404("this message has no web version")
    built = compile_campaign(send.campaign).build(send, send.contact)
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
