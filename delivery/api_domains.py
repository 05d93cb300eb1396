"""API: sending domains (DKIM). The private key is write-only: generated here or imported, never returned."""

from datetime import datetime

from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from delivery import dkim
from delivery.models import SendingDomain
from herald.permissions import requires

router = Router(tags=["sending domains"])

ALGORITHMS = "^(" + "|".join(SendingDomain.Algorithm.values) + ")$"


class DomainIn(Schema):
    domain: str = Field(min_length=3, max_length=255)
    selector: str = Field("herald", min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    algorithm: str = Field(dkim.RSA, pattern=ALGORITHMS)
    private_key: str | None = Field(None, description="Write-only PEM to import; leave out to generate a key pair.")


class DomainPatch(Schema):
    selector: str | None = Field(None, min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    algorithm: str | None = Field(None, pattern=ALGORITHMS)
    private_key: str | None = Field(None, description="Write-only PEM to import.")
    generate_key: bool = Field(False, description="Replace the key with a new pair of the (new) algorithm.")


class DnsRecord(Schema):
    name: str
    type: str
    value: str
    zone_line: str


class DomainOut(Schema):
    id: int
    domain: str
    selector: str
    algorithm: str
    public_key: str
    has_private_key: bool
    dns_record: DnsRecord | None
    created_at: datetime

    @staticmethod
    def resolve_has_private_key(obj):
        return bool(obj.private_key)

    @staticmethod
    def resolve_dns_record(obj):
        return dkim.dns_record(obj.domain, obj.selector, obj.algorithm, obj.public_key) if obj.public_key else None


def _install_key(row, pem):
    try:
        key = dkim.load_private_key(pem.strip())
    except ValueError as exc:
        raise HttpError(422, f"private_key: {exc}") from None
    row.private_key = pem.strip()
    row.algorithm = dkim.algorithm_of(key)
    row.public_key = dkim.public_key_b64(key)


def _domain_name(value):
    domain = value.strip().lower().rstrip(".")
    if "@" in domain or " " in domain or "." not in domain:
        raise HttpError(422, f"domain: {value!r} is not a domain name such as example.com")
    return domain


@router.get("/sending-domains", response=list[DomainOut], summary="Sending domains and their DKIM records")
@requires("delivery.view_sendingdomain")
def list_domains(request):
    return SendingDomain.objects.all()


@router.post("/sending-domains", response={201: DomainOut}, summary="Add a sending domain (a key pair is generated)")
@requires("delivery.add_sendingdomain")
def create_domain(request, payload: DomainIn):
    row = SendingDomain(domain=_domain_name(payload.domain), selector=payload.selector, algorithm=payload.algorithm)
    if payload.private_key:
        _install_key(row, payload.private_key)
    else:
        row.private_key, row.public_key = dkim.generate_key(row.algorithm)
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:
        raise HttpError(409, f"domain: {row.domain} already exists") from None
    return 201, row


@router.get("/sending-domains/{domain_id}", response=DomainOut, summary="One sending domain")
@requires("delivery.view_sendingdomain")
def get_domain(request, domain_id: int):
    return get_object_or_404(SendingDomain, pk=domain_id)


@router.patch("/sending-domains/{domain_id}", response=DomainOut, summary="Change the selector or replace the key")
@requires("delivery.change_sendingdomain")
def update_domain(request, domain_id: int, payload: DomainPatch):
    row = get_object_or_404(SendingDomain, pk=domain_id)
    if payload.selector:
        row.selector = payload.selector
    if payload.private_key:
        _install_key(row, payload.private_key)
    elif payload.generate_key or (payload.algorithm and payload.algorithm != row.algorithm):
        row.algorithm = payload.algorithm or row.algorithm
        row.private_key, row.public_key = dkim.generate_key(row.algorithm)
    row.save()
    return row


@router.delete("/sending-domains/{domain_id}", response={204: None}, summary="Delete a sending domain")
@requires("delivery.delete_sendingdomain")
def delete_domain(request, domain_id: int):
    get_object_or_404(SendingDomain, pk=domain_id).delete()
    return 204, None
