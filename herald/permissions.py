"""Model permissions for the JSON API: every operation names the one permission it needs.

The token says who is calling; Django's model permissions (the same ones the admin
checks, granted through the operator groups) say what that user may do. Reading
needs ``view_<model>``, creating ``add_``, changing and actions on a row (a relay
check, a secret rotation) ``change_``, deleting ``delete_``. Superusers pass, as
``User.has_perm`` lets them.
"""

from functools import wraps

from ninja.errors import HttpError


def require(request, perm):
    """Refuse with a 403 that names ``perm`` (``app_label.codename``) unless the caller holds it."""
    if not request.user.has_perm(perm):
        raise HttpError(403, f"this needs the {perm} permission")


def requires(perm):
    """Decorate an API operation, below its ``@router.<method>`` line, with the permission it needs.

    The check runs after token authentication, so a call without a token is still a 401. It
    also runs after input validation: a malformed body is a 422 whatever the permissions,
    which tells the caller no more than the public OpenAPI document does.
    """

    def decorate(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            require(request, perm)
            return view(request, *args, **kwargs)

        checked.required_permission = perm
        return checked

    return decorate
