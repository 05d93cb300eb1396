"""Building the bytes of each campaign message.

Interface used by the send engine (kept stable):

    compiled = compile_campaign(campaign)      # once per campaign per process (cached here)
    built = compiled.build(send, contact)      # per recipient -> BuiltMessage

The bytes are those the standard library's ``email`` package produces with
``policy.SMTP`` for the same headers and parts (tests/content/test_equivalence.py
compares both): an ``EmailMessage`` whose payload is a ``multipart/alternative``
of two ``MIMEPart``s (text, then HTML), each ``set_content(...,
cte="quoted-printable")``. Building that object per recipient costs about
2 ms; here the skeleton and every header that does not vary are folded once
per campaign by the ``email`` package itself, and per recipient only the
varying pieces are produced:

* headers: the fast path writes ``Name: value`` for short plain-ASCII values
  (the only case where the policy's folding is the identity); anything else
  (non-ASCII, long, odd characters) is folded by the ``email`` package.
* bodies: quoted-printable encodes line by line, so an encoded line is cached
  by its source line; a 20 KB newsletter re-encodes only the few lines that
  carry personal fields or tokens.

No header value ever carries CR or LF from data: values are folded to a single
line first (``one_line``), so a name like ``"Bob\\r\\nBcc: x"`` stays inside its
own header.
"""

import os
import re
import threading
import time
from dataclasses import dataclass
from email.policy import SMTP
from email.utils import formataddr, formatdate

from jinja2 import meta
from markupsafe import Markup

from campaigns import rendering
from delivery import tokens

MAX_LINE = SMTP.max_line_length  # 78, the folding target; 998 is the hard limit
_CACHE_LIMIT = 20000
_COMPILE_TTL = 60.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
_SIMPLE_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_SIMPLE_ADDR = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
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
    """``Name: value`` folded exactly as ``email.policy.SMTP`` does, CRLF-terminated."""
    value = one_line(value)
    pattern = _FAST.get(name.lower())
    if pattern is not None and len(name) + 2 + len(value) <= MAX_LINE and "=?" not in value and pattern.fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return SMTP.header_factory(name, value).fold(policy=SMTP).encode("ascii", "surrogateescape")


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


# --- quoted-printable, as email.quoprimime.body_encode(maxlinelen=78) --------

_SAFE = set(b' !"#$%&\'()*+,-./0123456789:;<>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\t')
_QP_MAP = [chr(c) if c in _SAFE else f"={c:02X}" for c in range(256)]


def _qp_line(raw: bytes) -> bytes:
    """One source line (no CR/LF) encoded; soft breaks as ``=\\r\\n``."""
    line = raw.decode("latin-1").translate(_QP_MAP)
    width = MAX_LINE - 1
    out = []
    start = 0
    laststart = len(line) - 1 - MAX_LINE
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
    return "\r\n".join(out).encode("ascii")


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
        out.append(b"")
        return b"\r\n".join(out)


def _is_static(template_source, env):
    return not meta.find_undeclared_variables(env.parse(template_source))


def _date_line(cache={}):  # noqa: B006 - one folded Date per second, shared by all campaigns
    now = int(time.time())
    line = cache.get(now)
    if line is None:
        cache.clear()
        line = cache[now] = fold_header("Date", formatdate(now, usegmt=True))
    return line


class CompiledCampaign:
    def __init__(self, campaign):
        from delivery import dkim

        self.campaign = campaign
        self.campaign_id = campaign.pk
        self.content = c = rendering.compile_content(campaign)
        self.link_indexes = rendering.register_links(campaign.pk, c.static_links) if c.static_links else []
        self._dynamic_links = {}
        self._links_lock = threading.Lock()

        from_email = one_line(campaign.from_email)
        self.domain = from_email.rpartition("@")[2].lower() or "localhost"
        self.from_email = from_email
        self.subject_static = _is_static(campaign.subject or "", rendering.text_env)
        self.from_static = _is_static(campaign.from_name or "", rendering.text_env)
        self.text_static = _is_static(c.text_source, rendering.text_env)
        self._subject = _FoldCache("Subject")
        self._from = _FoldCache("From")
        self._html_qp = QPEncoder()
        self._text_qp = QPEncoder()
        empty = {"contact": rendering.ContactData()}
        self.subject_line = self._subject(c.subject.render(empty)) if self.subject_static else None
        self.from_line = self._from(formataddr((one_line(c.from_name.render(empty)), from_email))) if self.from_static else None
        self.text_body = self._text_qp(c.text.render(empty)) if self.text_static else None

        self.boundary = "=" * 15 + f"{int.from_bytes(os.urandom(8), 'big'):019d}" + "=="
        self.reply_to_line = fold_header("Reply-To", campaign.reply_to) if one_line(campaign.reply_to) else b""
        self.tail_lines = [
            fold_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            fold_header("Feedback-ID", f"{campaign.pk}:campaign:herald:{self.domain}"),
            fold_header("X-Herald-Campaign", str(campaign.pk)),
            fold_header("Precedence", "bulk"),
            fold_header("MIME-Version", "1.0"),
            fold_header("Content-Type", f'multipart/alternative; boundary="{self.boundary}"'),
        ]
        b = self.boundary.encode("ascii")
        qp_headers = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        self.text_head = b"\r\n--" + b + b'\r\nContent-Type: text/plain; charset="utf-8"\r\n' + qp_headers
        self.html_head = b"\r\n--" + b + b'\r\nContent-Type: text/html; charset="utf-8"\r\n' + qp_headers
        self.close = b"\r\n--" + b + b"--\r\n"
        self._unsub_shapes = {}
        self.signer = dkim.signer_for_domain(self.domain)

    # --- per-recipient pieces ------------------------------------------------

    def context(self, send_id, contact_data):
        links = self.link_indexes
        return {
            "contact": contact_data,
            "unsubscribe_url": tokens.unsubscribe_url(send_id),
            "view_in_browser_url": tokens.view_url(send_id),
            rendering.CLICK_FN: lambda i: tokens.click_url(send_id, links[i]),
            rendering.LINK_FN: lambda k: self._dynamic_link(send_id, k, contact_data),
            rendering.OPEN_VAR: tokens.open_url(send_id),
        }

    def _dynamic_link(self, send_id, k, contact_data):
        """A link whose URL has expressions: render it, then track it by its rendered URL."""
        ctx = {"contact": contact_data, "unsubscribe_url": tokens.unsubscribe_url(send_id),
               "view_in_browser_url": tokens.view_url(send_id)}
        rendered = self.content.dynamic_links[k].render(ctx)
        url = rendering.html.unescape(rendered).strip()
        if not url.lower().startswith(("http://", "https://")) or url in (ctx["unsubscribe_url"], ctx["view_in_browser_url"]):
            # Output of an autoescaping template: already escaped once.
            return Markup(rendered)  # noqa: S704
        index = self._dynamic_links.get(url)
        if index is None:
            with self._links_lock:
                index = self._dynamic_links.get(url)
                if index is None:
                    index = rendering.register_links(self.campaign_id, [url])[0]
                    if len(self._dynamic_links) < _CACHE_LIMIT:
                        self._dynamic_links[url] = index
        return tokens.click_url(send_id, index)

    def _list_unsubscribe(self, send_id):
        """Folded once per shape (lengths), then the send's URLs put in: same bytes, one fold per shape."""
        url, mailto = tokens.unsubscribe_url(send_id), tokens.unsubscribe_mailto(send_id)
        key = (len(url), len(mailto))
        shape = self._unsub_shapes.get(key)
        if shape is None:
            shape = fold_header("List-Unsubscribe", f"<{'U' * len(url)}>, <mailto:{'M' * len(mailto)}>").decode("ascii")
            self._unsub_shapes[key] = shape
        line = shape.replace("U" * len(url), url, 1).replace("M" * len(mailto), mailto, 1)
        if url not in line or mailto not in line:
            return fold_header("List-Unsubscribe", f"<{url}>, <mailto:{mailto}>")
        return line.encode("ascii")

    def build(self, send, contact) -> BuiltMessage:
        send_id = send.pk
        data = contact if isinstance(contact, rendering.ContactData) else rendering.ContactData.of(contact)
        ctx = self.context(send_id, data)
        c = self.content
        rcpt = one_line(send.email)
        subject_line = self.subject_line or self._subject(c.subject.render(ctx))
        from_line = self.from_line or self._from(formataddr((one_line(c.from_name.render(ctx)), self.from_email)))
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
        headers.append((b"list-unsubscribe", self._list_unsubscribe(send_id)))
        text = self.text_body if self.text_static else self._text_qp(c.text.render(ctx))
        html = self._html_qp(c.html.render(ctx))
        body = b"".join((self.text_head, text, self.html_head, html, self.close))
        head = b"".join(line for _name, line in headers) + b"".join(self.tail_lines)
        if self.signer is not None:
            head = self.signer.sign(headers + self._signed_tail(), body) + head
        # The parts start with "\r\n--boundary": that CRLF is the blank line ending the headers.
        return BuiltMessage(tokens.verp_address(send_id), rcpt, head + body, message_id)

    def _signed_tail(self):
        names = (b"list-unsubscribe-post", b"feedback-id", b"x-herald-campaign", b"mime-version", b"content-type")
        return list(zip(names, (self.tail_lines[0], self.tail_lines[1], self.tail_lines[2],
                                self.tail_lines[4], self.tail_lines[5]), strict=True))


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
    return (campaign.pk, campaign.subject, campaign.from_name, campaign.from_email, campaign.reply_to,
            campaign.html_body, campaign.text_body, campaign.track_opens, campaign.track_clicks,
            template.html if template else None, template.text if template else None)


def compile_campaign(campaign) -> CompiledCampaign:
    """The campaign compiled for this process; recompiled when its content changed or after a minute."""
    key = _cache_key(campaign)
    now = time.monotonic()
    with _compiled_lock:
        hit = _compiled.get(campaign.pk)
        if hit and hit[0] == key and now - hit[1] < _COMPILE_TTL:
            return hit[2]
    compiled = CompiledCampaign(campaign)
    with _compiled_lock:
        if len(_compiled) > 32:
            _compiled.clear()
        _compiled[campaign.pk] = (key, now, compiled)
    return compiled


def list_links(campaign):
    """The campaign's tracked links as (index, url)."""
    return rendering.campaign_links(campaign)
