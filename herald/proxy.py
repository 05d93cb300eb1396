"""Forwarded headers are believed only when a trusted proxy sent them.

X-Forwarded-Proto decides whether a request counts as HTTPS (secure cookies,
the SSL redirect, HSTS) and X-Forwarded-For names the client. Anyone can send
either header, so they mean something only when the connection comes from an
address in HERALD_TRUSTED_PROXIES (the TLS proxy in front of Herald). From any
other address they are removed before Django or a view looks at them.
"""

import ipaddress

from django.conf import settings

# The forwarding headers as Django's request.META spells them.
FORWARDED = ("HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT",
             "HTTP_X_FORWARDED_SSL", "HTTP_X_FORWARDED_PROTOCOL", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def networks(entries):
    """HERALD_TRUSTED_PROXIES as ip_network objects; "*" is every address."""
    out = []
    for entry in entries:
        if entry == "*":
            out += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        else:
            out.append(ipaddress.ip_network(entry))
    return out


def _address(text):
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
    return getattr(address, "ipv4_mapped", None) or address


class TrustedProxyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.networks = networks(settings.HERALD_TRUSTED_PROXIES)

    def trusted(self, address):
        return address is not None and any(address in network for network in self.networks)

    def __call__(self, request):
        meta = request.META
        if not self.trusted(_address(meta.get("REMOTE_ADDR", ""))):
            for name in FORWARDED:
                meta.pop(name, None)
        elif meta.get("HTTP_X_FORWARDED_FOR"):
            client = self.client(meta["HTTP_X_FORWARDED_FOR"])
            if client is not None:
                meta["REMOTE_ADDR"] = str(client)
        return self.get_response(request)

    def client(self, forwarded_for):
        """The nearest address in X-Forwarded-For that is not one of our proxies.

        Each proxy appends the address it was connected from, so the entries
        further left were written by whoever the outermost trusted proxy spoke
        to, and may be made up.
        """
        client = None
        for entry in reversed(forwarded_for.split(",")):
            address = _address(entry)
            if address is None:
                break
            client = address
            if not self.trusted(address):
                break
        return client
