"""The Jinja2 sandbox campaign templates run in, with resource budgets.

Jinja's ImmutableSandboxedEnvironment keeps authors away from Python
internals and from changing the objects they are given; it does nothing about
a template that asks for a billion characters (``'x'|center(900000000)``) or
for ten billion loop turns. Here every render runs under a ``Budget``:

* output: at most ``HERALD_TEMPLATE_MAX_OUTPUT`` characters (2 MB) are
  printed per render, or per message at send time, where the engine opens one
  budget for all the renders of a message;
* loops: at most ``HERALD_TEMPLATE_MAX_LOOP`` loop turns and macro calls in
  total (100,000), counted by a call the code generator puts in every loop;
* values: no value a template builds (a string, a list, a number) may be
  larger than the output budget, counting a list by what it prints as (a
  list of two references to a list of two ... prints as terabytes), and the
  memory of the new values built in one render adds up to at most
  ``BUILD_FACTOR`` times the output budget. Operations that multiply sizes
  (``center``, ``ljust``, format widths, ``*``, ``**``, ``+``, ``~``,
  ``replace``, ``indent``, ``join``, ...) check the size of their result
  *before* making it; every filter, method and operator checks what it
  returned;
* time: a wall-clock deadline (``RENDER_SECONDS``, or what the caller asks
  for), checked in the same loop and value hooks, so a render that spins
  stops without threads or signals. One operation on values within the caps
  (sorting 100,000 items) runs to its end; at send time the Celery task's
  soft time limit stops whatever the hooks do not see.

A render that goes over a budget raises ``BudgetExceeded`` with a message
that names the budget, e.g. "template output exceeds 2 MB
(HERALD_TEMPLATE_MAX_OUTPUT)". The checks are a few integer operations per
loop turn, printed value and filter call, so a normal template renders at
the same speed (bench/render.py).

Filters are never evaluated while a template is compiled (Jinja folds
constant expressions, which would run ``'x'|center(900000000)`` inside
``from_string``): outside a render they refuse, and Jinja leaves them for the
render, where the budget applies.
"""

import contextvars
import re
import sys
import time
import types
from functools import update_wrapper

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter, sync_do_join
from jinja2.runtime import Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, _mutable_spec, is_internal_attribute
from jinja2.utils import Namespace, pass_environment, pass_eval_context
from markupsafe import EscapeFormatter, Markup, escape

BUILD_FACTOR = 8  # new text a render may build, as a multiple of the output budget
RENDER_SECONDS = 2.0  # wall-clock budget of one render unless the caller gives another
MAX_INT_DIGITS = 4300  # Python's own limit for printing an int (sys.int_info.str_digits_check_threshold)
MAX_INT_BITS = int(MAX_INT_DIGITS * 3.33)


class BudgetExceeded(SecurityError):
    """A render went over one of its budgets; the message names it."""


class _Unbudgeted(Exception):
    """A filter called outside a render (Jinja folding constants at compile time)."""


def _size(n):
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n:,} characters"


_limits = None  # (max output, max loop), read once: a Budget is made for every render


def _read_limits():
    global _limits
    _limits = (settings.HERALD_TEMPLATE_MAX_OUTPUT, settings.HERALD_TEMPLATE_MAX_LOOP)
    return _limits


@receiver(setting_changed)
def _forget_limits(setting, **kwargs):
    global _limits
    if setting.startswith("HERALD_TEMPLATE_"):
        _limits = None


def max_loop():
    return (_limits or _read_limits())[1]


_MUTATING = frozenset().union(*(names for _types, names in _mutable_spec))
_ITEMS = type({}.items())
_CONTAINERS = (list, tuple, dict, set, frozenset)
_VIEWS = (type({}.keys()), type({}.values()), _ITEMS)
_WEIGHED = frozenset((*_CONTAINERS, *_VIEWS, Namespace))
_TEXTS = frozenset((str, Markup, bytes))
_INTS = frozenset((int, bool))
_MEASURED = frozenset((*_TEXTS, *_CONTAINERS, *_VIEWS, int))


class Budget:
    """What one render (or one message's renders) may still spend."""

    __slots__ = ("max_value", "output", "build", "loops", "deadline", "seconds", "weights", "turns")

    def __init__(self, seconds=RENDER_SECONDS):
        self.max_value, self.loops = _limits or _read_limits()
        self.output = self.max_value
        self.build = self.max_value * BUILD_FACTOR
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds if seconds else None
        self.weights = {}  # id -> (container, weight): containers seen in this render
        self.turns = 0

    # --- the budgets -----------------------------------------------------------

    def over_output(self):
        return BudgetExceeded(f"template output exceeds {_size(self.max_value)} (HERALD_TEMPLATE_MAX_OUTPUT)")

    def tick(self):
        """One loop turn or macro call."""
        self.loops -= 1
        if self.loops < 0:
            raise BudgetExceeded(f"more than {max_loop():,} loop iterations (HERALD_TEMPLATE_MAX_LOOP)")
        self.turns += 1
        if not self.turns & 255:
            self.check_time()

    def check_time(self):
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExceeded(f"template took longer than {self.seconds:g} s to render")

    def fits(self, size, what):
        """Refuse to build a value of ``size`` characters (or items), before building it."""
        if size > self.max_value:
            raise BudgetExceeded(f"{what} would make a value of {size:,} characters; a template value may have"
                                 f" at most {_size(self.max_value)} (HERALD_TEMPLATE_MAX_OUTPUT)")

    def spend(self, size):
        """``size`` bytes of new values (their memory, as sys.getsizeof tells it)."""
        self.build -= size
        if self.build < 0:
            raise BudgetExceeded(f"template builds more than {_size(self.max_value * BUILD_FACTOR)} of values"
                                 f" ({BUILD_FACTOR} × HERALD_TEMPLATE_MAX_OUTPUT)")
        self.turns += 1
        if not self.turns & 255 or size > 65536:
            self.check_time()

    def took(self, value, what, given=None):
        """A value a filter, method or operator returned: it must fit, and its memory counts
        (unless it is ``given``, the value it was called on, handed back as it was)."""
        t = type(value)
        if value is given or t not in _MEASURED:
            return value
        if t is int:
            self.check_int(value, what)
        else:
            size = len(value) if t is str or t is Markup or t is bytes else self.weigh(value)
            if size > self.max_value:
                raise BudgetExceeded(f"{what} made a value of {size:,} characters; a template value may have"
                                     f" at most {_size(self.max_value)} (HERALD_TEMPLATE_MAX_OUTPUT)")
        self.spend(sys.getsizeof(value))
        return value

    def check_int(self, value, what):
        if value.bit_length() > MAX_INT_BITS:
            raise BudgetExceeded(f"{what} would make a number of more than {MAX_INT_DIGITS:,} digits")

    # --- sizes -------------------------------------------------------------------

    def weigh(self, value):
        """About how many characters ``value`` prints as, counting shared parts each time they appear.

        Containers can share parts (``[a, a]`` of ``[s, s]`` ...), so a list of
        a few items can print as terabytes. The weights of nested and large
        containers are kept for the render, which makes weighing a nest of
        shared lists linear in the number of distinct lists.
        """
        t = type(value)
        if t is str or t is Markup or t is bytes:
            return len(value)
        if t is int:
            return value.bit_length() // 3 + 1
        if t not in _WEIGHED:
            return 8
        hit = self.weights.get(id(value))
        if hit is not None:
            return hit[1]
        if t is dict:
            pairs = value.items()
        elif t is Namespace:
            pairs = object.__getattribute__(value, "_Namespace__attrs").items()
        elif t is _ITEMS:
            pairs = value
        else:
            pairs = None
        weight, nested, weigh = 2, False, self.weigh
        if pairs is None and t is not Namespace:
            # Flat lists of text or numbers, weighed at C speed.
            kinds = set(map(type, value))
            if kinds <= _TEXTS:
                return self._keep(value, 2 + 2 * len(value) + sum(map(len, value)))
            if kinds <= _INTS and value:
                widest = max(max(value), -min(value))
                return self._keep(value, 2 + len(value) * (3 + widest.bit_length() // 3))
        if pairs is not None:
            for k, v in pairs:
                weight += weigh(k) + weigh(v) + 4
                nested = nested or type(v) in _WEIGHED
        else:
            for item in value:
                weight += weigh(item) + 2
                nested = nested or type(item) in _WEIGHED
        return self._keep(value, weight) if nested else weight

    def _keep(self, value, weight):
        if len(value) >= 64 or weight > 65536:
            self.weights[id(value)] = (value, weight)  # the reference keeps the id from being reused
        return weight

    def built(self, value):
        """A list, tuple or dict literal of the template."""
        weight = self.weigh(value)
        if weight > self.max_value:
            raise BudgetExceeded(f"a list or dict of {weight:,} characters; a template value may have"
                                 f" at most {_size(self.max_value)} (HERALD_TEMPLATE_MAX_OUTPUT)")
        self.spend(sys.getsizeof(value))
        return value


_current = contextvars.ContextVar("herald_template_budget", default=None)


def current():
    """The budget of the render in progress, or a fresh one (per-value caps still hold)."""
    return _current.get() or Budget(None)


class _Scope:
    __slots__ = ("seconds", "token")

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        self.token = _current.set(Budget(self.seconds))

    def __exit__(self, *exc):
        _current.reset(self.token)


def render_budget(seconds=RENDER_SECONDS):
    """``with render_budget():`` runs the renders inside under one new budget (one message, one trial render)."""
    return _Scope(seconds)


# --- checks of operations that multiply sizes -------------------------------------

_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?[a-zA-Z%]?", re.S)


def _check_printf(b, fmt, args):
    """``fmt % args``: widths, precisions and the values it takes in must fit."""
    size = len(fmt)
    mapping = args if isinstance(args, dict) else None
    positional = args if isinstance(args, tuple) else (args,)
    for key, width, precision, _conv in _PRINTF.findall(fmt):
        for number in (width, precision):
            if number.isdigit():
                size += int(number)
        if mapping is not None and key:
            size += b.weigh(mapping.get(key))
    if "*" in fmt:
        size += sum(abs(a) for a in positional if type(a) is int)
    if mapping is None:
        size += sum(b.weigh(a) for a in positional)
    b.fits(size, "this % format")


class _Formatter(SandboxedFormatter):
    """str.format in the sandbox, with every field's width and size counted before it is made."""

    def __init__(self, env, budget, **kwargs):
        super().__init__(env, **kwargs)
        self.budget = budget
        self.size = 0

    def format_field(self, value, format_spec):
        match = _SPEC.fullmatch(format_spec)
        width = int(match.group(1) or 0) if match else 0
        precision = int(match.group(2) or 0) if match else 0
        self.size += max(width, self.budget.weigh(value)) + precision
        if self.size > self.budget.max_value or not match and len(format_spec) > 20:
            self.budget.fits(max(self.size, len(format_spec)), f"format spec {format_spec[:20]!r}")
        return super().format_field(value, format_spec)


class _EscapeFormatter(_Formatter, EscapeFormatter):
    pass


def _replaced_size(s, old, new, count):
    n = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        n = min(n, count)
    return len(s) + n * max(len(new) - len(old), 0)


def _lines(s):
    return s.count("\n") + 1


# Methods of str, bytes and int that can make a value much larger than their
# inputs, checked with the arguments they were given: name -> size of result.
def _m_pad(s, width=0, *_fill):
    return width if type(width) is int else 0


def _m_expandtabs(s, tabsize=8):
    return len(s) + s.count("\t" if isinstance(s, str) else b"\t") * max(tabsize, 0)


def _m_replace(s, old, new, count=-1):
    return _replaced_size(s, old, new, count)


def _m_translate(s, table, *_delete):
    if isinstance(table, dict):
        longest = max((len(v) for v in table.values() if isinstance(v, str | bytes)), default=1)
        return len(s) * max(longest, 1)
    return len(s)


def _m_to_bytes(n, length=1, *_args, **_kwargs):
    return length


_METHOD_SIZES = {"center": _m_pad, "ljust": _m_pad, "rjust": _m_pad, "zfill": _m_pad,
                 "expandtabs": _m_expandtabs, "replace": _m_replace, "translate": _m_translate,
                 "to_bytes": _m_to_bytes}
_SIZED_SELF = (str, bytes, int)


# --- filters ---------------------------------------------------------------------

def _f_center(b, value, width=80):
    b.fits(width if type(width) is int else 0, f"center({width})")


def _f_indent(b, s, width=4, first=False, blank=False):
    w = width if type(width) is int else len(str(width))
    s = str(s)
    b.fits(len(s) + _lines(s) * max(w, 0), f"indent({w})")


def _f_wordwrap(b, s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    s = str(s)
    sep = len(wrapstring) if isinstance(wrapstring, str) else 1
    lines = len(s) // max(width, 1) + _lines(s) if type(width) is int else len(s) + 1
    b.fits(len(s) + lines * sep, "wordwrap")


def _f_truncate(b, s, length=255, killwords=False, end="...", leeway=None):
    b.fits(min(len(str(s)), length if type(length) is int else 0) + len(str(end)), "truncate")


def _f_replace(b, s, old, new, count=None):
    # With autoescaping the replacement is escaped first, which can make it longer.
    new = new if isinstance(new, Markup) else str(escape(new))
    b.fits(_replaced_size(str(s), str(old), new, count), "replace")


def _f_format(b, value, *args, **kwargs):
    _check_printf(b, str(value), kwargs or args)


def _f_batch(b, value, linecount, fill_with=None):
    b.fits(linecount if type(linecount) is int else 0, f"batch({linecount})")


def _f_slice(b, value, slices, fill_with=None):
    if type(slices) is int and slices > max_loop():
        raise BudgetExceeded(f"slice({slices:,}) makes more than {max_loop():,} slices (HERALD_TEMPLATE_MAX_LOOP)")


def _f_urlize(b, value, trim_url_limit=None, nofollow=False, target=None, rel=None, extra_schemes=None):
    value = str(value)
    extra = len(str(target or "")) + len(str(rel or "")) + 64
    b.fits(3 * len(value) + len(value.split()) * extra, "urlize")


_FILTER_CHECKS = {"center": _f_center, "indent": _f_indent, "wordwrap": _f_wordwrap, "truncate": _f_truncate,
                  "replace": _f_replace, "format": _f_format, "batch": _f_batch, "slice": _f_slice,
                  "urlize": _f_urlize}


@pass_eval_context
def _join(eval_ctx, value, d="", attribute=None):
    """``join`` that adds up the size of what it joins before joining it."""
    b = current()
    items = list(value)
    b.spend(sys.getsizeof(items))
    if attribute is not None:
        items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
    size = sum(b.weigh(item) for item in items) + len(str(d)) * max(len(items) - 1, 0)
    b.fits(size, "join")
    return sync_do_join(eval_ctx, items, d)


@pass_environment
def _sum(environment, iterable, attribute=None, start=0):
    """``sum`` that adds strings, lists or tuples one by one within the budget."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        total = environment.call_binop(None, "+", total, item)
    return total


def _guard_filter(name, func):
    check = _FILTER_CHECKS.get(name)
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    what = f"the {name} filter"

    def guarded(*args, **kwargs):
        b = _current.get()
        if b is None:
            raise _Unbudgeted(name)
        if check is not None:
            check(b, *args[skip:], **kwargs)
        return b.took(func(*args, **kwargs), what, args[skip] if len(args) > skip else None)

    return update_wrapper(guarded, func)


# --- code generation hooks ------------------------------------------------------------

def _hook(call, lineno):
    """``environment.<call>`` in the generated code (Jinja allows no custom node types)."""
    return nodes.EnvironmentAttribute(call, lineno=lineno)


class _CodeGenerator(CodeGenerator):
    def visit_For(self, node, frame):
        # Every loop turn calls environment.tick(); with an ``if`` test the
        # test does, so that items the test skips count as well.
        if node.test is not None:
            node.test = nodes.And(_hook("tick_true()", node.lineno), node.test, lineno=node.lineno)
        else:
            node.body = [nodes.ExprStmt(_hook("tick()", node.lineno), lineno=node.lineno), *node.body]
        super().visit_For(node, frame)

    def visit_Concat(self, node, frame):
        if frame.eval_ctx.volatile:
            func = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func = "markup_join"
        else:
            func = "str_join"
        self.write(f"environment.joined({func}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _built(visit):  # noqa: N805 - a decorator of the class body
        def wrapped(self, node, frame):
            if getattr(node, "ctx", "load") != "load":
                return visit(self, node, frame)
            self.write("environment.built(")
            visit(self, node, frame)
            self.write(")")

        return wrapped

    visit_List = _built(CodeGenerator.visit_List)
    visit_Tuple = _built(CodeGenerator.visit_Tuple)
    visit_Dict = _built(CodeGenerator.visit_Dict)


class _Template(Template):
    def render(self, *args, **kwargs):
        if _current.get() is not None:
            return super().render(*args, **kwargs)
        token = _current.set(Budget())  # not render_budget(): this is the hot path
        try:
            return super().render(*args, **kwargs)
        finally:
            _current.reset(token)


def _range(*args):
    """``range`` no longer than the loop budget."""
    rng = range(*args)
    if len(rng) > max_loop():
        raise BudgetExceeded(f"range of {len(rng):,} items: more than {max_loop():,} loop iterations"
                             " (HERALD_TEMPLATE_MAX_LOOP)")
    return rng


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, every render of it under a Budget."""

    code_generator_class = _CodeGenerator
    template_class = _Template
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options):
        super().__init__(finalize=_printed, **options)
        self.globals["range"] = _range
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}
        self.filters["join"] = _guard_filter("join", _join)
        self.filters["sum"] = _guard_filter("sum", _sum)

    # --- hooks called by generated code ------------------------------------------

    def concat(self, pieces):
        """Join a render's (or a block's, or a macro's) output, once its size is known to fit."""
        if type(pieces) is not list:
            pieces = list(pieces)
        b = current()
        if sum(map(len, pieces)) > b.max_value:
            raise b.over_output()
        return "".join(pieces)

    def tick(self):
        b = _current.get()
        if b is not None:
            b.tick()

    def tick_true(self):
        self.tick()
        return True

    def joined(self, join, parts):
        b = current()
        size = sum(b.weigh(p) for p in parts)
        b.fits(size, "the ~ operator")
        return b.took(join(parts), "the ~ operator")

    def built(self, value):
        return current().built(value)

    # --- the sandbox's own hooks ----------------------------------------------------

    def call_binop(self, context, operator, left, right):
        b = current()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if type(times) is int and isinstance(seq, str | bytes | list | tuple):
                    b.fits(b.weigh(seq) * max(times, 0), f"a repetition ({len(seq):,} × {times:,})")
            if type(left) is int and type(right) is int and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                raise BudgetExceeded(f"a product would make a number of more than {MAX_INT_DIGITS:,} digits")
        elif operator == "**":
            if type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
                if left.bit_length() * right > MAX_INT_BITS:
                    raise BudgetExceeded(f"a power would make a number of more than {MAX_INT_DIGITS:,} digits")
        elif operator == "+":
            if isinstance(left, str | bytes | list | tuple) and isinstance(right, str | bytes | list | tuple):
                b.fits(b.weigh(left) + b.weigh(right), "the + operator")
            elif type(left) is int and type(right) is int:
                b.check_int(abs(left) + abs(right), "a sum")
        elif operator == "%" and isinstance(left, str | bytes):
            _check_printf(b, left if isinstance(left, str) else left.decode("latin-1"), right)
        return b.took(super().call_binop(context, operator, left, right), f"the {operator} operator")

    def getitem(self, obj, argument):
        value = super().getitem(obj, argument)
        if type(argument) is slice:
            current().took(value, "a slice", obj)
        return value

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        b = current()
        if type(__obj) is Macro:
            b.tick()
            return super().call(__context, __obj, *args, **kwargs)
        name = getattr(__obj, "__name__", None)
        owner = getattr(__obj, "__self__", None)
        if name in _METHOD_SIZES and isinstance(owner, _SIZED_SELF):
            b.fits(_METHOD_SIZES[name](owner, *args, **kwargs), f"{name}()")
        elif name == "join" and isinstance(owner, str | bytes) and len(args) == 1:
            items = list(args[0])
            b.fits(sum(b.weigh(i) for i in items) + len(owner) * max(len(items) - 1, 0), "join()")
            args = (items,)
        return b.took(super().call(__context, __obj, *args, **kwargs), f"{name or 'a call'}()", owner)

    def is_safe_attribute(self, obj, attr, value):
        # The immutable sandbox's check of the receiver's type (abstract base
        # classes, slow) only matters for the names of mutating methods.
        if attr in _MUTATING:
            return super().is_safe_attribute(obj, attr, value)
        return not (attr.startswith("_") or is_internal_attribute(obj, attr))

    def wrap_str_format(self, value):
        t = type(value)
        if t is not types.BuiltinMethodType and t is not types.MethodType or value.__name__ not in (
                "format", "format_map"):
            return None
        f_self = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type = type(f_self)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args, **kwargs):
            b = current()
            if isinstance(f_self, Markup):
                formatter = _EscapeFormatter(self, b, escape=f_self.escape)
            else:
                formatter = _Formatter(self, b)
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return str_type(formatter.vformat(f_self, args, kwargs))

        return update_wrapper(wrapper, value)


def _printed(value):
    b = _current.get()
    if b is not None:
        b.output -= len(value) if type(value) is str else b.weigh(value)
        if b.output < 0:
            raise b.over_output()
    return value

