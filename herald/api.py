"""The JSON API under /api/v1/: one NinjaAPI with a router per app."""

from django.db import DataError
from django.utils import timezone
from ninja import NinjaAPI
from ninja.security import HttpBearer

from campaigns.models import ApiToken
from herald.permissions import require


class BearerToken(HttpBearer):
    """``Authorization: Bearer <token>`` with a token from ``create_api_token``."""

    def authenticate(self, request, token):
        row = ApiToken.objects.select_related("user").filter(digest=ApiToken.hash(token)).first()
        now = timezone.now()
        if row is None or not row.user.is_active or not row.is_usable(now):
            return None
        # One write per minute at most, not one per request.
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        request.user = row.user
        request.api_token = row
        # Set by herald.permissions.requires on the operation: refuse before the body is read.
        if perm := getattr(request, "required_permission", None):
            require(request, perm)
        return row.user


api = NinjaAPI(
    title="Herald API",
    version="1",
    urls_namespace="api-v1",
    auth=BearerToken(),
    openapi_url="/openapi.json",
    docs_url="/docs",
)


@api.exception_handler(DataError)
@api.exception_handler(OverflowError)
def _unstorable_value(request, exc):
    """A number past its column's range, a NUL byte in text, a date PostgreSQL cannot hold: a 422, not a 500.

    SQLite refuses an integer past 64 bits before the query runs, with an OverflowError.
    """
    reason = str(exc).splitlines()[0] if str(exc) else "value out of range"
    return api.create_response(request, {"detail": f"A value in this request cannot be stored: {reason}"}, status=422)


def _add_routers():
    from audience.api import router as audience_router
    from automations.api import router as automations_router
    from automations.transactional_api import router as transactional_router
    from campaigns.api import router as campaigns_router
    from delivery.api import router as delivery_router
    from segments.api import router as segments_router
    from submission.api import router as submission_router
    from tracking.api import router as tracking_router
    from webhooks_out.api import router as webhooks_router

    api.add_router("/", campaigns_router)
    api.add_router("/", delivery_router)
    api.add_router("/", submission_router)
    api.add_router("/", tracking_router)
    api.add_router("/", segments_router)
    api.add_router("/", audience_router)
    api.add_router("/", automations_router)
    api.add_router("/", transactional_router)
    api.add_router("/", webhooks_router)


_add_routers()
