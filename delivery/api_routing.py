"""API: relay groups (relays spread by weight, or direct from source addresses) and the routing rules that pick them."""

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.errors import HttpError

from delivery import rdns, routing
from delivery.api_engine import TEXT
from delivery.models import Relay, RelayGroup, RoutingRule
from herald.permissions import requires

router = Router(tags=["delivery"])

KINDS = "^(|" + "|".join(RoutingRule.Kind.values) + ")$"


class GroupIn(Schema):
    name: str = Field(min_length=1, max_length=100, pattern=TEXT)
    relays: list[int] = Field([], description="Relay ids; their weights spread the group's messages.")
    direct: bool = False
    sources: str = Field("", max_length=10000, pattern=r"^[0-9A-Za-z.:\[\]\s-]*$",
                         description="Direct only: one source address and its HELO name per line.")


class GroupOut(Schema):
    id: int
    name: str
    relays: list[int]
    direct: bool
    sources: str
    warnings: list[str] = Field([], description="Source addresses whose HELO name and reverse DNS disagree.")

    @staticmethod
    def resolve_relays(obj):
        return sorted(r.pk for r in obj.relays.all())


class RuleIn(Schema):
    position: int = Field(0, ge=0, le=2**31 - 1)
    from_domain: str = Field("", max_length=255, pattern=r"^[A-Za-z0-9.-]*$")
    kind: str = Field("", pattern=KINDS)
    provider: str = Field("", max_length=255, pattern=r"^[A-Za-z0-9.,_-]*$")
    group: int
    enabled: bool = True


class RuleOut(Schema):
    id: int
    position: int
    from_domain: str
    kind: str
    provider: str
    group: int = Field(alias="group_id")
    enabled: bool


def _save_group(group, payload):
    data = payload.dict()
    relays = data.pop("relays")
    found = list(Relay.objects.filter(pk__in=relays))
    if len(found) != len(set(relays)):
        raise HttpError(422, "relays: no such relay: " + ", ".join(
            str(pk) for pk in sorted(set(relays) - {r.pk for r in found})))
    for key, value in data.items():
        setattr(group, key, value)
    try:
        group.full_clean()
    except ValidationError as exc:
        raise HttpError(422, "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())) from None
    try:
        with transaction.atomic():
            group.save()
            group.relays.set(found)
    except IntegrityError:
        raise HttpError(409, "name: a relay group with this name already exists") from None
    routing.forget_relay()
    group.warnings = rdns.problems(group.source_list()) if group.direct else []
    return group


@router.get("/relay-groups", response=list[GroupOut], summary="Relay groups")
@requires("delivery.view_relay")
def list_groups(request):
    return RelayGroup.objects.prefetch_related("relays")


@router.post("/relay-groups", response={201: GroupOut}, summary="Add a relay group (warns about reverse DNS)")
@requires("delivery.change_relay")
def create_group(request, payload: GroupIn):
    return Status(201, _save_group(RelayGroup(), payload))


@router.put("/relay-groups/{group_id}", response=GroupOut, summary="Replace a relay group")
@requires("delivery.change_relay")
def update_group(request, group_id: int, payload: GroupIn):
    return _save_group(get_object_or_404(RelayGroup, pk=group_id), payload)


@router.delete("/relay-groups/{group_id}", response={204: None}, summary="Delete a relay group and its rules")
@requires("delivery.change_relay")
def delete_group(request, group_id: int):
    get_object_or_404(RelayGroup, pk=group_id).delete()
    return Status(204, None)


@router.get("/routing-rules", response=list[RuleOut], summary="Routing rules, in the order they are tried")
@requires("delivery.view_relay")
def list_rules(request):
    return RoutingRule.objects.all()


@router.post("/routing-rules", response={201: RuleOut}, summary="Add a routing rule")
@requires("delivery.change_relay")
def create_rule(request, payload: RuleIn):
    data = payload.dict()
    group = get_object_or_404(RelayGroup, pk=data.pop("group"))
    return Status(201, RoutingRule.objects.create(group=group, **data))


@router.delete("/routing-rules/{rule_id}", response={204: None}, summary="Delete a routing rule")
@requires("delivery.change_relay")
def delete_rule(request, rule_id: int):
    get_object_or_404(RoutingRule, pk=rule_id).delete()
    return Status(204, None)
