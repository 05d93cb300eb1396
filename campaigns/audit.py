"""The audit log: operator actions that matter, recorded once each, append-only.

``record(action, obj, **detail)`` is called where the action happens (a campaign
started or paused, contacts imported or exported, a suppression lifted, a token
issued or revoked), and ``watch(Model)`` records every create, change and delete
of a configuration model (relays, credentials, sending domains) made by a
person. Who acted comes from the request being served (``AuditMiddleware``),
whether a session in the admin or a token in the API; outside a request the
actor is the system (the scheduler, a command, the engine).
"""

from contextvars import ContextVar

from django.apps import apps
from django.db.models.signals import post_delete, post_save

_request = ContextVar("herald_audit_request", default=None)


class AuditMiddleware:
    """Makes the request being served known to ``record``; its user is read when something is recorded."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def _actor():
    request = _request.get()
    if request is None:
        return None, None, "system", None
    user = getattr(request, "user", None)
    via = "api" if request.path.startswith("/api/") else "admin"
    address = request.META.get("REMOTE_ADDR") or None
    if user is None or not user.is_authenticated:
        return "", None, via, address
    return user.get_username(), user.pk, via, address


def acting_person() -> bool:
    """True while serving a signed-in person's request."""
    return _actor()[1] is not None


# Rows named by a person's address: the append-only log names them by id, since
# an erasure must be able to leave no trace of the address anywhere.
PERSONAL = {"contact", "suppression", "subscription"}


def _repr(obj) -> str:
    if obj is None:
        return ""
    name = obj._meta.model_name
    return f"{name} {obj.pk}" if name in PERSONAL else str(obj)[:200]


def record(action: str, obj=None, **detail):
    """Append an AuditEntry (looked up through the app registry: campaigns.models records through this module)."""
    actor, actor_id, via, address = _actor()
    return apps.get_model("campaigns", "AuditEntry").objects.create(
        actor=actor or "", actor_id=actor_id, via=via, address=address, action=action,
        object_type=obj._meta.model_name if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "", object_repr=_repr(obj),
        detail=detail,
    )


def watch(model, name=None):
    """Record creates, changes and deletes of ``model`` made by a person (never its secret fields: only its name)."""
    name = name or model._meta.model_name

    def saved(sender, instance, created, **kwargs):
        if acting_person():
            record(f"{name}.{'create' if created else 'change'}", instance)

    def deleted(sender, instance, **kwargs):
        if acting_person():
            record(f"{name}.delete", instance)

    post_save.connect(saved, sender=model, weak=False, dispatch_uid=f"audit-save-{name}")
    post_delete.connect(deleted, sender=model, weak=False, dispatch_uid=f"audit-delete-{name}")
