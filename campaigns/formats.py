"""The formats a template is written in, compiled to HTML with its Jinja2 kept for later.

A template is HTML, Markdown (rendered into a layout) or MJML (compiled to
responsive HTML by MRML, the Rust implementation of MJML; nothing runs on
Node). Compiling costs milliseconds, so it happens once per campaign (at the
start, when its content is frozen: campaigns.models.Campaign.freeze_content),
never per message: Jinja constructs are swapped for inert placeholders, the
source is compiled, and the constructs are put back, leaving one Jinja
template rendered per recipient as an HTML one would be. A value printed by
Jinja is therefore never read as Markdown or MJML (``*`` in a name stays a
star), and HTML-escaped as in any HTML template.

Errors say what and where: the line of the source, the MJML element.
This module also joins a layout and a body (``html_source_of``) and holds
ContentError, so that models (which freeze compiled content) need no
rendering import.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import mrml
from django.conf import settings
from markdown_it import MarkdownIt

HTML, MARKDOWN, MJML = "html", "markdown", "mjml"
CHOICES = [(HTML, "HTML"), (MARKDOWN, "Markdown"), (MJML, "MJML")]

CONTENT_MARKER = re.compile(r"\{\{-?\s*content\s*-?\}\}")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PLACEHOLDER = re.compile(r"HJ([XS])(\d{5})Z")
_COMMENTED = re.compile(r"<!--\s*(HJS\d{5}Z)\s*-->")


class ContentError(ValueError):
    """A template problem, naming the field and (when known) the line.

    ``budget`` is true when the template went over a resource budget (see
    campaigns.sandbox) rather than failing outright.
    """

    def __init__(self, field, message, line=None, budget=False):
        self.field = field
        self.line = line
        self.message = message
        self.budget = budget
        where = f"{field}, line {line}" if line else field
        super().__init__(f"{where}: {message}")


class FormatError(ValueError):
    """A source that does not compile: ``message`` says what, ``line`` (1-based) where, when known."""

    def __init__(self, message, line=None):
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


def _protect(source, inline_statements_bare=False):
    """``source`` with each Jinja construct swapped for a placeholder.

    Statements become HTML comments, which Markdown and MJML keep where they
    stand; with ``inline_statements_bare`` (Markdown) a statement among other
    text on its line becomes a bare word instead, so the line stays a paragraph.
    """
    originals = []

    def swap(match):
        token = match.group(0)
        if token.startswith("{#"):
            return "\n" * token.count("\n")  # a comment prints nothing; its lines still count
        originals.append(token)
        n = len(originals) - 1
        # Line breaks inside a construct are kept beside it, so that lines still match the source.
        pad = "\n" * token.count("\n")
        if not token.startswith("{%"):
            return f"HJX{n:05d}Z{pad}"
        text = match.string
        start = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.end())
        alone = not _JINJA.sub("", text[start:end if end >= 0 else len(text)]).strip()
        if inline_statements_bare and not alone:
            return f"HJS{n:05d}Z{pad}"
        return f"<!--HJS{n:05d}Z-->{pad}"

    return _JINJA.sub(swap, source), originals


def _restore(compiled, originals, what):
    """Put the constructs back. An expression may have been copied (MJML repeats a title); a statement may not."""
    compiled = _COMMENTED.sub(r"\1", compiled)
    seen = {}
    for _kind, n in _PLACEHOLDER.findall(compiled):
        seen[int(n)] = seen.get(int(n), 0) + 1
    for n, token in enumerate(originals):
        count = seen.get(n, 0)
        if count == 0:
            raise FormatError(f"{what} dropped {' '.join(token.split())}: put it inside text, an attribute or "
                              "mj-raw, where the compiled HTML keeps it")
        if count > 1 and token.startswith("{%"):
            raise FormatError(f"{what} repeats {' '.join(token.split())}: put it inside text or mj-raw")
    return _PLACEHOLDER.sub(lambda m: originals[int(m.group(2))], compiled)


# --- Markdown -------------------------------------------------------------------

# CommonMark with tables and strikethrough; HTML written in the Markdown passes through as it
# is (the template's authors are the operators, who may write HTML templates anyway).
_markdown = MarkdownIt("commonmark", {"html": True, "typographer": False}).enable(["table", "strikethrough"])


def markdown_to_html(source):
    """Markdown with Jinja2 in it, as an HTML fragment with the same Jinja2."""
    protected, originals = _protect(source, inline_statements_bare=True)
    return _restore(_markdown.render(protected), originals, "Markdown")


# --- MJML -------------------------------------------------------------------------

# MJML 4's elements: anything else named mj-* is a typo MRML would pass through as an unknown tag.
MJML_TAGS = {
    "mjml", "mj-head", "mj-body", "mj-attributes", "mj-all", "mj-class", "mj-breakpoint", "mj-font", "mj-html-attributes",
    "mj-html-attribute", "mj-selector", "mj-preview", "mj-style", "mj-title", "mj-accordion", "mj-accordion-element",
    "mj-accordion-title", "mj-accordion-text", "mj-button", "mj-carousel", "mj-carousel-image", "mj-column",
    "mj-divider", "mj-group", "mj-hero", "mj-image", "mj-navbar", "mj-navbar-link", "mj-raw", "mj-section",
    "mj-social", "mj-social-element", "mj-spacer", "mj-table", "mj-text", "mj-wrapper", "mj-include",
}
# Inside these, content is HTML (or CSS) that MJML copies as it is: its tags are not MJML's to balance.
_RAW_CONTENT = {"mj-text", "mj-button", "mj-table", "mj-raw", "mj-style", "mj-navbar-link", "mj-social-element",
                "mj-accordion-title", "mj-accordion-text", "mj-title", "mj-preview"}
_TAG = re.compile(r"<(/?)(mj[\w-]*)\b[^>]*?(/?)>", re.S)
_POSITION = re.compile(r"at position (\d+):(\d+)")
_RENDER_OPTIONS = mrml.RenderOptions(fonts={})  # no web font fetched unless the template asks with mj-font
_PARSER_OPTIONS = mrml.ParserOptions(include_loader=mrml.noop_loader())  # mj-include reads no file and no URL


def _line(source, offset):
    return source.count("\n", 0, offset) + 1


def check_mjml_structure(source):
    """Raise FormatError for an unknown element or an unbalanced tag, naming it and its line."""
    stack = []
    for match in _TAG.finditer(source):
        closing, name, self_closing = match.groups()
        line = _line(source, match.start())
        if stack and stack[-1][0] in _RAW_CONTENT and not (closing and name == stack[-1][0]):
            continue
        if name not in MJML_TAGS:
            raise FormatError(f"<{name}> is not an MJML element", line)
        if name == "mj-include":
            raise FormatError("mj-include is not available: a template is one source", line)
        if self_closing:
            continue
        if not closing:
            stack.append((name, line))
            continue
        if not stack:
            raise FormatError(f"</{name}> closes no open element", line)
        open_name, open_line = stack.pop()
        if open_name != name:
            if any(name == n for n, _ in stack):  # it closes an outer element: this one was left open
                raise FormatError(f"<{open_name}> is not closed before </{name}>", open_line)
            raise FormatError(f"</{name}> found where </{open_name}> should be", line)
    if stack:
        name, line = stack[-1]
        raise FormatError(f"<{name}> is never closed", line)
    if not re.match(r"\s*<mjml[\s>]", source):
        raise FormatError("an MJML template starts with <mjml>", 1)


def mjml_to_html(source):
    """MJML with Jinja2 in it, as a responsive HTML document with the same Jinja2."""
    protected, originals = _protect(source)
    check_mjml_structure(protected)
    try:
        output = mrml.to_html(protected, parser_options=_PARSER_OPTIONS, render_options=_RENDER_OPTIONS)
    except OSError as exc:  # MRML reports every parse error as OSError
        message = str(exc)
        position = _POSITION.search(message)
        line = _line(protected, int(position.group(1))) if position else None
        raise FormatError(f"MJML: {_POSITION.sub('', message).strip()}", line) from None
    except BaseException as exc:
        # A panic in the Rust code arrives as pyo3's PanicException (a BaseException): an error of this source.
        if type(exc).__name__ != "PanicException":
            raise
        raise FormatError("MJML: the compiler could not read this source") from None
    return _restore(output.content, originals, "MJML")


def to_html(source, fmt):
    """``source`` in format ``fmt`` as HTML, Jinja2 kept. Raises FormatError."""
    # Browsers post a textarea's lines ending in CRLF, which MRML does not parse inside mj-head.
    source = source.replace("\r\n", "\n")
    if fmt == MARKDOWN:
        return markdown_to_html(source)
    if fmt == MJML:
        return mjml_to_html(source)
    return source


# --- a layout and a body, compiled ---------------------------------------------


def join_layout(layout, body):
    if not layout:
        return body
    return CONTENT_MARKER.sub(lambda _m: body, layout, count=1)


DEFAULT_LAYOUT = Path(settings.BASE_DIR) / "templates" / "email" / "default_layout.html"


@dataclass
class Layout:
    """What compiling reads of a layout: a campaigns.models.Template, or the shipped default layout."""

    name: str
    html: str
    format: str = HTML
    layout: object = None
    layout_id: int | None = None


def default_layout():
    """The shipped layout a Markdown template goes into when it names none."""
    html_text = DEFAULT_LAYOUT.read_text(encoding="utf-8") if DEFAULT_LAYOUT.exists() else "{{ content }}"
    return Layout(name="the default layout", html=html_text)


def html_source_of(layout, body, body_field="html_body"):
    """The campaign's whole HTML source: ``body`` put into ``layout`` (a Template or None) and compiled.

    The body is written in the layout's format; Markdown is rendered into its
    own layout. The result is HTML with the Jinja2 still to render. A source
    that does not compile raises ContentError naming the body or the template
    and the line there.
    """
    if layout is None:
        return body
    fmt = layout.format or HTML
    joined = join_layout(layout.html, body)
    if fmt == HTML:
        return joined
    try:
        compiled = to_html(joined, fmt)
    except FormatError as exc:
        raise _located(exc, layout, body, body_field) from None
    if fmt != MARKDOWN:
        return compiled
    outer = layout.layout if layout.layout_id else default_layout()
    if (outer.format or HTML) == MARKDOWN:
        raise ContentError("layout", f"{outer.name!r} is Markdown: a Markdown template goes into an HTML or MJML one")
    try:
        return html_source_of(outer, compiled, body_field)
    except ContentError as exc:
        raise ContentError("layout", f"{outer.name!r}: {exc}") from None


def _located(exc, layout, body, body_field):
    """A compile error of layout and body joined, as the ContentError of the one it is in, at its line there."""
    marker = CONTENT_MARKER.search(layout.html or "")
    if exc.line is None or marker is None:
        return ContentError("html", exc.message, exc.line)
    before = layout.html.count("\n", 0, marker.start())
    body_lines = body.count("\n")
    if exc.line <= before:
        return ContentError("html", exc.message, exc.line)
    if exc.line <= before + body_lines + 1 and body:
        return ContentError(body_field, exc.message, exc.line - before)
    return ContentError("html", exc.message, exc.line - body_lines)


def check_body_format(layout, body):
    """Errors of a campaign body written in its layout's format (empty for HTML), as a list of ContentError."""
    if layout is None or (layout.format or HTML) == HTML or not body:
        return []
    try:
        html_source_of(layout, body)
    except ContentError as exc:
        return [exc]
    return []
