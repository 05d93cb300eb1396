"""No SSRF into the operator's network: an endpoint must resolve to public addresses only.

Checked when an endpoint is saved and again at every delivery, and the
request goes to the address that was checked (not to a second look-up that
DNS rebinding could answer differently). HERALD_WEBHOOK_ALLOW_PRIVATE lets
private and loopback endpoints through, for a receiver inside the network.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


class UnsafeEndpoint(Exception):
    pass


def _refused(ip) -> bool:
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str) -> tuple[str, int, str]:
    """(scheme, port, address to connect to) for ``url``; UnsafeEndpoint says why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeEndpoint("the URL must be http or https, with a host")
    if parts.username or parts.password:
        raise UnsafeEndpoint("the URL must not carry a user name or password")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeEndpoint(f"{parts.hostname} does not resolve: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
    if not addresses:
        raise UnsafeEndpoint(f"{parts.hostname} has no address")
    if not getattr(settings, "HERALD_WEBHOOK_ALLOW_PRIVATE", False):
        bad = [str(ip) for ip in addresses if _refused(ip)]
        if bad:
            raise UnsafeEndpoint(f"{parts.hostname} resolves to a private, loopback or reserved address "
                                 f"({', '.join(bad)}); set HERALD_WEBHOOK_ALLOW_PRIVATE to allow it")
    return parts.scheme, port, str(addresses[0])
