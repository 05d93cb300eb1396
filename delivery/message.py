"""Building the bytes of each campaign message.

Interface used by the send engine (kept stable):

    compiled = compile_campaign(campaign)      # once per campaign per process (cached here)
    built = compiled.build(send, contact)      # per recipient -> BuiltMessage

The bytes are those the standard library's ``email`` package produces with
``POLICY`` (``policy.SMTP`` with 76-character lines, see below) for the same
headers and parts (tests/content/test_equivalence.py
compares both): an ``EmailMessage`` whose payload is a ``multipart/alternative``
of two ``MIMEPart``s (text, then HTML), each ``set_content(...,
cte="quoted-printable")``. Building that object per recipient costs about
2 ms; here the skeleton and every header that does not vary are folded once
per campaign by the ``email`` package itself, and per recipient only the
varying pieces are produced:

* headers: the fast path writes ``Name: value`` for short plain-ASCII values
  (the only case where the policy's folding is the identity); other ASCII
  values are folded by the policy; non-ASCII ones become encoded words made
  by ``email.header.Header`` (see ``fold_header`` for why not the policy).
* bodies: quoted-printable encodes line by line, so an encoded line is cached
  by its source line; a 20 KB newsletter re-encodes only the few lines that
  carry personal fields or tokens.

The text part of a campaign without a text body is derived per recipient
from the HTML (``rendering.DerivedText``); each shape of it (one per branch a
template takes) gets a plan like the bodies' above, filled with the
recipient's words.

No header value ever carries CR or LF from data: values are folded to a single
line first (``one_line``), so a name like ``"Bob\\r\\nBcc: x"`` stays inside its
own header.
"""

import functools
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from email.charset import Charset
from email.header import Header
from email.policy import SMTP
from email.utils import formataddr, formatdate

from django.conf import settings
from jinja2 import TemplateSyntaxError, meta
from markupsafe import Markup, escape

from campaigns import rendering
from delivery import tokens

# policy.SMTP folds to 78 characters, which makes quoted-printable lines of 78
# (RFC 2045 allows 76) and encoded words of 76 (RFC 2047 allows 75). At 76 both
# stay within their limits. 998 remains the hard limit for any line.
POLICY = SMTP.clone(max_line_length=76)
MAX_LINE = POLICY.max_line_length
_CACHE_LIMIT = 20000
_COMPILE_TTL = 60.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
_SIMPLE_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_SIMPLE_ADDR = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_ADDRESS_HEADERS = {"from", "to", "reply-to", "cc", "sender"}
_SIMPLE_MSGID = re.compile(r"<[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
# Headers whose policy folding is the identity for a short simple value. Other
# structured headers (Date, MIME-Version, Content-Type) are rewritten by the
# policy, so they always go through the email package.
_FAST = {"subject": _SIMPLE_TEXT, "x-herald-campaign": _SIMPLE_TEXT, "list-unsubscribe-post": _SIMPLE_TEXT,
         "precedence": _SIMPLE_TEXT, "feedback-id": _SIMPLE_TEXT,
         "from": _SIMPLE_ADDR, "to": _SIMPLE_ADDR, "reply-to": _SIMPLE_ADDR, "message-id": _SIMPLE_MSGID}


@dataclass
class BuiltMessage:
    mail_from: str  # envelope sender (VERP)
    rcpt: str
    data: bytes
    message_id: str  # without angle brackets


def one_line(value) -> str:
    """Any text made safe for a header: control characters (CR, LF, NUL, ...) become one space."""
    value = "" if value is None else str(value)
    if _CONTROL.search(value):
        value = " ".join(_CONTROL.sub(" ", value).split())
    return value.strip()


def fold_header(name: str, value: str) -> bytes:
    """``Name: value`` as one safe header, CRLF-terminated.

    ASCII values are folded by the email package under ``POLICY`` (the fast
    path writes the short simple ones directly: the policy leaves them as they
    are). Non-ASCII values, and values the policy would turn into encoded
    words, are encoded with ``email.header.Header``: the policy's folder makes
    encoded words of 76 characters and can drop the space between two of
    them, which changes the subject a reader sees; ``Header`` keeps every
    word within 75 characters and every space inside the encoded text.
    """
    value = one_line(value)
    pattern = _FAST.get(name.lower())
    if pattern is not None and len(name) + 2 + len(value) <= MAX_LINE and "=?" not in value and pattern.fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    if value.isascii() and "=?" not in value:
        folded = POLICY.header_factory(name, value).fold(policy=POLICY)
        if "=?" not in folded:
            return folded.encode("ascii")
    if name.lower() in _ADDRESS_HEADERS:
        # An internationalized address cannot be an encoded word; leave it to the policy.
        return POLICY.header_factory(name, value).fold(policy=POLICY).encode("ascii", "surrogateescape")
    return f"{name}: {_encoded_words(name, value)}\r\n".encode("ascii")


def _encoded_words(name, text):
    return Header(text, "utf-8", maxlinelen=MAX_LINE, header_name=name).encode(linesep="\r\n")


_UTF8 = Charset("utf-8")


def _phrase_words(text):
    """Encoded words for a display name, cut only after spaces, each space inside its word.

    RFC 2047 decoders drop the whitespace between adjacent encoded words, so
    a space must travel inside one; cutting inside a word would let decoders
    that put a space between words (CPython's phrase parser does) break it.
    """
    parts = text.split(" ")
    chunks, current = [], ""
    for i, part in enumerate(parts):
        piece = part + (" " if i < len(parts) - 1 else "")
        if current and len(_UTF8.header_encode(current + piece)) > 75:
            chunks.append(current)
            current = piece
        else:
            current += piece
    chunks.append(current)
    words = []
    for chunk in chunks:
        while len(_UTF8.header_encode(chunk)) > 75:  # one very long word: cut by characters
            n = len(chunk) - 1
            while n > 1 and len(_UTF8.header_encode(chunk[:n])) > 75:
                n -= 1
            words.append(_UTF8.header_encode(chunk[:n]))
            chunk = chunk[n:]
        if chunk:
            words.append(_UTF8.header_encode(chunk))
    return words


def address_header(name: str, display_name: str, address: str) -> bytes:
    """``From: Name <address>``; a non-ASCII name as encoded words (RFC 2047 §5(3))."""
    display_name, address = one_line(display_name), one_line(address)
    if display_name.isascii() and "=?" not in display_name:
        line = formataddr((display_name, address))
        if len(name) + 2 + len(line) <= MAX_LINE:
            return fold_header(name, line)
        # A name too long for one line goes out as encoded words below: the
        # email package's folder drops the quotes of a quoted display name
        # (CPython 3.11), and "a: b@c <d>" then names another address.
    lines = [f"{name}:"]
    for token in [*_phrase_words(display_name), f"<{address}>"]:
        if len(lines[-1]) + 1 + len(token) <= MAX_LINE or lines[-1] == f"{name}:":
            lines[-1] += " " + token
        else:
            lines.append(" " + token)
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "surrogateescape")


class _FoldCache:
    """Folded headers by value, for headers whose values repeat (subjects, names, dates)."""

    def __init__(self, name):
        self.name = name
        self.values = {}

    def __call__(self, value):
        line = self.values.get(value)
        if line is None:
            line = fold_header(self.name, value)
            if len(self.values) < _CACHE_LIMIT:
                self.values[value] = line
        return line


# --- quoted-printable, as email.quoprimime.body_encode(maxlinelen=76) --------

_SAFE = set(b' !"#$%&\'()*+,-./0123456789:;<>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\t')
_QP_MAP = [chr(c) if c in _SAFE else f"={c:02X}" for c in range(256)]


_QP_PLAIN = re.compile(r"[ !-<>-~\t]*")  # characters quoted-printable leaves as they are


def _qp_escape(text: str) -> str:
    """``text`` (no CR/LF) with every octet quoted-printable would escape escaped."""
    if _QP_PLAIN.fullmatch(text):
        return text
    return text.encode("utf-8").decode("latin-1").translate(_QP_MAP)


def _soft_break(line: str, start=0, head=b"") -> bytes:
    """An escaped line cut into 76-character pieces with ``=`` soft breaks, as quoprimime does.

    ``start`` and ``head`` resume after pieces already cut (see ``_cut_prefix``).
    """
    width = MAX_LINE - 1
    laststart = len(line) - 1 - MAX_LINE
    if laststart < 0 and not (line and line[-1] in " \t"):
        return line.encode("ascii")
    out = []
    while start <= laststart:
        stop = start + width
        if line[stop - 2] == "=":
            out.append(line[start:stop - 1])
            start = stop - 2
        elif line[stop - 1] == "=":
            out.append(line[start:stop])
            start = stop - 1
        else:
            out.append(line[start:stop] + "=")
            start = stop
    if line and line[-1] in " \t":
        room = start - laststart
        last = line[-1]
        if room >= 3:
            tail = f"={ord(last):02X}"
        elif room == 2:
            tail = last + "=\r\n"
        else:
            tail = f"=\r\n={ord(last):02X}"
        out.append(line[start:-1] + tail)
    else:
        out.append(line[start:])
    return head + "\r\n".join(out).encode("ascii")


def _cut_prefix(prefix: str):
    """The soft breaks a line starting with ``prefix`` gets whatever follows: (head bytes, resume offset).

    Each cut looks only at the 77 characters after the previous one, and is
    made whenever at least 79 remain, so cuts inside a long static prefix are
    the same for every recipient.
    """
    width = MAX_LINE - 1
    pieces, start = [], 0
    while len(prefix) - start >= MAX_LINE + 1:
        stop = start + width
        if prefix[stop - 2] == "=":
            pieces.append(prefix[start:stop - 1])
            start = stop - 2
        elif prefix[stop - 1] == "=":
            pieces.append(prefix[start:stop])
            start = stop - 1
        else:
            pieces.append(prefix[start:stop] + "=")
            start = stop
    return "".join(p + "\r\n" for p in pieces).encode("ascii"), start


def _qp_line(raw: bytes) -> bytes:
    """One source line (no CR/LF) encoded; soft breaks as ``=\\r\\n``."""
    return _soft_break(raw.decode("latin-1").translate(_QP_MAP))


class QPEncoder:
    """Quoted-printable bodies with encoded lines cached by source line."""

    def __init__(self):
        self.lines = {}

    def __call__(self, text: str) -> bytes:
        cache = self.lines
        out = []
        for raw in text.encode("utf-8").splitlines():
            enc = cache.get(raw)
            if enc is None:
                enc = _qp_line(raw)
                if len(cache) < _CACHE_LIMIT:
                    cache[raw] = enc
            out.append(enc)
        if not out:
            return b"\r\n"  # an empty body is one empty line, as in email.contentmanager
        out.append(b"")
        return b"\r\n".join(out)


# --- templates as literal lines and holes ------------------------------------

_HOLE = re.compile(r"\{\{(.*?)\}\}", re.S)
_CLICK_HOLE = re.compile(rf"\s*{rendering.CLICK_FN}\((\d+)\)\s*")
_LINK_HOLE = re.compile(rf"\s*{rendering.LINK_FN}\((\d+)\)\s*")
_TOKEN_HOLES = {"unsubscribe_url": 0, "view_in_browser_url": 1, rendering.OPEN_VAR: 2}
_SENTINEL = "\x00"


class BodyPlan:
    """A template without statements, encoded as pre-encoded static lines plus lines with holes.

    Rendering a 20 KB template with Jinja and quoted-printable-encoding all of
    it per recipient costs far more than the few values that change. Here the
    template is split into literal text and ``{{ expression }}`` holes at
    compile time; lines without holes are encoded once; per recipient the
    token holes are filled directly, the other expressions (``exprs``) are
    evaluated by the caller in one small Jinja template, and only lines with
    holes are escaped and soft-broken. ``encode`` returns None when a value
    would break the plan (a line break inside a value): the caller then renders
    the whole template. ``compile`` returns None for templates with statements.
    """

    def __init__(self, items, exprs):
        self.items = items
        self.exprs = exprs

    @classmethod
    def compile(cls, source, n_links, base_url_safe, link_slots=None):
        """``link_slots``: personal link number -> its place among the click tokens, for those always tracked."""
        if "{%" in source or "{#" in source or "\r" in source or _SENTINEL in source or not base_url_safe:
            return None
        pieces = _HOLE.split(source)
        exprs = []
        line, lines = [], []
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                parts = piece.split("\n")
                for j, part in enumerate(parts):
                    if j:
                        lines.append(line)
                        line = []
                    if part:
                        line.append(part)
                continue
            expr = piece.strip()
            if piece.startswith("-") or piece.endswith("-"):
                return None  # whitespace control changes the literals around it
            click = _CLICK_HOLE.fullmatch(piece)
            personal = _LINK_HOLE.fullmatch(piece) if link_slots else None
            if click and int(click.group(1)) < n_links:
                line.append(3 + int(click.group(1)))
            elif personal and int(personal.group(1)) in link_slots:
                line.append(3 + link_slots[int(personal.group(1))])
            elif expr in _TOKEN_HOLES:
                line.append(_TOKEN_HOLES[expr])
            else:
                exprs.append(piece)
                line.append(-len(exprs))  # negative: the n-th evaluated expression
        lines.append(line)
        items = []
        for k, parts in enumerate(lines):
            last = k == len(lines) - 1
            if all(isinstance(p, str) for p in parts):
                text = "".join(parts)
                if last and not text:
                    continue  # a trailing newline ends the text; no empty line follows
                encoded = _qp_line(text.encode("utf-8")) + b"\r\n"
                if items and isinstance(items[-1], bytes):
                    items[-1] += encoded
                else:
                    items.append(encoded)
            else:
                escaped = tuple(_qp_escape(p) if isinstance(p, str) else p for p in parts)
                head, start = _cut_prefix(escaped[0] if isinstance(escaped[0], str) else "")
                items.append((escaped, last, head, start))
        return cls(items, exprs)

    def encode(self, tokens_list, evaluated):
        """The quoted-printable body for one recipient, or None to fall back to a full render.

        ``evaluated``: the values of ``self.exprs``, in order, as rendered.
        """
        vals = tokens_list
        if evaluated:
            for v in evaluated:
                if "\n" in v or "\r" in v:
                    return None
            # Negative indexes count from the end: the evaluated values go last, reversed.
            vals = tokens_list + [_qp_escape(v) for v in reversed(evaluated)]
        out = []
        for item in self.items:
            if item.__class__ is bytes:
                out.append(item)
                continue
            parts, last, head, start = item
            line = "".join([p if p.__class__ is str else vals[p] for p in parts])
            if last and not line:
                continue
            out.append(_soft_break(line, start, head) + b"\r\n")
        return b"".join(out) or b"\r\n"


# --- tokens ------------------------------------------------------------------

_B32_PAIRS = [a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"]


class FastTokens:
    """The URLs of ``delivery.tokens`` for one send, computed in one go.

    A message carries a dozen tokens (one per tracked link); ``tokens.sign``
    spends most of its time in the pure-Python base32 encoder. This computes
    the same strings with a one-shot HMAC and a table, and checks itself
    against ``delivery.tokens`` when created: if the token format ever
    changes there, ``ok`` is False and the builder calls ``delivery.tokens``.
    """

    def __init__(self):
        secret = settings.SECRET_KEY
        # HMAC's inner and outer hashes with the key already absorbed (RFC 2104):
        # a copy and two updates per token instead of a key schedule.
        self.pads = {}
        for purpose in tokens.PURPOSES:
            key = hashlib.sha256(f"herald.tokens:{purpose}:{secret}".encode()).digest().ljust(64, b"\0")
            self.pads[purpose] = (hashlib.sha256(bytes(k ^ 0x36 for k in key)), hashlib.sha256(bytes(k ^ 0x5C for k in key)))
        self._link_b36 = {}
        self.base = settings.HERALD_BASE_URL
        self.bounce_domain = settings.HERALD_BOUNCE_DOMAIN
        sample = self.for_send(1234567, [0, 7])
        expected = (tokens.unsubscribe_url(1234567), tokens.view_url(1234567), tokens.open_url(1234567),
                    [tokens.click_url(1234567, 0), tokens.click_url(1234567, 7)],
                    tokens.unsubscribe_mailto(1234567), tokens.verp_address(1234567))
        self.ok = sample == expected

    def _sign(self, purpose, body):
        inner, outer = self.pads[purpose]
        inner = inner.copy()
        inner.update(body.encode())
        outer = outer.copy()
        outer.update(inner.digest())
        n = int.from_bytes(outer.digest()[:10], "big")
        p = _B32_PAIRS
        mac = (p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
               + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023])
        return f"{body}-{mac}"

    def for_send(self, send_id, link_indexes):
        """(unsubscribe URL, view URL, open URL, [click URLs], unsubscribe mailto, VERP address)."""
        sid = _b36(send_id)
        unsub = self._sign("unsubscribe", sid)
        base = self.base
        names = self._link_b36
        if len(names) < len(link_indexes):
            names.update((i, _b36(i)) for i in link_indexes)
        sign = self._sign
        # The click tokens, a dozen per message, inline: the same steps as _sign without its calls.
        inner0, outer0 = self.pads["click"]
        p = _B32_PAIRS
        clicks = []
        for i in link_indexes:
            body = f"{sid}-{names.get(i) or _b36(i)}"
            inner = inner0.copy()
            inner.update(body.encode())
            outer = outer0.copy()
            outer.update(inner.digest())
            n = int.from_bytes(outer.digest()[:10], "big")
            clicks.append(f"{base}/t/c/{body}-{p[n >> 70]}{p[(n >> 60) & 1023]}{p[(n >> 50) & 1023]}{p[(n >> 40) & 1023]}"
                          f"{p[(n >> 30) & 1023]}{p[(n >> 20) & 1023]}{p[(n >> 10) & 1023]}{p[n & 1023]}")
        return (f"{base}/t/u/{unsub}", f"{base}/t/v/{sign('view', sid)}", f"{base}/t/o/{sign('open', sid)}.gif",
                clicks, f"unsubscribe+{unsub}@{self.bounce_domain}", f"bounces+{sign('bounce', sid)}@{self.bounce_domain}")


def slow_tokens(send_id, link_indexes):
    return (tokens.unsubscribe_url(send_id), tokens.view_url(send_id), tokens.open_url(send_id),
            [tokens.click_url(send_id, i) for i in link_indexes],
            tokens.unsubscribe_mailto(send_id), tokens.verp_address(send_id))


def _is_static(template_source, env):
    return not meta.find_undeclared_variables(env.parse(template_source))


def _date_line(cache={}):  # noqa: B006 - one folded Date per second, shared by all campaigns
    now = int(time.time())
    line = cache.get(now)
    if line is None:
        cache.clear()
        line = cache[now] = fold_header("Date", formatdate(now, usegmt=True))
    return line


# Plain look-ups read without Jinja: rendering.field_getter (shared with the derived text part).
_field_getter = rendering.field_getter


def _simple_parts(source):
    """A template of literal text and plain look-ups as [str | getter], or None."""
    if "{%" in source or "{#" in source:
        return None
    parts = []
    for i, piece in enumerate(_HOLE.split(source)):
        if i % 2 == 0:
            if piece:
                parts.append(piece)
            continue
        getter = _field_getter(piece)
        if getter is None or piece.startswith("-") or piece.endswith("-"):
            return None
        parts.append(getter)
    return parts


class CompiledCampaign:
    def __init__(self, campaign):
        from delivery import dkim

        self.campaign = campaign
        self.campaign_id = campaign.pk
        self.content = c = rendering.compile_content(campaign)
        static_indexes = rendering.register_links(campaign.pk, c.static_links) if c.static_links else []
        # A personal link is tracked by its place in the content, never by its rendered URL: no query per message.
        self.personal_indexes = rendering.register_links(
            campaign.pk, c.personal_sources, personal=True) if c.personal_sources else []
        # One whose source starts with a web address is always tracked: its token is made with the others,
        # without a render; one like ``{{ contact.attributes.url }}`` is rendered to see what it is.
        self.link_slots = {}
        literal = []
        for k, source in enumerate(c.personal_sources):
            if source.lower().startswith(("http://", "https://")):
                self.link_slots[k] = len(static_indexes) + len(literal)
                literal.append(self.personal_indexes[k])
        self.link_indexes = static_indexes + literal
        fast = FastTokens()
        self.tokens = fast.for_send if fast.ok else slow_tokens
        # The preference centre's link costs a signature per message: made only for content that shows it.
        self.uses_preferences = any(rendering.PREFERENCES_NAME in (text or "") for text in (
            c.html_source, c.text_source, campaign.html_body, campaign.text_body))

        from_email = one_line(campaign.from_email)
        self.domain = from_email.rpartition("@")[2].lower() or "localhost"
        self.from_email = from_email
        self.subject_static = _is_static(campaign.subject or "", rendering.text_env)
        self.from_static = _is_static(campaign.from_name or "", rendering.text_env)
        self._subject = _FoldCache("Subject")
        self._from = {}
        self._html_qp = QPEncoder()
        self._text_qp = QPEncoder()
        empty = {"contact": rendering.ContactData()}
        self.subject_line = self._subject(c.subject.render(empty)) if self.subject_static else None
        self.from_line = self._from_line(c.from_name.render(empty)) if self.from_static else None
        base_safe = str(escape(settings.HERALD_BASE_URL)) == settings.HERALD_BASE_URL and _QP_PLAIN.fullmatch(
            settings.HERALD_BASE_URL) is not None
        n_static = len(static_indexes)
        self.html_plan = BodyPlan.compile(c.html_source, n_static, base_safe, self.link_slots)
        # A derived text part is made per recipient from the HTML (rendering.DerivedText), not from a plan.
        self.text_plan = None if c.text_derived else BodyPlan.compile(c.text_source, n_static, base_safe)
        self._compile_values()
        self.html_plan = self._checked(self.html_plan, c.html, 0)
        self.text_plan = self._checked(self.text_plan, c.text, 1)

        self.boundary = "=" * 15 + f"{int.from_bytes(os.urandom(8), 'big'):019d}" + "=="
        self.reply_to_line = fold_header("Reply-To", campaign.reply_to) if one_line(campaign.reply_to) else b""
        self.tail_lines = [
            fold_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            fold_header("Feedback-ID", f"{campaign.pk}:campaign:herald:{self.domain}"),
            fold_header("X-Herald-Campaign", str(campaign.pk)),
            fold_header("Precedence", "bulk"),
            fold_header("MIME-Version", "1.0"),
        ]
        signed = [(0, b"list-unsubscribe-post"), (1, b"feedback-id"), (2, b"x-herald-campaign"),
                  (4, b"mime-version"), (5, b"content-type")]
        b = self.boundary.encode("ascii")
        qp_headers = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        # A campaign with only a text body is a single text/plain part, never
        # an alternative with an empty HTML part (which clients would show).
        self.has_html = bool(c.html_source.strip())
        if self.has_html:
            self.tail_lines.append(fold_header("Content-Type", f'multipart/alternative; boundary="{self.boundary}"'))
            self.text_head = b"\r\n--" + b + b'\r\nContent-Type: text/plain; charset="utf-8"\r\n' + qp_headers
            self.html_head = b"\r\n--" + b + b'\r\nContent-Type: text/html; charset="utf-8"\r\n' + qp_headers
            self.close = b"\r\n--" + b + b"--\r\n"
        else:
            self.tail_lines.append(fold_header("Content-Type", 'text/plain; charset="utf-8"'))
            self.tail_lines.append(b"Content-Transfer-Encoding: quoted-printable\r\n")
            signed.append((6, b"content-transfer-encoding"))
            self.text_head = b"\r\n"
        self.signed_tail = [(name, self.tail_lines[i]) for i, name in signed]
        self._unsub_shapes = {}
        self.signer = dkim.signer_for_domain(self.domain)

    def _compile_values(self):
        """How each hole of both bodies and the subject is evaluated per recipient.

        Plain field look-ups (``contact.first_name``, ``contact.attributes.city``,
        either with ``| default('literal')``) are read directly: the same values
        Jinja would print, without a render. Everything else goes into one Jinja
        template evaluating all the remaining holes, NUL-separated, the subject
        last: one render per recipient instead of three; the text and the
        subject without autoescaping, as their own templates are.
        """
        html_exprs = self.html_plan.exprs if self.html_plan else []
        text_exprs = self.text_plan.exprs if self.text_plan else []
        self.html_getters = [_field_getter(e) for e in html_exprs]
        self.text_getters = [_field_getter(e) for e in text_exprs]
        subject = "" if self.subject_static else (self.campaign.subject or "")
        self.subject_parts = None if self.subject_static else _simple_parts(subject)
        if self.subject_parts is not None:
            subject = ""
        complex_html = [e for e, g in zip(html_exprs, self.html_getters, strict=True) if g is None]
        complex_text = [e for e, g in zip(text_exprs, self.text_getters, strict=True) if g is None]
        self.value_counts = (len(complex_html), len(complex_text))
        if not complex_html and not complex_text and not subject:
            self.values = None
            return
        # Each value is followed by a NUL; the subject comes last.
        source = ("".join("{{" + e + "}}" + _SENTINEL for e in complex_html) + "{% autoescape false %}"
                  + "".join("{{" + e + "}}" + _SENTINEL for e in complex_text) + subject + "{% endautoescape %}")
        try:
            self.values = rendering.html_env.from_string(source)
        except TemplateSyntaxError:
            self.values = False  # cannot split the work: every recipient gets full renders

    def _evaluate(self, ctx):
        """(html values, text values, subject or None) for one recipient, or None when they cannot be told apart."""
        if self.values is False:
            return None
        data = ctx["contact"]
        if self.values is None:
            parts = iter(())
        else:
            rendered = self.values.render(ctx).split(_SENTINEL)
            if len(rendered) != sum(self.value_counts) + 1:
                return None
            subject = rendered[-1]
            parts = iter(rendered)
        html = [next(parts) if g is None else str(escape(g(data))) for g in self.html_getters]
        text = [next(parts) if g is None else str(g(data)) for g in self.text_getters]
        if self.subject_parts is not None:
            subject = "".join([p if p.__class__ is str else str(p(data)) for p in self.subject_parts])
        elif self.values is None:
            subject = None
        return html, text, subject

    def _checked(self, plan, template, which):
        """``plan`` when it reproduces the full render exactly for sample recipients, else None."""
        if plan is None:
            return None
        for sample in (rendering.ContactData(), rendering.ContactData("a@example.com", "Zoë", "O'Neil & <Co>", {"x": "=3D"})):
            toks = self.tokens(1, self.link_indexes)
            ctx = self.context(1, sample, toks)
            values = self._evaluate(ctx)
            evaluated = values[which] if values else [] if not plan.exprs else None
            if evaluated is None:
                return None
            if plan.encode([toks[0], toks[1], toks[2], *toks[3]], evaluated) != QPEncoder()(template.render(ctx)):
                return None
        return plan

    # --- per-recipient pieces ------------------------------------------------

    def _from_line(self, display_name):
        line = self._from.get(display_name)
        if line is None:
            line = address_header("From", display_name, self.from_email)
            if len(self._from) < _CACHE_LIMIT:
                self._from[display_name] = line
        return line

    def context(self, send_id, contact_data, toks=None):
        """The render context of one recipient; ``toks`` as returned by ``self.tokens``."""
        if toks is None:
            toks = self.tokens(send_id, self.link_indexes)
        clicks = toks[3]
        ctx = {
            "contact": contact_data,
            "unsubscribe_url": toks[0],
            "view_in_browser_url": toks[1],
            rendering.CLICK_FN: clicks.__getitem__,
            rendering.LINK_FN: lambda k: (clicks[self.link_slots[k]] if k in self.link_slots
                                          else self._dynamic_link(send_id, k, contact_data, toks)),
            rendering.OPEN_VAR: toks[2],
        }
        if self.uses_preferences:
            ctx[rendering.PREFERENCES_NAME] = tokens.preferences_url(send_id)
        return ctx

    def _dynamic_link(self, send_id, k, contact_data, toks):
        """A personal link whose source is all expressions: its click URL when it renders a web address."""
        rendered, url = render_personal_link(self.content.personal_sources[k], send_id, contact_data, toks[0], toks[1])
        if url is None:
            # Output of an autoescaping template: already escaped once.
            return Markup(rendered)  # noqa: S704
        return self.tokens(send_id, [self.personal_indexes[k]])[3][0]

    def _list_unsubscribe(self, url, mailto):
        """Folded once per shape (lengths), then the send's URLs put in: same bytes, one fold per shape."""
        key = (len(url), len(mailto))
        shape = self._unsub_shapes.get(key)
        if shape is None:
            shape = fold_header("List-Unsubscribe", f"<{'U' * len(url)}>, <mailto:{'M' * len(mailto)}>").decode("ascii")
            self._unsub_shapes[key] = shape
        line = shape.replace("U" * len(url), url, 1).replace("M" * len(mailto), mailto, 1)
        if url not in line or mailto not in line:
            return fold_header("List-Unsubscribe", f"<{url}>, <mailto:{mailto}>")
        return line.encode("ascii")

    def _body(self, plan, template, encoder, ctx, token_list, evaluated):
        if plan is not None and (evaluated is not None or not plan.exprs):
            encoded = plan.encode(token_list, evaluated)
            if encoded is not None:
                return encoded
        return encoder(template.render(ctx))

    def _derived_text(self, ctx):
        """The encoded text part derived from this recipient's HTML (rendering.DerivedText).

        Each shape of the text (one per branch the template takes) gets a
        BodyPlan of its own once, checked against the encoder; a recipient's
        words then fill its holes as the HTML's values fill the HTML plan.
        """
        derived = self.content.text
        shape, marks, whole = derived.shape(ctx)
        if whole is not None:
            return self._text_qp(whole)
        unsubscribe = ctx["unsubscribe_url"]
        if shape.plan is not False and derived.carries(shape, marks, unsubscribe):
            if shape.plan is None:
                shape.plan = _shape_plan(shape, marks, derived.fill(shape, marks))
            if shape.plan:
                plan, order = shape.plan
                words = marks.words
                encoded = plan.encode([], [words[k] for k in order])
                if encoded is not None:
                    return encoded
        return self._text_qp(rendering.with_unsubscribe(derived.fill(shape, marks), unsubscribe))

    def build(self, send, contact) -> BuiltMessage:
        send_id = send.pk
        data = contact if isinstance(contact, rendering.ContactData) else rendering.ContactData.of(contact)
        toks = self.tokens(send_id, self.link_indexes)
        ctx = self.context(send_id, data, toks)
        token_list = [toks[0], toks[1], toks[2], *toks[3]]
        c = self.content
        rcpt = one_line(send.email)
        values = self._evaluate(ctx)
        if self.subject_line:
            subject_line = self.subject_line
        else:
            subject_line = self._subject(values[2] if values and values[2] is not None else c.subject.render(ctx))
        from_line = self.from_line or self._from_line(c.from_name.render(ctx))
        message_id = f"{_b36(send_id)}.{os.urandom(9).hex()}@{self.domain}"
        headers = [
            (b"from", from_line),
            (b"to", fold_header("To", rcpt)),
            (b"subject", subject_line),
            (b"date", _date_line()),
            (b"message-id", fold_header("Message-ID", f"<{message_id}>")),
        ]
        if self.reply_to_line:
            headers.append((b"reply-to", self.reply_to_line))
        headers.append((b"list-unsubscribe", self._list_unsubscribe(toks[0], toks[4])))
        if c.text_derived:
            text = self._derived_text(ctx)
        else:
            text = self._body(self.text_plan, c.text, self._text_qp, ctx, token_list, values and values[1])
        if self.has_html:
            html = self._body(self.html_plan, c.html, self._html_qp, ctx, token_list, values and values[0])
            body = b"".join((self.text_head, text, self.html_head, html, self.close))
        else:
            body = self.text_head + text
        head = b"".join([line for _name, line in headers]) + b"".join(self.tail_lines)
        if self.signer is not None:
            # body[2:]: the message body starts after the CRLF that ends the headers.
            head = self.signer.sign(headers + self.signed_tail, body[2:]) + head
        # The body starts with "\r\n": the blank line ending the headers.
        return BuiltMessage(toks[5], rcpt, head + body, message_id)


def _shape_plan(shape, marks, text):
    """(BodyPlan, word index of each hole) for a derived text's shape, or False when no plan reproduces ``text``."""
    if any(p.__class__ is str and ("{" in p or "}" in p) for p in shape.pieces):
        return False  # literal braces would read as holes
    source = "".join(p if p.__class__ is str else "{{ " + str(p) + " }}" for p in shape.pieces)
    plan = BodyPlan.compile(source, 0, True)
    if plan is None:
        return False
    order = [int(e) for e in plan.exprs]
    if plan.encode([], [marks.words[k] for k in order]) != QPEncoder()(text):
        return False
    return plan, order


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    number = int(number or 0)
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


_compiled = {}
_compiled_lock = threading.Lock()


def _cache_key(campaign):
    template = campaign.template if campaign.template_id else None
    return (campaign.pk, campaign.created_at, campaign.subject, campaign.from_name, campaign.from_email, campaign.reply_to,
            campaign.html_body, campaign.text_body, campaign.track_opens, campaign.track_clicks,
            template.html if template else None, template.text if template else None)


def compile_campaign(campaign) -> CompiledCampaign:
    """The campaign compiled for this process; recompiled when its content changed or after a minute."""
    key = _cache_key(campaign)
    now = time.monotonic()
    # Each A/B variant of a campaign (see Campaign.as_sent) is compiled and kept on its own.
    slot = (campaign.pk, getattr(campaign, "variant_number", None))
    with _compiled_lock:
        hit = _compiled.get(slot)
        if hit and hit[0] == key and now - hit[1] < _COMPILE_TTL:
            return hit[2]
    compiled = CompiledCampaign(campaign)
    with _compiled_lock:
        if len(_compiled) > 32:
            _compiled.clear()
        _compiled[slot] = (key, now, compiled)
    return compiled


@functools.lru_cache(maxsize=256)
def _personal_template(source):
    return rendering.html_env.from_string(source)


def render_personal_link(source, send_id, contact_data, unsubscribe_url=None, view_url=None):
    """(rendered markup, URL) of a personal link for one recipient; URL None when it is no web address to track.

    Shared by the message builder and the click redirect, which renders the
    link again from the send's contact when it is clicked.
    """
    ctx = {"contact": contact_data, "unsubscribe_url": unsubscribe_url or tokens.unsubscribe_url(send_id),
           "view_in_browser_url": view_url or tokens.view_url(send_id)}
    if rendering.PREFERENCES_NAME in source:
        ctx[rendering.PREFERENCES_NAME] = tokens.preferences_url(send_id)
    rendered = _personal_template(source).render(ctx)
    url = rendering.html.unescape(rendered).strip()
    if (not url.lower().startswith(("http://", "https://")) or url in (ctx["unsubscribe_url"], ctx["view_in_browser_url"])
            or "\r" in url or "\n" in url):
        return rendered, None
    return rendered, url


def list_links(campaign):
    """The campaign's tracked links as (index, url)."""
    return rendering.campaign_links(campaign)
