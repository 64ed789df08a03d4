r"""JSON-schema ``pattern`` → a pattern that llama.cpp's grammar builder holds.

llama-cpp-python's converter turns a ``pattern`` into grammar rules almost character by
character, and those rules describe the JSON *text* between the string's quotes.
:func:`grammar_pattern` rewrites a pattern so that every escape in it is one the grammar
parser knows, the converter takes it (``^…$``, no ``(?:``), and every text it admits is a
valid JSON string body whose decoded value the original matches (``re.search``, as the
validators apply it). The pattern is read with ``re``'s own parser, so it means what it
means to ``re``. The rules:

- shorthands take their ASCII meaning: ``\d`` → ``[0-9]``, ``\w`` → ``[0-9A-Z_a-z]``,
  ``\s`` → a space or one of the JSON escapes ``\t \n \r \f``; a negation that involves
  a shorthand (``\D``, ``\S``, ``[^\s@]``) is taken within ASCII (Python's ``\d`` also
  matches other scripts' digits, so ``[^0-9]`` would admit what ``\D`` refuses);
- ``"``, ``\`` and control characters are written as JSON writes them (``\\"``, ``\\\\``,
  ``\\n`` ...): no class, dot or negation admits them raw, so no text leaves the string;
  control characters without a short JSON escape are not admitted at all;
- escaped metacharacters become classes (``\.`` → ``[.]``); ``(?:…)`` becomes ``(…)``;
- ``^…$`` is always written: the pattern is searched, so wherever it reaches its start or
  end without an anchor (in each alternative) the rewrite admits anything there
  (``^a$|b`` → ``^(a|…*b…*)$``); anchors anywhere else raise :class:`Unsupported`;
- ``{m,n}`` with ``n − m`` over :data:`MAX_SPAN` is held as ``{m,}`` (and noted); with
  ``max_length`` every open repeat (``*``, ``+``, ``{m,}``) is bounded by it;
- lookarounds, backreferences, ``\b``/``\B``, possessive and atomic forms, ``(?i)``,
  ``(?m)``, anchors inside the pattern and what ``re`` cannot parse (``\p{L}``) raise
  :class:`Unsupported`.

Examples::

    >>> grammar_pattern(r"^INV-\d{4}-\d{2}$")
    ('^INV-[0-9]{4}-[0-9]{2}$', [])
    >>> grammar_pattern(r"^\d+\.\d{2}$")[0]
    '^[0-9]+[.][0-9]{2}$'
    >>> grammar_pattern(r"^Flight\s[A-Z]{2}\d{3,4}$")[0]
    '^Flight( |\\\\[fnrt])[A-Z]{2}[0-9]{3,4}$'
    >>> grammar_pattern(r"^[^,]+$")[0]
    '^([^\\x00-\\x1f",\\\\]|\\\\["\\\\bfnrt])+$'
    >>> grammar_pattern(r"KL\d+$", max_length=8)[0]
    '^([^\\x00-\\x1f"\\\\]|\\\\["\\\\bfnrt]){0,8}KL[0-9]{1,8}$'
    >>> grammar_pattern(r"^(?=x)x$")
    Traceback (most recent call last):
    retrylib.patterns.Unsupported: lookaround (?=…) or (?<=…)
"""

# What crashes the grammar builder (llama-cpp-python 0.3.36, measured in a subprocess that
# converts a schema with llama_cpp.llama_grammar and builds the sampler as the server does):
# - The converter copies a pattern's escapes into the GBNF. llama.cpp's GBNF parser knows
#   only \n \r \t \" \\ \- \[ \] \xHH \uHHHH \UHHHHHHHH, in strings and in classes alike;
#   the converter itself unescapes \( \) \[ \] \{ \} \* \+ \? \| outside classes. Any other
#   escape (\d \s \w \. \/ \f \v \b \1 \p, also inside [...]) makes the parser fail;
#   llama_sampler_init_grammar then returns NULL, the server adds it to its sampler chain
#   anyway, and the first sampled token segfaults the server (exit 139).
# - The same NULL (and segfault) comes from a repeat whose optional part is over 1000:
#   {m,n} with n - m > 1000, or maxLength - minLength > 1000, or maxItems - minItems > 1000
#   ("number of rules ... exceeds sane defaults"); around 20000 the parser itself overflows
#   its stack. Fixed counts ({5000}, minLength 20000) build.
# - A pattern without both ^ and $, with (?:, (?=, (?i) ... makes the *converter* raise;
#   the server catches that and silently uses a plain-JSON grammar for the whole schema.
# - Escapes that build are still unsafe for JSON: \t and \n become raw control characters
#   in the string (invalid JSON), \\ a lone backslash, and "." or "[^,]" admit '"'.
# - format: the converter holds date, time, date-time and uuid (uuid1-5) itself; it
#   ignores every other format, and ignores format, minLength and maxLength when the
#   schema has a pattern. A pattern on a schema whose "type" is a list is ignored too.

from __future__ import annotations

import importlib
import re
from typing import Any

_parser: Any = importlib.import_module("re._parser")  # the parser `re` itself uses (3.11+)
_MAXREPEAT: Any = importlib.import_module("re._constants").MAXREPEAT

#: The largest optional span ``n - m`` of a repeat that llama.cpp's grammar parser builds.
MAX_SPAN = 1000

Ranges = list[tuple[int, int]]
_FULL: Ranges = [(0, 0x10FFFF)]
_ASCII: Ranges = [(0, 0x7F)]
_CATEGORIES: dict[str, Ranges] = {  # re's shorthands, in ASCII
    "DIGIT": [(0x30, 0x39)],
    "WORD": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "SPACE": [(0x09, 0x0D), (0x1C, 0x20)],
}
_UNSAFE: Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # JSON escapes these
_JSON_ESCAPES = {0x22: '"', 0x5C: r"\\", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}
_LITERAL_OK = frozenset(" !#%&',-/:;<=>@_`~")  # beside letters and digits, as themselves
_CLASS_OK = frozenset(" !\"#$%'()*+,./:;<=>?@_`{}")
_BAD_FLAGS = re.IGNORECASE | re.MULTILINE | re.LOCALE
_WHY = {
    "ASSERT": "lookaround (?=…) or (?<=…)",
    "ASSERT_NOT": "negative lookaround (?!…) or (?<!…)",
    "GROUPREF": r"backreference \1",
    "GROUPREF_EXISTS": "conditional group (?(1)…)",
    "POSSESSIVE_REPEAT": "possessive quantifier (*+, ++, ?+)",
    "ATOMIC_GROUP": "atomic group (?>…)",
    "AT": r"an anchor inside the pattern, or \b / \B",
}


class Unsupported(ValueError):
    """The pattern uses something the grammar cannot hold; the message says what."""


def grammar_pattern(pattern: str, max_length: int | None = None) -> tuple[str, list[str]]:
    """``pattern`` rewritten for llama.cpp's grammar, and notes on what it holds less exactly.

    Args:
        pattern: a JSON-schema ``pattern`` (searched, as ``re.search`` does).
        max_length: the string's ``maxLength``, if any: open repeats are bounded by it.

    Returns:
        ``(rewritten, notes)``; ``rewritten`` is ``^…$``, and each note names a bound that the
        grammar holds more loosely than the pattern (``"{2,5000} held as {2,}"``).

    Raises:
        Unsupported: the pattern cannot be rewritten safely.
    """
    try:
        tree = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise Unsupported(f"does not parse as a Python regex ({exc})") from None
    _check_flags(tree.state.flags)
    writer = _Writer(bool(tree.state.flags & re.DOTALL), max_length)
    return "^" + writer.seq(list(tree), start=True, end=True)[0] + "$", writer.notes


def _check_flags(flags: int) -> None:
    if flags & _BAD_FLAGS:
        raise Unsupported("flag (?i), (?m) or (?L)")


class _Writer:
    def __init__(self, dotall: bool, bound: int | None):
        self.dotall, self.bound = dotall, bound
        self.notes: list[str] = []

    def anything(self) -> str:
        return _encode(_FULL) + self.quantifier(0, _MAXREPEAT)

    def seq(self, items: list[Any], start: bool = False, end: bool = False) -> tuple[str, bool]:
        """A sequence's text, and whether a quantifier may follow it unbracketed.

        ``start``/``end``: the sequence reaches the pattern's start/end, where the search
        admits anything unless an anchor (``^``/``\\A``, ``$``/``\\Z``) stands there.
        """
        if start and items and _is_at(items[0], "AT_BEGINNING", "AT_BEGINNING_STRING"):
            items, start = items[1:], False
        if end and items and _is_at(items[-1], "AT_END", "AT_END_STRING"):
            items, end = items[:-1], False
        if not items:
            return (self.anything() if start or end else ""), False
        last = len(items) - 1
        parts = [self.node(str(op), av, start and k == 0, end and k == last)
                 for k, (op, av) in enumerate(items)]
        return parts[0] if len(parts) == 1 else ("".join(t for t, _ in parts), False)

    def node(self, op: str, av: Any, start: bool = False, end: bool = False) -> tuple[str, bool]:
        if op == "BRANCH":  # the edges go into each alternative
            return "(" + "|".join(self.seq(list(b), start, end)[0] for b in av[1]) + ")", True
        if op == "SUBPATTERN":
            if (av[1] | av[2]) & (_BAD_FLAGS | re.DOTALL):
                raise Unsupported("a flag on a group, (?i:…) or (?s:…)")
            text, atom = self.seq(list(av[3]), start, end)
            return (text if atom else f"({text})"), True
        text, atom = self.unit(op, av)
        if start or end:
            head, tail = self.anything() if start else "", self.anything() if end else ""
            return head + text + tail, False
        return text, atom

    def unit(self, op: str, av: Any) -> tuple[str, bool]:
        if op == "LITERAL":
            return _encode([(av, av)]), True
        if op == "NOT_LITERAL":
            return _encode(_minus(_FULL, [(av, av)])), True
        if op == "ANY":
            return _encode(_FULL if self.dotall else _minus(_FULL, [(0x0A, 0x0A)])), True
        if op == "IN":
            return _encode(_in_set(av)), True
        if op in ("MAX_REPEAT", "MIN_REPEAT"):  # lazy or greedy: the same strings match
            text, atom = self.seq(list(av[2]))
            return (text if atom else f"({text})") + self.quantifier(av[0], av[1]), False
        raise Unsupported(_WHY.get(op, op))

    def quantifier(self, lo: int, hi: Any) -> str:
        if hi == _MAXREPEAT and self.bound is not None and lo <= self.bound <= lo + MAX_SPAN:
            hi = self.bound
        if hi != _MAXREPEAT and hi - lo > MAX_SPAN:
            self.notes.append(f"{{{lo},{hi}}} held as {{{lo},}}")
            hi = _MAXREPEAT
        if hi == _MAXREPEAT:
            return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
        return "?" if (lo, hi) == (0, 1) else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def _is_at(item: Any, *where: str) -> bool:
    return str(item[0]) == "AT" and str(item[1]) in where


def _in_set(items: Any) -> Ranges:
    """The characters of a ``[...]`` (or shorthand) item list."""
    negate, ascii_only, ranges = False, False, []
    for op, av in items:
        if str(op) == "NEGATE":
            negate = True
        elif str(op) == "LITERAL":
            ranges.append((av, av))
        elif str(op) == "RANGE":
            ranges.append(av)
        else:  # CATEGORY: CATEGORY_DIGIT, CATEGORY_NOT_SPACE, ...
            name, ascii_only = str(av).removeprefix("CATEGORY_"), True
            chars = _CATEGORIES.get(name.removeprefix("NOT_"))
            if chars is None:
                raise Unsupported(f"class {av}")
            ranges += _minus(_ASCII, chars) if name.startswith("NOT_") else chars
    return _minus(_ASCII if ascii_only else _FULL, ranges) if negate else _norm(ranges)


def _encode(chars: Ranges) -> str:
    """One pattern unit admitting each of ``chars`` as JSON writes it in a string."""
    raw = _minus(chars, _UNSAFE)
    esc = [e for c, e in _JSON_ESCAPES.items() if any(lo <= c <= hi for lo, hi in chars)]
    if not esc:
        if not raw:
            raise Unsupported("needs characters JSON writes only as \\u escapes")
        return _class(raw)
    escape = "\\\\" + (esc[0] if len(esc) == 1 else "[" + "".join(esc) + "]")
    return "(" + "|".join([_class(raw), escape] if raw else [escape]) + ")"


def _class(chars: Ranges) -> str:
    lo, hi = chars[0]
    if len(chars) == 1 and lo == hi and (chr(lo).isalnum() or chr(lo) in _LITERAL_OK):
        return chr(lo)
    pos = "[" + "".join(_span(*r) for r in chars) + "]"
    neg = "[^" + "".join(_span(*r) for r in _minus(_FULL, chars)) + "]"
    return min(pos, neg, key=len)


def _span(lo: int, hi: int) -> str:
    return _char(lo) if lo == hi else _char(lo) + ("-" if hi > lo + 1 else "") + _char(hi)


def _char(c: int) -> str:
    ch = chr(c)
    if ch.isascii() and (ch.isalnum() or ch in _CLASS_OK):
        return ch
    if ch in "-[]\\":
        return "\\" + ch
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def _norm(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _minus(a: Ranges, b: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in _norm(a):
        for blo, bhi in _norm(b):
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = max(lo, bhi + 1)
        if lo <= hi:
            out.append((lo, hi))
    return out
