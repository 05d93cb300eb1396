"""Campaign content as Jinja2 templates: validation at save, compilation once per campaign.

Subject, from name, HTML and text bodies are Jinja2 templates run in the
sandbox with ``contact`` (email, first_name, last_name, attributes),
``unsubscribe_url``, ``preferences_url`` and ``view_in_browser_url`` in scope. A variable a contact
lacks renders as empty (or its ``default``), never as an error mid-campaign.

Compiling a campaign does the expensive work once: the layout and the body
are joined, CSS is inlined and links are rewritten for click tracking. Jinja
constructs are swapped for inert placeholders while the HTML goes through the
CSS inliner, then put back, so the result is still one Jinja template rendered
per recipient in microseconds. A campaign without a text body gets a text part
derived per recipient from that recipient's HTML (``DerivedText``), so it
carries the same values, branches and links; every text part carries the
unsubscribe URL.

Click tracking: every http(s) href becomes a call into the render context.
Every link gets its CampaignLink index at compile time: a literal URL as
itself, a URL with Jinja expressions (a personal link) as its source, marked
``personal`` and rendered for the send's contact when it is clicked. Sending
a message therefore makes no query for its links, however many URLs the
recipients' data makes of them.

This module is the bottom layer: it knows nothing of sends or tokens; the
message builder in ``delivery.message`` provides the tracking callables.
"""

import html
import itertools
import re
import secrets
import threading
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from html.parser import HTMLParser

import css_inline
import html2text
from django.db import IntegrityError, transaction
from django.db.models import Max
from jinja2 import ChainableUndefined, TemplateSyntaxError, meta, nodes, pass_eval_context
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.utils import Cycler
from markupsafe import Markup, escape

from campaigns import formats
from campaigns.formats import CONTENT_MARKER, ContentError, check_body_format, html_source_of, join_layout  # noqa: F401
from campaigns.models import Campaign, CampaignLink, Template
from campaigns.sandbox import BudgetedSandbox, BudgetExceeded, render_budget

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PLACEHOLDER = re.compile(r"HJ[XS](\d{5})Z")
_HREF = re.compile(r"""(\bhref\s*=\s*)(["'])(.*?)\2""", re.I | re.S)
_BODY_END = re.compile(r"</body\s*>", re.I)
_EXPR_NAME = re.compile(r"^\{\{-?\s*(\w+)\s*-?\}\}$")
# The preference centre's signed link (made by delivery.tokens); like the unsubscribe link, never click-tracked.
PREFERENCES_NAME = "preferences_url"
UNTRACKED_NAMES = {"unsubscribe_url", "view_in_browser_url", PREFERENCES_NAME}

CLICK_FN = "_herald_click"
LINK_FN = "_herald_link"
OPEN_VAR = "_herald_open_url"


class Undefined(ChainableUndefined):
    """Missing variables render as empty and chain (``contact.attributes.a.b``)."""

    __slots__ = ()


class _RecordingUndefined(Undefined):
    """Like Undefined, and remembers which names were missing (for previews)."""

    __slots__ = ()
    missing = threading.local()

    def __init__(self, hint=None, obj=None, name=None, exc=UndefinedError):
        super().__init__(hint, obj, name, exc)
        seen = getattr(_RecordingUndefined.missing, "names", None)
        if seen is not None and name is not None:
            seen.append(_describe(obj, name))


def _describe(obj, name):
    if isinstance(obj, ContactData):
        return f"contact.{name}"
    if isinstance(obj, dict) and getattr(_RecordingUndefined.missing, "attributes", None) is obj:
        return f"contact.attributes.{name}"
    return name


def _cycler(*items):
    """``cycler()`` with no items cycles over an empty string instead of failing mid-campaign."""
    return Cycler(*(items or ("",)))


def _environment(autoescape, undefined=Undefined):
    env = BudgetedSandbox(autoescape=autoescape, undefined=undefined, keep_trailing_newline=True)
    env.globals["cycler"] = _cycler
    env.globals.pop("lipsum", None)  # lorem ipsum of any length has no place in a campaign
    return env


html_env = _environment(True)
text_env = _environment(False)
_preview_html_env = _environment(True, _RecordingUndefined)
_preview_text_env = _environment(False, _RecordingUndefined)


class ContactData:
    """What a template sees of a contact: its fields, never the model or its queries."""

    __slots__ = ("email", "first_name", "last_name", "attributes")

    def __init__(self, email="", first_name="", last_name="", attributes=None):
        # A blank name is a missing one: it renders empty, and ``default`` applies.
        self.email = email
        if first_name:
            self.first_name = first_name
        if last_name:
            self.last_name = last_name
        self.attributes = attributes if isinstance(attributes, dict) else {}

    @classmethod
    def of(cls, contact):
        if contact is None:
            return cls()
        return cls(contact.email, contact.first_name, contact.last_name, contact.attributes)

    @property
    def name(self):
        return " ".join(getattr(self, part, "") for part in ("first_name", "last_name") if getattr(self, part, ""))

    def __str__(self):
        return self.email


_FIELD_EXPR = re.compile(r"""\s*contact\.([A-Za-z]\w*)(?:\.([A-Za-z]\w*))?\s*"""
                         r"""(?:\|\s*default\(\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*\)\s*)?""")
_CONTACT_FIELDS = {"email", "first_name", "last_name", "name"}
_MISSING = object()


def field_getter(expr):
    """A function reading ``expr`` from a ContactData as Jinja would print it, or None when it is no plain look-up.

    For the hot paths, which skip a Jinja render for ``contact.first_name``,
    ``contact.attributes.city | default('x')`` and the like
    (tests/content/test_equivalence.py checks they print what Jinja prints).
    """
    match = _FIELD_EXPR.fullmatch(expr)
    if match is None:
        return None
    field, key, single, double = match.groups()
    default = single if single is not None else (double if double is not None else "")
    if key is None:
        if field not in _CONTACT_FIELDS:
            return None
        return lambda data: getattr(data, field, default)
    if field != "attributes" or hasattr(dict, key):
        return None  # contact.attributes.items is the dict method in Jinja, not a key

    def attribute(data):
        value = data.attributes.get(key, _MISSING)
        return default if value is _MISSING else value

    return attribute


# --- validation --------------------------------------------------------------


_FORBIDDEN_NODES = (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)


def check_template(source, field, env=text_env):
    """Raise ContentError when ``source`` is not a template Herald can run safely."""
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise ContentError(field, exc.message or "syntax error", exc.lineno) from None
    for node in tree.find_all(_FORBIDDEN_NODES):
        raise ContentError(field, "import, include and extends are not available in campaign templates", node.lineno)
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise ContentError(field, f"access to {name!r} is not allowed", node.lineno)
    for node in tree.find_all(nodes.Name):
        if node.name.startswith("_"):
            raise ContentError(field, f"the name {node.name!r} is not allowed", node.lineno)
    try:
        template = env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ContentError(field, exc.message or "syntax error", exc.lineno) from None
    _trial_render(template, field)


TRIAL_SECONDS = 2.0  # a save-time trial render that takes longer is refused


def _trial_render(template, field):
    """Render once for a contact with no fields: an error that does not depend on data
    (``{{ 1 / 0 }}``, a call with wrong arguments) is reported at save, not mid-campaign."""
    sample = {"contact": ContactData("preview@example.com"), "unsubscribe_url": "https://example.invalid/u",
              "view_in_browser_url": "https://example.invalid/v", PREFERENCES_NAME: "https://example.invalid/p"}
    try:
        with render_budget(TRIAL_SECONDS):
            template.render(sample)
    except Exception as exc:  # any error an author can cause; reported, never raised mid-send
        line = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<template>":
                line = tb.tb_lineno
            tb = tb.tb_next
        if isinstance(exc, BudgetExceeded):
            raise ContentError(field, str(exc), line, budget=True) from None
        raise ContentError(field, f"{type(exc).__name__}: {exc}", line) from None


def check_header_text(value, field):
    """A literal header value (subject, names, addresses) must stay on one line."""
    if value and ("\r" in value or "\n" in value):
        raise ContentError(field, "must be a single line (no line breaks)")


def one_line_text(value):
    return " ".join((value or "").split())


def validate_template_row(html_source, text_source, fmt=formats.HTML, layout=None):
    """Errors of a Template's fields, as a list of ContentError.

    ``fmt`` is the template's format and ``layout`` (for Markdown) the Template
    its text goes into: a source that does not compile in its format is an
    error of the ``html`` field, at its line.
    """
    errors = []
    for field, source in (("html", html_source), ("text", text_source)):
        try:
            check_template(source or "", field, html_env if field == "html" else text_env)
        except ContentError as exc:
            errors.append(exc)
    if html_source and not CONTENT_MARKER.search(html_source):
        errors.append(ContentError("html", "the layout needs {{ content }} where the campaign body goes"))
    if text_source and not CONTENT_MARKER.search(text_source):
        errors.append(ContentError("text", "the text layout needs {{ content }} where the campaign text goes"))
    if not errors and fmt != formats.HTML:
        try:
            html_source_of(Template(name="this template", format=fmt, html=html_source, layout=layout), "")
        except ContentError as exc:
            errors.append(exc)
    return errors


def validate_campaign_fields(subject, from_name, html_body, text_body, from_email="", reply_to=""):
    """Errors of a Campaign's content fields, as a list of ContentError."""
    errors = []
    for field, value in (("subject", subject), ("from_name", from_name), ("from_email", from_email), ("reply_to", reply_to)):
        try:
            check_header_text(value, field)
        except ContentError as exc:
            errors.append(exc)
    checks = (("subject", subject, text_env), ("from_name", from_name, text_env),
              ("html_body", html_body, html_env), ("text_body", text_body, text_env))
    for field, source, env in checks:
        try:
            check_template(source or "", field, env)
        except ContentError as exc:
            errors.append(exc)
    return errors


# --- compilation -------------------------------------------------------------


@dataclass
class CompiledContent:
    subject: object
    from_name: object
    html: object
    text: object
    html_source: str
    text_source: str
    static_links: list = dataclass_field(default_factory=list)  # URLs in index order of appearance
    dynamic_links: list = dataclass_field(default_factory=list)  # compiled templates of URLs with expressions
    personal_sources: list = dataclass_field(default_factory=list)  # their sources, in the same order
    inlined: bool = True

    @property
    def text_derived(self):
        """True when the text part is derived per recipient from the HTML (``text`` is a DerivedText)."""
        return isinstance(self.text, DerivedText)


def _protect(source, statements_as_comments):
    """Swap Jinja constructs for inert placeholders; return (text, list of originals)."""
    originals = []

    def swap(match):
        token = match.group(0)
        if token.startswith("{#"):
            return ""
        originals.append(token)
        n = len(originals) - 1
        if token.startswith("{%"):
            return f"<!--HJS{n:05d}Z-->" if statements_as_comments else f"HJS{n:05d}Z"
        return f"HJX{n:05d}Z"

    return _JINJA.sub(swap, source), originals


def _restore(text, originals, comments=True):
    """Put the Jinja constructs back; None when any placeholder went missing or doubled."""
    found = _PLACEHOLDER.findall(text)
    if sorted(int(n) for n in found) != list(range(len(originals))):
        return None
    if comments:
        text = re.sub(r"<!--(HJS\d{5}Z)-->", r"\1", text)
    return _PLACEHOLDER.sub(lambda m: originals[int(m.group(1))], text)


def _inline_css(source):
    protected, originals = _protect(source, statements_as_comments=True)
    try:
        inlined = css_inline.inline(protected, keep_at_rules=True, load_remote_stylesheets=False)
    except (ValueError, css_inline.InlineError):
        return source, False
    restored = _restore(inlined, originals)
    return (restored, True) if restored is not None else (source, False)


def html_to_text(html_text):
    """The readable text of a rendered HTML part: html2text's Markdown-like reading text.

    Links keep their URLs (``[Unsubscribe](https://...)``), images show their
    alt text, tables are flattened. This is the text part Herald derives for a
    recipient from that recipient's HTML; ``DerivedText`` computes the same
    string without converting the whole document per recipient.
    """
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.images_to_alt = True
    converter.ignore_tables = True
    converter.unicode_snob = True
    converter.single_line_break = False
    return converter.handle(html_text).strip() + "\n"


TEXT_UNSUBSCRIBE = "Unsubscribe: {{ unsubscribe_url }}\n"


def with_unsubscribe(text, url):
    """``text`` with the unsubscribe URL appended when it does not carry it already."""
    if url and url not in text:
        return f"{text}\nUnsubscribe: {url}\n"
    return text


# --- the derived text part ---------------------------------------------------
#
# Converting an HTML newsletter with html2text costs milliseconds; doing it for
# each recipient would cut the send rate tenfold. DerivedText renders the
# recipient's HTML with every printed value swapped for a marker word (the
# "skeleton"), converts each distinct skeleton once, and puts the values back
# into the converted text. Statements run with the real values, so conditionals
# and loops take the recipient's branch; the skeleton differs between two
# recipients only where their branches do.
#
# The result equals ``html_to_text`` of the recipient's HTML because a word of a
# value is replaced by a marker only when html2text treats the two alike
# (``_word_kind``): no Markdown that html2text would escape where the word
# stands, no markup, and white space and references kept as they are. A value
# with any other word (and an empty one) goes into the skeleton as it is, which
# is then that much closer to the recipient's HTML; a value unique to each
# recipient there costs a conversion per message. tests/content/test_text_part.py
# checks the equality on every shipped layout and on adversarial templates, for
# fixed and generated contact data; bench/render.py measures the cost.

_TEXT_CACHE_LIMIT = 512
# A printed value is cut into words at white space and at the characters that
# autoescaping turns into references (html2text starts a new chunk of text after
# each). The separators stay as they are; each word becomes a marker of its kind.
_SEPARATORS = re.compile(r"([&<>'\"]|[ \t\n]+)")
_WORD = re.compile(r"[^\s\\\[\]()`{}|&<>'\"]+")  # no character html2text escapes inside links or alt text
_CHUNK_START = re.compile(r"[^\W_]|[@,;:/=%~$]")  # no Markdown html2text escapes at the start of a line
_ALPHA = re.compile(r"[a-zA-Z+]+")
_ABSOLUTE_URL = re.compile(r"[a-zA-Z+]+://")  # html2text's test for an automatic link <url>
_NUMBERED = re.compile(r"\d+\.")
# Constructs that capture output into a value a template can test or transform
# (a filter over a block, a macro's result): markers might leak into logic there,
# so each recipient's skeleton is checked against the real render.
_CAPTURING = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock, nodes.Block)


def _word_kind(word, chunk_start):
    """How html2text sees ``word``: "digits", "alpha", "url" or "other"; None when no marker can stand for it.

    html2text escapes ``1.``, ``-`` and ``+`` at the start of a line or of a
    chunk of text and any backslash before Markdown, escapes ``[]()`` in URLs
    and alt texts, and writes a link whose text equals its absolute URL as
    ``<url>``; a marker of the same kind is treated alike in every one of those.
    """
    if not _WORD.fullmatch(word):
        return None
    if word.isdigit() and word.isascii():
        return "digits"
    if chunk_start and (not _CHUNK_START.match(word) or _NUMBERED.fullmatch(word)):
        return None
    if _ALPHA.fullmatch(word):
        return "alpha"
    return "url" if _ABSOLUTE_URL.match(word) else "other"


_PLAIN_WORD = re.compile(r"[A-Za-z0-9@,;:/=%~$][\w.@%+/:=?~$,;!#*-]*")  # the common value: one word, no reference
_CODES = ["".join(c) for c in itertools.product("abcdefghijklmnopqrstuvwxyz", repeat=3)]


class _Marks:
    """The words printed in one skeleton render, each with its marker."""

    __slots__ = ("letters", "digits", "words", "markers", "index")

    def __init__(self, letters, digits):
        self.letters, self.digits = letters, digits
        self.words, self.markers, self.index = [], {}, {}

    def mark(self, printed):
        """``printed`` with its words swapped for markers, or as it is when some word cannot be."""
        if _PLAIN_WORD.fullmatch(printed) and not (printed[-1] == "." and _NUMBERED.fullmatch(printed)):
            marker = self.markers.get(printed)
            if marker is not None:
                return marker
            if printed.isdigit() and printed.isascii():
                return self._new(printed, "digits")
            if _ALPHA.fullmatch(printed):
                return self._new(printed, "alpha")
            return self._new(printed, "url" if _ABSOLUTE_URL.match(printed) else "other")
        raw = html.unescape(printed)
        if not raw or str(escape(raw)) != printed:
            return printed
        out = []
        chunk_start = True
        for i, token in enumerate(_SEPARATORS.split(raw)):
            if i % 2:  # a separator
                out.append(str(escape(token)))
                # After a reference or a line break a new chunk (or line) starts, and
                # white space at its start does not change that.
                chunk_start = chunk_start or not token.isspace() or "\n" in token
                continue
            if not token:
                continue
            marker = self.markers.get(token)
            if marker is None:
                kind = _word_kind(token, chunk_start)
                if kind is None:
                    return printed
                marker = self._new(token, kind)
            elif chunk_start and _word_kind(token, True) is None:
                return printed
            out.append(marker)
            chunk_start = False
        return "".join(out)

    def _new(self, word, kind):
        n = len(self.words)
        if n >= len(_CODES):
            return word  # beyond any sane template: the skeleton keeps the word itself
        if kind == "digits":
            marker = f"9{self.digits}{n:05d}"
        else:
            marker = f"{'x://' if kind == 'url' else ''}{self.letters}{_CODES[n]}{'q' if kind == 'alpha' else '9'}"
        self.markers[word] = marker
        self.index[word] = n
        self.words.append(word)
        return marker


_skeleton = threading.local()


@pass_eval_context
def _mark_value(eval_ctx, value):
    """Jinja's ``finalize`` for skeleton renders: a printed value becomes its markers.

    (Taking the evaluation context also keeps Jinja from finalizing constants
    once at compile time: each render marks its own values.)
    """
    marks = getattr(_skeleton, "marks", None)
    if not eval_ctx.autoescape:
        return marks.mark(str(value)) if marks is not None else value
    printed = escape(value)
    if marks is None:
        return printed
    out = marks.mark(str(printed))
    # A single-word marker needs no escaping (Jinja's escape of it is cheap); anything else is already escaped.
    return out if out.isalnum() else Markup(out)  # noqa: S704


_skeleton_env = _environment(True)
_skeleton_env.finalize = _mark_value


class DerivedText:
    """The text part of a campaign that has none: per recipient, ``html_to_text`` of that recipient's HTML.

    ``render(context)`` is called like a template's. The HTML is the
    campaign's HTML part as the recipient gets it, before links are rewritten
    for tracking (the text shows where links lead). The unsubscribe URL is
    appended when the HTML does not show it.
    """

    def __init__(self, source):
        self.source = source
        self.template = _skeleton_env.from_string(source)
        self.html = html_env.from_string(source)
        self.checked = any(True for _ in _skeleton_env.parse(source).find_all(_CAPTURING))
        self.letters = self.digits = ""
        while not self.letters or self.letters in source or self.digits in source:
            self.letters = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10))
            self.digits = "".join(secrets.choice("012345678") for _ in range(9))
        self._markers = re.compile(rf"(?:x://)?{self.letters}([a-z]{{3}})[q9]|9{self.digits}(\d{{5}})")
        self._texts = {}
        self.plain = _PlainSource.of(source)
        if self.plain is not None and not all(self._plain_agrees(sample) for sample in _SAMPLE_CONTEXTS):
            self.plain = None

    def render(self, context):
        shape, marks, whole = self.shape(context)
        if whole is not None:
            return whole
        return with_unsubscribe(self.fill(shape, marks), str(context.get("unsubscribe_url") or ""))

    def shape(self, context):
        """(TextShape, marks, None) for this recipient, or (None, None, text) when the text was converted whole.

        The text is ``fill(shape, marks)``, followed by the unsubscribe URL
        unless ``carries`` says it shows it already.
        """
        marks = _Marks(self.letters, self.digits)
        if self.plain is not None:
            marked = self.plain.marked(context, marks)
            if marked is not None:
                shape = self._texts.get(marked)
                if shape is None:
                    shape = self._split(html_to_text(self.plain.join(marked)))
                    if len(self._texts) < _TEXT_CACHE_LIMIT:
                        self._texts[marked] = shape
                return shape, marks, None
            marks = _Marks(self.letters, self.digits)
        skeleton = self._skeleton(context, marks)
        if self.checked:
            real = self.html.render(context)
            if self.fill(self._split(skeleton), marks) != real:
                return None, None, with_unsubscribe(html_to_text(real), str(context.get("unsubscribe_url") or ""))
        shape = self._texts.get(skeleton)
        if shape is None:
            shape = self._split(html_to_text(skeleton))
            if len(self._texts) < _TEXT_CACHE_LIMIT:
                self._texts[skeleton] = shape
        return shape, marks, None

    def _skeleton(self, context, marks):
        _skeleton.marks = marks
        try:
            return self.template.render(context)
        finally:
            _skeleton.marks = None

    def _plain_agrees(self, context):
        marked = self.plain.marked(context, _Marks(self.letters, self.digits))
        return marked is not None and self.plain.join(marked) == self._skeleton(
            context, _Marks(self.letters, self.digits))

    @staticmethod
    def carries(shape, marks, url):
        """True when the text of ``shape`` shows ``url`` (a printed value) without the appended footer."""
        n = marks.index.get(url)
        return n is not None and n in shape.uses

    def _split(self, text):
        pieces = []
        last = 0
        for match in self._markers.finditer(text):
            pieces += [text[last:match.start()], _marker_index(match)]
            last = match.end()
        pieces.append(text[last:])
        return TextShape(pieces)

    @staticmethod
    def fill(shape, marks):
        pieces = shape.pieces
        if len(pieces) == 1:
            return pieces[0]
        words = marks.words
        return "".join([p if p.__class__ is str else words[p] for p in pieces])


_HOLE = re.compile(r"\{\{(.*?)\}\}", re.S)
_URL_NAMES = ("unsubscribe_url", "view_in_browser_url")
_SAMPLE_CONTEXTS = [
    {"contact": ContactData(), "unsubscribe_url": "https://example.invalid/t/u/1-a", "view_in_browser_url": ""},
    {"contact": ContactData("a@example.com", "Zoë", "O'Neil & <Co>", {"x": "=3D", "n": 3}),
     "unsubscribe_url": "https://example.invalid/t/u/2-b", "view_in_browser_url": "https://example.invalid/t/v/2-c"},
]


class _PlainSource:
    """A source of literal text and ``{{ expressions }}`` only, whose skeleton is made without rendering it.

    Plain look-ups are read directly (``field_getter``), the other expressions
    in one small render; DerivedText uses it only after it made the very
    skeleton of Jinja's render for sample contacts. The marked values, a short
    tuple, key the converted text instead of the whole skeleton.
    """

    def __init__(self, literals, getters, rest):
        self.literals, self.getters, self.rest = literals, getters, rest
        self.n_rest = sum(1 for g in getters if g is None)

    @classmethod
    def of(cls, source):
        if "{%" in source or "{#" in source or "\x00" in source:
            return None
        pieces = _HOLE.split(source)
        getters, rest = [], []
        for expr in pieces[1::2]:
            if expr.startswith("-") or expr.endswith("-"):
                return None  # white space control changes the literals around it
            getter = expr.strip() if expr.strip() in _URL_NAMES else field_getter(expr)
            if getter is None:
                rest.append(expr)
            getters.append(getter)
        try:
            template = html_env.from_string("".join("{{" + e + "}}\x00" for e in rest)) if rest else None
        except TemplateSyntaxError:
            return None
        return cls(pieces[0::2], getters, template)

    def marked(self, context, marks):
        """The printed values of ``context``, marked, in order; None when they cannot be told apart."""
        values = ()
        if self.rest is not None:
            values = self.rest.render(context).split("\x00")
            if len(values) != self.n_rest + 1:
                return None
        values = iter(values)
        data = context.get("contact")
        if not isinstance(data, ContactData):
            return None  # the look-ups read a ContactData; anything else goes through Jinja
        out = []
        for getter in self.getters:
            if getter is None:
                printed = next(values)
            elif getter.__class__ is str:
                value = context.get(getter, "")
                printed = value if value.__class__ is str and _PLAIN_WORD.fullmatch(value) else str(escape(value))
            else:
                printed = str(escape(getter(data)))
            out.append(marks.mark(printed) if printed else "")
        return tuple(out)

    def join(self, marked):
        literals = self.literals
        parts = [literals[0]]
        for i, value in enumerate(marked):
            parts += [value, literals[i + 1]]
        return "".join(parts)


class TextShape:
    """A converted skeleton: literal text and word indexes, alternating ([str, int, str, ..., str]).

    ``plan`` belongs to the message builder, which caches its encoding here.
    """

    __slots__ = ("pieces", "uses", "plan")

    def __init__(self, pieces):
        self.pieces = pieces
        self.uses = frozenset(pieces[1::2])
        self.plan = None


def _marker_index(match):
    letters, digits = match.groups()
    if digits is not None:
        return int(digits)
    a, b, c = (ord(x) - 97 for x in letters)
    return (a * 26 + b) * 26 + c


def _track(source, track_clicks, track_opens):
    """Rewrite hrefs to the click callables and add the open pixel; return (source, static, dynamic)."""
    static, dynamic, index_of = [], [], {}
    if track_clicks:

        def rewrite(match):
            prefix, quote, value = match.groups()
            stripped = value.strip()
            name = _EXPR_NAME.match(stripped)
            if name and name.group(1) in UNTRACKED_NAMES:
                return match.group(0)
            if _JINJA.search(stripped):
                if not (stripped.lower().startswith(("http://", "https://", "{{"))):
                    return match.group(0)
                dynamic.append(stripped)
                return f"{prefix}{quote}{{{{ {LINK_FN}({len(dynamic) - 1}) }}}}{quote}"
            url = html.unescape(stripped)
            if not url.lower().startswith(("http://", "https://")):
                return match.group(0)
            if url not in index_of:
                index_of[url] = len(static)
                static.append(url)
            return f"{prefix}{quote}{{{{ {CLICK_FN}({index_of[url]}) }}}}{quote}"

        source = _HREF.sub(rewrite, source)
    if track_opens:
        pixel = (f'<img src="{{{{ {OPEN_VAR} }}}}" width="1" height="1" alt="" '
                 'style="display:block;width:1px;height:1px;border:0">')
        parts = _BODY_END.split(source)
        if len(parts) > 1:
            source = "</body>".join(parts[:-1]) + pixel + "</body>" + parts[-1]
        else:
            source = source + pixel
    return source, static, dynamic


def compile_content(campaign, track=True):
    """Compile a campaign's templates once; raises ContentError on a bad template."""
    layout = campaign.template if campaign.template_id else None
    # Line breaks in literal header fields are refused at save; one that got
    # stored anyway is folded into one line at send time, never an error here.
    errors = validate_campaign_fields(one_line_text(campaign.subject), one_line_text(campaign.from_name),
                                      campaign.html_body, campaign.text_body)
    if layout is not None:
        errors += validate_template_row(layout.html, layout.text)  # its format is checked as it compiles
    if errors:
        raise errors[0]
    html_source = html_source_of(layout, campaign.html_body or "")
    text_source = join_layout(layout.text if layout else "", campaign.text_body) if campaign.text_body else ""
    if text_source and "unsubscribe_url" not in meta.find_undeclared_variables(text_env.parse(text_source)):
        text_source = text_source.rstrip("\n") + "\n\n" + TEXT_UNSUBSCRIBE
    inlined_ok = True
    if html_source.strip():
        html_source, inlined_ok = _inline_css(html_source)
    if html_source.strip():
        tracked, static, dynamic = _track(html_source, track and campaign.track_clicks, track and campaign.track_opens)
    else:
        tracked, static, dynamic = "", [], []
    try:
        if text_source or not html_source.strip():
            text = text_env.from_string(text_source)
        else:
            text = DerivedText(html_source)
        return CompiledContent(
            subject=text_env.from_string(campaign.subject or ""),
            from_name=text_env.from_string(campaign.from_name or ""),
            html=html_env.from_string(tracked),
            text=text,
            html_source=tracked,
            text_source=text_source,
            static_links=static,
            dynamic_links=[html_env.from_string(s) for s in dynamic],
            personal_sources=dynamic,
            inlined=inlined_ok,
        )
    except TemplateSyntaxError as exc:
        raise ContentError("html_body", exc.message or "syntax error", exc.lineno) from None


# --- links -------------------------------------------------------------------


def register_links(campaign_id, urls, personal=False):
    """Indexes of ``urls`` among the campaign's CampaignLinks, creating rows as needed.

    Idempotent: the same URLs in the same order get the same indexes; URLs
    already known keep theirs. ``personal``: the URLs are sources of personal
    links (rendered per recipient at click time), kept apart from literal ones.
    """
    known = {}
    rows = CampaignLink.objects.filter(campaign_id=campaign_id, personal=personal).order_by("index")
    for url, index in rows.values_list("url", "index"):
        known.setdefault(url, index)
    missing = [u for u in dict.fromkeys(urls) if u not in known]
    for url in missing:
        known[url] = _create_link(campaign_id, url, personal)
    return [known[u] for u in urls]


def _create_link(campaign_id, url, personal):
    """Append a link under a lock on the campaign row, so concurrent workers agree on indexes.

    Runs when a campaign is compiled (once per process), never per message.
    """
    for _attempt in range(5):
        try:
            with transaction.atomic():
                Campaign.objects.select_for_update().filter(pk=campaign_id).first()
                row = CampaignLink.objects.filter(campaign_id=campaign_id, url=url, personal=personal).order_by("index").first()
                if row is not None:
                    return row.index
                top = CampaignLink.objects.filter(campaign_id=campaign_id).aggregate(m=Max("index"))["m"]
                index = 0 if top is None else top + 1
                CampaignLink.objects.create(campaign_id=campaign_id, index=index, url=url, personal=personal)
                return index
        except IntegrityError:
            continue
    raise RuntimeError(f"could not register link {url!r} for campaign {campaign_id}")


def campaign_links(campaign):
    """The campaign's tracked links as (index, url), compiling it first so its links are listed.

    A personal link is listed by its source (``https://example.com/u/{{ contact.attributes.plan }}``).
    """
    content = compile_content(campaign)
    register_links(campaign.pk, content.static_links)
    register_links(campaign.pk, content.personal_sources, personal=True)
    return list(CampaignLink.objects.filter(campaign_id=campaign.pk).order_by("index").values_list("index", "url"))


# --- what the text part cannot show ------------------------------------------

# Attributes that only style or structure the HTML: a value there is not content.
_PRESENTATIONAL = {"style", "class", "id", "width", "height", "align", "valign", "bgcolor", "background-color",
                   "border", "cellpadding", "cellspacing", "color", "dir", "lang", "role", "target", "rel", "type",
                   "name", "charset", "content", "http-equiv", "face", "size", "span", "colspan", "rowspan", "nowrap",
                   "hspace", "vspace", "frame", "rules", "xmlns", "aria-hidden", "media", "scope", "headers"}
_INVISIBLE = {"head", "title", "style", "script", "template"}
_LOST_MARK = re.compile(r"herald(\d{5})lost", re.I)


class _Lost(HTMLParser):
    """Where each marked expression of an HTML source sits, and whether a text part can show it from there."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.hidden = 0
        self.lost = {}  # expression number -> where

    def handle_starttag(self, tag, attrs):
        self._attributes(tag, attrs)
        if tag in _INVISIBLE:
            self.hidden += 1

    def handle_startendtag(self, tag, attrs):
        self._attributes(tag, attrs)

    def handle_endtag(self, tag):
        if tag in _INVISIBLE and self.hidden:
            self.hidden -= 1

    def _attributes(self, tag, attrs):
        if self.hidden:
            return
        for name, value in attrs:
            for n in _LOST_MARK.findall(name):
                self.lost.setdefault(int(n), f"inside the <{tag}> tag")
            shown = name == "href" or (tag == "img" and name == "alt")
            if shown or name in _PRESENTATIONAL or name.startswith("data-"):
                continue
            for n in _LOST_MARK.findall(value or ""):
                self.lost.setdefault(int(n), f"in the {name} of <{tag}>")


def campaign_text_warnings(layout, html_body, text_body):
    """``text_part_warnings`` for a campaign's body and its layout (a Template or None), each naming its lines."""
    if text_body and text_body.strip():
        return text_part_warnings("", join_layout(layout.text if layout else "", text_body))
    if layout is not None and (layout.format or formats.HTML) != formats.HTML:
        try:
            return text_part_warnings(html_source_of(layout, html_body), "", "The compiled HTML")
        except ContentError:
            return []
    warnings = text_part_warnings(html_body, "", "HTML body")
    if layout is not None:
        warnings += text_part_warnings(CONTENT_MARKER.sub("", layout.html or "", count=1), "", f"Layout {layout.name!r}")
    return warnings


def text_part_warnings(html_source, text_source, where="HTML"):
    """What the text part will not carry that the HTML part shows, as sentences for a person.

    With a text body: only whether it has the unsubscribe link (Herald then
    appends one). Without: each expression the HTML shows where no text can
    (an image's source, a tooltip), with its line. Expressions in the head, in
    comments and in style attributes show nowhere, so they are not reported.
    """
    if text_source and text_source.strip():
        try:
            names = meta.find_undeclared_variables(text_env.parse(text_source))
        except TemplateSyntaxError:
            return []
        if "unsubscribe_url" not in names:
            return ["The text part has no {{ unsubscribe_url }}: Herald adds an unsubscribe line at its end."]
        return []
    if not (html_source or "").strip():
        return []
    expressions = []

    def swap(match):
        token = match.group(0)
        if not token.startswith("{{"):
            return "\n" * token.count("\n")
        expressions.append((token, html_source.count("\n", 0, match.start()) + 1))
        return f"herald{len(expressions) - 1:05d}lost"

    parser = _Lost()
    parser.feed(_JINJA.sub(swap, html_source))
    parser.close()
    warnings = []
    for n, place in sorted(parser.lost.items()):
        token, line = expressions[n]
        warnings.append(f"{where}, line {line}: {' '.join(token.split())} is {place}, which the text part cannot show.")
    return warnings


# --- preview -----------------------------------------------------------------


def missing_variables(campaign, contact_data, extra=None):
    """Names the chosen contact lacks, in the order the templates use them."""
    layout = campaign.template if campaign.template_id else None
    context = {"contact": contact_data, "unsubscribe_url": "", "view_in_browser_url": "", PREFERENCES_NAME: "",
               CLICK_FN: lambda i: "", LINK_FN: lambda i: "", OPEN_VAR: ""}
    context.update(extra or {})
    sources = [(_preview_text_env, campaign.subject), (_preview_text_env, campaign.from_name),
               (_preview_html_env, join_layout(layout.html if layout else "", campaign.html_body or "")),
               (_preview_text_env, join_layout(layout.text if layout else "", campaign.text_body or ""))]
    _RecordingUndefined.missing.names = []
    _RecordingUndefined.missing.attributes = contact_data.attributes
    try:
        for env, source in sources:
            if source:
                try:
                    env.from_string(source).render(context)
                except (TemplateError, SecurityError):
                    continue
        return list(dict.fromkeys(_RecordingUndefined.missing.names))
    finally:
        _RecordingUndefined.missing.names = None
        _RecordingUndefined.missing.attributes = None
