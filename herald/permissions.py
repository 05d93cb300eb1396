"""Model permissions for the JSON API: every operation names the one permission it needs.

The token says who is calling; Django's model permissions (the same ones the admin
checks, granted through the operator groups) say what that user may do. Reading
needs ``view_<model>``, creating ``add_``, changing and actions on a row (a relay
check, a secret rotation) ``change_``, deleting ``delete_``. Superusers pass, as
``User.has_perm`` lets them.
"""

from functools import wraps

from ninja.decorators import decorate_view
from ninja.errors import HttpError


def require(request, perm):
    """Refuse with a 403 that names ``perm`` (``app_label.codename``) unless the caller holds it.

    A call made with an API token needs ``perm`` in the token's scopes as well as the user's.
    """
    if not request.user.has_perm(perm):
        raise HttpError(403, f"this needs the {perm} permission")
    token = getattr(request, "api_token", None)
    if token is not None and not token.allows(perm):
        raise HttpError(403, f"this token's scopes do not include {perm}")


def requires(perm):
    """Decorate an API operation, below its ``@router.<method>`` line, with the permission it needs.

    The token authentication checks it (see ``herald.api.BearerToken``), so a caller
    without a token gets a 401 and one without the permission a 403, before the
    body is read: an editor posting a half-written relay learns nothing about relays.
    The view checks it again, so the rule holds whatever authenticates the call.
    """

    def announce(run):
        @wraps(run)
        def announced(request, **kwargs):
            request.required_permission = perm
            return run(request, **kwargs)

        return announced

    def decorate(view):
        @decorate_view(announce)
        @wraps(view)
        def checked(request, *args, **kwargs):
            require(request, perm)
            return view(request, *args, **kwargs)

        checked.required_permission = perm
        return checked

    return decorate
