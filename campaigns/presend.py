"""The pre-send check: what to fix in a campaign before it goes out.

Run on the message a sample recipient would get (the real one, tracking off
so that links show where they lead). Everything is a warning except a
missing unsubscribe link in the HTML part, which blocks the send: the text
part always carries one (Herald appends it), the HTML part must show one.

Links are checked from the server with a short timeout, and only those whose
host resolves to public addresses: a campaign's links must not become a way
to probe the private network Herald runs in. The connection goes to the very
address that was checked (no second look-up an attacker's DNS could answer
differently).
"""

import http.client
import ipaddress
import re
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

from django.conf import settings

from campaigns import preview, rendering

GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" past this much HTML
SUBJECT_MAX = 78  # RFC 5322's recommended line length; longer subjects are cut in inbox lists
IMAGE_ONLY_WORDS = 30  # fewer words than this beside images reads as an image-only mail to filters
LINK_TIMEOUT = 3.0
MAX_LINKS = 30

SPAM_PATTERNS = [
    (re.compile(r"!{2,}"), "several exclamation marks"),
    (re.compile(r"\${2,}|€{2,}|£{2,}"), "repeated currency signs"),
    (re.compile(r"\b(?:100\s*%\s*free|free\s+money|risk[- ]free|no\s+credit\s+check|act\s+now|click\s+here|"
                r"buy\s+now|limited\s+time|urgent|winner|you(?:'ve| have)\s+won|guaranteed|cash\s+bonus|"
                r"double\s+your|earn\s+\$|lowest\s+price|miracle)\b", re.I), "a phrase spam filters score"),
    (re.compile(r"^\s*(?:re|fwd?)\s*:", re.I), "a reply or forward prefix on a first message"),
]


@dataclass
class Finding:
    code: str
    message: str
    blocks: bool = False

    def as_dict(self):
        return asdict(self)


class _Scan(HTMLParser):
    """The links, images and visible words of an HTML part."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self.images, self.words, self.hidden = [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("style", "script", "head", "title"):
            self.hidden += 1
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"].strip())
        elif tag == "img":
            self.images.append(attrs)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in ("style", "script", "head", "title"):
            self.hidden -= 1

    def handle_endtag(self, tag):
        if tag in ("style", "script", "head", "title") and self.hidden:
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.words += len(data.split())


def _pixel(attrs):
    return str(attrs.get("width")) == "1" and str(attrs.get("height")) == "1"


def _unsubscribe_url(headers):
    match = re.search(r"^List-Unsubscribe:.*?<(https?://[^>]+)>", headers, re.M | re.I | re.S)
    return match.group(1) if match else None


def check(campaign, contact=None, address="", links=True, link_checker=None):
    """Findings for ``campaign`` (saved or not) as ``contact`` would get it, blocking ones first.

    A template error is one blocking finding. ``links`` false skips the
    network; ``link_checker`` (a LinkChecker) replaces the default one.
    """
    try:
        message = preview.render(campaign, contact, address)
    except rendering.ContentError as exc:
        return [Finding("template_error", f"The content does not render: {exc}", blocks=True)]
    findings = []
    html = message["html"]
    scan = _Scan()
    scan.feed(html)
    scan.close()
    if html.strip():
        unsubscribe = _unsubscribe_url(message["headers"])
        if unsubscribe is None or unsubscribe not in scan.links:
            findings.append(Finding("no_unsubscribe", "The HTML part has no unsubscribe link: add "
                                    '<a href="{{ unsubscribe_url }}">Unsubscribe</a> (or use a layout that has one). '
                                    "The campaign cannot be sent without it.", blocks=True))
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        findings.append(Finding("html_size", f"The HTML part is {size / 1024:.0f} KB: Gmail clips messages over "
                                "102 KB, hiding the rest (and the unsubscribe link) behind “View entire message”."))
    images = [i for i in scan.images if not _pixel(i)]
    no_alt = [i.get("src") or "(no src)" for i in images if "alt" not in i]
    if no_alt:
        findings.append(Finding("image_alt", f"{len(no_alt)} image(s) without alt text, shown as nothing when "
                                f"images are blocked: {', '.join(no_alt[:5])}"))
    if images and scan.words < IMAGE_ONLY_WORDS:
        findings.append(Finding("image_only", f"The mail is mostly images ({len(images)} image(s), {scan.words} "
                                "words of text): spam filters distrust image-only mail and many readers block images."))
    targets = [u for u in dict.fromkeys(scan.links) if u.lower().startswith(("http://", "https://"))]
    own = settings.HERALD_BASE_URL.rstrip("/") + "/"
    outside = [u for u in targets if not u.startswith(own)]
    plain = [u for u in outside if u.lower().startswith("http://")]
    if plain:
        findings.append(Finding("plain_http", f"{len(plain)} link(s) to plain http (browsers warn, some filters "
                                f"score it): {', '.join(plain[:5])}"))
    if links and outside:
        checker = link_checker or LinkChecker()
        for url, problem in checker.check_all(outside[:MAX_LINKS]):
            if problem:
                findings.append(Finding("broken_link", f"{url} {problem}"))
    findings += subject_findings(message["subject"])
    findings.sort(key=lambda f: not f.blocks)
    return findings


def subject_findings(subject):
    findings = []
    if len(subject) > SUBJECT_MAX:
        findings.append(Finding("subject_length", f"The subject is {len(subject)} characters: over {SUBJECT_MAX}, "
                                "inboxes cut it off."))
    if not subject.strip():
        findings.append(Finding("subject_empty", "The subject is empty for this recipient."))
    reasons = [why for pattern, why in SPAM_PATTERNS if pattern.search(subject)]
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= 8 and sum(c.isupper() for c in letters) > 0.6 * len(letters):
        reasons.append("mostly capital letters")
    if reasons:
        findings.append(Finding("subject_spam", f"The subject has {', '.join(reasons)}, which spam filters score."))
    return findings


def blocking(findings):
    return [f for f in findings if f.blocks]


def refusal(campaign):
    """Why ``campaign`` may not be sent or scheduled as it is ("" when it may); no network involved.

    A follow-up or a campaign already started is not checked again: its content
    was checked when it was (or the original was) sent.
    """
    if campaign.status not in (campaign.Status.DRAFT, campaign.Status.SCHEDULED, campaign.Status.MISSED):
        return ""
    found = blocking(check(campaign, preview.sample_contact(campaign), links=False))
    return " ".join(f.message for f in found)


# --- links -----------------------------------------------------------------------


def _public(address):
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _resolve(host, port):
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class LinkChecker:
    """Asks each link's server for it (HEAD, then GET when HEAD is refused) and says what went wrong.

    ``resolve(host, port)`` returns the host's addresses; ``allow_private``
    lets tests reach a server on loopback, which is otherwise refused like
    every private, loopback, link-local or reserved address.
    """

    def __init__(self, timeout=LINK_TIMEOUT, resolve=_resolve, allow_private=False):
        self.timeout, self.resolve, self.allow_private = timeout, resolve, allow_private

    def check_all(self, urls):
        """(url, problem or "") for each URL, checked a few at a time."""
        with ThreadPoolExecutor(max_workers=min(8, max(len(urls), 1))) as pool:
            return list(zip(urls, pool.map(self.problem, urls), strict=True))

    def problem(self, url):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "is not a web address"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = self.resolve(parts.hostname, port)
        except (OSError, UnicodeError):
            return f"does not resolve: no address for {parts.hostname}"
        if not addresses:
            return f"does not resolve: no address for {parts.hostname}"
        if not self.allow_private and not all(_public(a) for a in addresses):
            return "was not checked: its host resolves to a private or local address"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            status = self._ask(parts, addresses[0], port, "HEAD", path)
            if status in (405, 501):
                status = self._ask(parts, addresses[0], port, "GET", path)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            return f"did not answer within {self.timeout:g} s ({type(exc).__name__})"
        return f"answers {status}" if status >= 400 else ""

    def _ask(self, parts, address, port, method, path):
        if parts.scheme == "https":
            conn = _PinnedHTTPS(address, parts.hostname, port, timeout=self.timeout,
                                context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(address, port, timeout=self.timeout)
        try:
            conn.request(method, path, headers={"Host": parts.netloc.rpartition("@")[2],
                                                "User-Agent": "Herald link check"})
            return conn.getresponse().status
        finally:
            conn.close()


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address already checked, verifying the certificate for the link's host name."""

    def __init__(self, address, hostname, port, **kwargs):
        super().__init__(address, port, **kwargs)
        self._hostname = hostname

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._hostname)
