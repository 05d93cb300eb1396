"""DKIM: key pairs, the DNS record to publish, and a fast signer that dkimpy verifies.

``dkim.sign`` from dkimpy re-parses and re-canonicalizes the whole message and
does RSA in pure Python (about 5 ms a message). The message builder already
holds each header line and the body, so this signer canonicalizes only those
and signs with OpenSSL through ``cryptography``. Canonicalization is
relaxed for headers (RFC 6376 §3.4.2) and simple for the body (§3.4.3), as
Amazon SES signs: the bodies Herald builds are quoted-printable, with no
trailing whitespace and short lines, so nothing on the way has reason to
rewrite them, and hashing them needs no per-line pass. tests/content/test_dkim.py verifies its signatures with
``dkim.verify``. Ed25519 follows RFC 8463: the key signs the SHA-256 digest of
the header data.
"""

import base64
import hashlib
import re
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_EOL = re.compile(rb"[ \t]+\r\n")
_FOLD = re.compile(rb"\r\n(?=[ \t])")


# --- keys --------------------------------------------------------------------


def generate_key(algorithm=RSA):
    """A new key pair: (private key PEM, public key base64 as published in DNS)."""
    if algorithm == RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == ED25519:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r} (use {RSA} or {ED25519})")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode("ascii"), public_key_b64(key)


def load_private_key(pem):
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii") if isinstance(pem, str) else pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the private key is not a PEM RSA or Ed25519 key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("the private key must be RSA or Ed25519")
    return key


def public_key_b64(key):
    """The ``p=`` value: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519 (RFC 8463 §4.2)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def algorithm_of(key):
    return ED25519 if isinstance(key, ed25519.Ed25519PrivateKey) else RSA


def txt_value(algorithm, public_key):
    kind = "ed25519" if algorithm == ED25519 else "rsa"
    return f"v=DKIM1; k={kind}; p={public_key}"


def dns_record(domain, selector, algorithm, public_key):
    """What to publish: name, type and value (split into 255-octet strings for zone files)."""
    value = txt_value(algorithm, public_key)
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)]
    return {
        "name": f"{selector}._domainkey.{domain}",
        "type": "TXT",
        "value": value,
        "zone_line": f"{selector}._domainkey.{domain}. IN TXT " + " ".join(f'"{c}"' for c in chunks),
    }


# --- canonicalization and signing --------------------------------------------


def relaxed_header(line: bytes) -> bytes:
    """``Name: value\\r\\n`` (possibly folded) in relaxed form, CRLF-terminated."""
    name, _, value = line.partition(b":")
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value.rstrip(b"\r\n"))).strip(b" ")
    return name.strip().lower() + b":" + value + b"\r\n"


def simple_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.3: trailing empty lines removed, CRLF at the end."""
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        body = _WSP_EOL.sub(b"\r\n", _WSP_RUN.sub(b" ", body))
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


class Signer:
    """Signs messages for one domain with one key."""

    def __init__(self, domain, selector, private_key_pem):
        self.domain = domain
        self.selector = selector
        self.key = load_private_key(private_key_pem)
        self.algorithm = algorithm_of(self.key)
        self._relaxed = {}

    def _canon(self, line):
        # Lines that repeat (From, Subject, the static tail) are canonicalized once.
        c = self._relaxed.get(line)
        if c is None:
            c = relaxed_header(line)
            if len(self._relaxed) < 10000:
                self._relaxed[line] = c
        return c

    def sign(self, headers, body, timestamp=None) -> bytes:
        """The ``DKIM-Signature`` header line for ``headers`` [(lower-case name, line bytes)] and ``body``."""
        body_hash = base64.b64encode(hashlib.sha256(simple_body(body)).digest())
        names = b":".join(name for name, _line in headers)
        t = int(time.time() if timestamp is None else timestamp)
        prefix = (b"DKIM-Signature: v=1; a=" + self.algorithm.encode() + b"; c=relaxed/simple; d="
                  + self.domain.encode("idna") + b"; s=" + self.selector.encode("ascii")
                  + b";\r\n t=" + str(t).encode() + b"; h=" + names + b";\r\n bh=" + body_hash + b";\r\n b=")
        data = b"".join(self._canon(line) for _name, line in headers) + relaxed_header(prefix)[:-2]
        if self.algorithm == ED25519:
            signature = self.key.sign(hashlib.sha256(data).digest())
        else:
            signature = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        b = base64.b64encode(signature)
        return prefix + b"\r\n  ".join(b[i:i + 72] for i in range(0, len(b), 72)) + b"\r\n"


def signer_for_domain(domain):
    """A Signer for the SendingDomain ``domain`` when it has a key, else None."""
    from delivery.models import SendingDomain

    row = SendingDomain.objects.filter(domain__iexact=domain).exclude(private_key="").first()
    if row is None:
        return None
    return Signer(row.domain.lower(), row.selector, row.private_key)
