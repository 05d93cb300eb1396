"""API: a contact's timeline, export and erasure; signup forms.

    GET     /contacts/{id}/timeline?cursor=&limit=   newest first, keyset-paginated
    GET     /contacts/{id}/export                    everything held about the person (JSON)
    POST    /contacts/{id}/erase                     remove their personal data everywhere
    GET     /forms, /forms/{id}                      signup forms, with their embed snippet
"""

from datetime import datetime
from typing import Any

from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from audience import gdpr, timeline
from audience.models import SignupForm
from audience.views import embed_snippet
from campaigns.models import Contact
from herald.permissions import requires

router = Router(tags=["audience"])


class TimelineIn(Schema):
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=500)


class TimelineOut(Schema):
    contact_id: int
    entries: list[dict[str, Any]]
    next_cursor: str | None = Field(description="null on the last page")


class FormOut(Schema):
    id: int
    name: str
    slug: str
    enabled: bool
    lists: list[int]
    subscriber_chooses: bool
    fields: list[dict[str, Any]]
    consent_text: str
    language: str
    version: int
    url: str
    embed_html: str
    created_at: datetime

    @staticmethod
    def resolve_lists(obj):
        return list(obj.lists.values_list("pk", flat=True))

    @staticmethod
    def resolve_url(obj):
        from django.conf import settings

        return f"{settings.HERALD_BASE_URL}/s/{obj.slug}/"

    @staticmethod
    def resolve_embed_html(obj):
        return embed_snippet(obj)


@router.get("/contacts/{contact_id}/timeline", response=TimelineOut,
            summary="A contact's history, newest first: subscriptions with consent, sends, events, suppressions, changes")
@requires("campaigns.view_contact")
def contact_timeline(request, contact_id: int, query: Query[TimelineIn]):
    get_object_or_404(Contact, pk=contact_id)
    try:
        cursor = timeline.decode_cursor(query.cursor) if query.cursor else None
    except timeline.BadCursor as exc:
        raise HttpError(422, str(exc)) from None
    page, next_cursor = timeline.entries(contact_id, cursor, query.limit)
    return {"contact_id": contact_id, "entries": page, "next_cursor": next_cursor}


@router.get("/contacts/{contact_id}/export", response=dict[str, Any],
            summary="Everything Herald holds about one contact, as one JSON document")
@requires("campaigns.view_contact")
def contact_export(request, contact_id: int):
    from campaigns import audit

    contact = get_object_or_404(Contact, pk=contact_id)
    audit.record("contact.export", contact_id=contact.pk)
    return gdpr.export(contact)


@router.post("/contacts/{contact_id}/erase", response={204: None},
             summary="Erase a contact's personal data everywhere; statistics keep their counts")
@requires("campaigns.delete_contact")
def contact_erase(request, contact_id: int):
    gdpr.erase(get_object_or_404(Contact, pk=contact_id))
    return 204, None


@router.get("/forms", response=list[FormOut], summary="Signup forms")
@requires("audience.view_signupform")
def list_forms(request):
    return list(SignupForm.objects.all())


@router.get("/forms/{form_id}", response=FormOut, summary="One signup form with its embed snippet")
@requires("audience.view_signupform")
def get_form(request, form_id: int):
    return get_object_or_404(SignupForm, pk=form_id)
