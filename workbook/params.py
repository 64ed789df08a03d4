"""Notebook parameters: the rules a notebook's first cell checks its parameters with.

Each notebook calls :func:`check_params` in the cell after its ``parameters`` cell, so a bad
value (from a params file or papermill ``-p``) stops the notebook with a ``ConfigError`` that
names the parameter, what it must be, and what it got::

    check_params(model=model, seed=seed, attempts=between(attempts, 1, 20),
                 route=one_of(route, "direct", "chaos"), delays=list_of(delays, between(None, 0.0, 10.0)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retrylib.errors import ConfigError

__all__ = ["COMMON_RULES", "Rule", "between", "check_params", "list_of", "of_type", "one_of"]


@dataclass(frozen=True, slots=True)
class Rule:
    """What a notebook parameter must be; made by :func:`between`, :func:`one_of`,
    :func:`of_type`, :func:`list_of` and checked by :func:`check_params`."""

    value: Any
    types: tuple[type, ...] = ()
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    items: Rule | None = None
    min_len: int = 0
    pattern: str | None = None
    optional: bool = False

    def describe(self) -> str:
        """What the rule asks for, in words ("an integer between 1 and 20")."""
        types = [t for t in self.types if not (t is int and float in self.types)]  # "a number"
        kind = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types) or "a value"
        if self.choices is not None:
            kind = "one of " + ", ".join(map(repr, self.choices))
        if self.items is not None:
            kind = f"a list of at least {self.min_len} item(s), each {self.items.describe()}"
        elif self.min_len:
            kind = f"a non-empty {kind.removeprefix('a ')}"
        if self.pattern:
            kind += f" matching {self.pattern!r}"
        if self.lo is not None and self.hi is not None:
            kind += f" between {self.lo} and {self.hi}"
        elif self.lo is not None:
            kind += f" >= {self.lo}"
        return kind + (" (or None)" if self.optional else "")

    def ok(self, v: Any) -> bool:
        """Whether ``v`` keeps the rule."""
        import re

        if v is None:
            return self.optional
        if self.types and (not isinstance(v, self.types)
                           or (isinstance(v, bool) and bool not in self.types)):
            return False  # bool is an int to Python, never to a notebook parameter
        if self.choices is not None and v not in self.choices:
            return False
        if (self.lo is not None and not v >= self.lo) or (self.hi is not None and not v <= self.hi):
            return False
        if self.items is not None:
            return (isinstance(v, list | tuple) and len(v) >= self.min_len
                    and all(self.items.ok(x) for x in v))
        if isinstance(v, str):
            return len(v) >= self.min_len and (not self.pattern or re.match(self.pattern, v) is not None)
        return True


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a bool",
               list: "a list", dict: "a mapping"}


def between(value: Any, lo: float, hi: float | None = None, *, optional: bool = False) -> Rule:
    """``lo <= value <= hi`` (``hi=None``: no upper bound); an integer when both bounds are
    integers, else any number."""
    types = (int,) if isinstance(lo, int) and isinstance(hi, int | None) else (int, float)
    return Rule(value, types=types, lo=lo, hi=hi, optional=optional)


def one_of(value: Any, *choices: Any, optional: bool = False) -> Rule:
    """``value`` is one of ``choices``."""
    return Rule(value, choices=tuple(choices), optional=optional)


def of_type(value: Any, *types: type, optional: bool = False) -> Rule:
    """``value`` is an instance of one of ``types`` (``float`` accepts integers too)."""
    if float in types and int not in types:
        types = (*types, int)
    return Rule(value, types=tuple(types), optional=optional)


def list_of(value: Any, item: Rule, min_len: int = 1) -> Rule:
    """A list of at least ``min_len`` items, each passing ``item`` (build it with
    ``value=None``, e.g. ``list_of(delays, between(None, 0.0, 10.0))``)."""
    return Rule(value, items=item, min_len=min_len)


# The common parameters every notebook takes (notebooks/README.md), with their built-in rules.
COMMON_RULES: dict[str, Rule] = {
    "model": Rule(None, types=(str,), min_len=1),
    "api_base": Rule(None, types=(str,), pattern=r"^https?://", optional=True),
    "chaos_url": Rule(None, types=(str,), pattern=r"^https?://", optional=True),
    "results_dir": Rule(None, types=(str,), min_len=1),
    "runs_dir": Rule(None, types=(str,), min_len=1, optional=True),
    "quick": Rule(None, types=(bool,)),
    "seed": Rule(None, types=(int,), lo=0),
    "local_model": Rule(None, types=(str,), min_len=1, optional=True),
}


def check_params(**params: Any) -> dict[str, Any]:
    """Validate a notebook's parameters; call it in the cell after the ``parameters`` cell.

    Common names (``model``, ``api_base``, ``chaos_url``, ``results_dir``, ``runs_dir``,
    ``quick``, ``seed``, ``local_model``) are checked by built-in rules. A notebook's own knob
    is passed wrapped in a rule::

        check_params(model=model, api_base=api_base, chaos_url=chaos_url,
                     results_dir=results_dir, quick=quick, seed=seed,
                     attempts=between(attempts, 1, 20), rate=between(rate, 0.0, 1.0),
                     route=one_of(route, "direct", "chaos"), n=between(n, 1, optional=True))

    Returns:
        ``{name: value}`` of the checked values.

    Raises:
        ConfigError: the first parameter that breaks its rule, named, with what it must be
            and what it got; also for a bare value whose name has no built-in rule.
    """
    from dataclasses import replace

    checked = {}
    for name, given in params.items():
        if isinstance(given, Rule):
            rule = given
        elif name in COMMON_RULES:
            rule = replace(COMMON_RULES[name], value=given)
        else:
            raise ConfigError(f"check_params: no rule for notebook parameter {name!r}; pass it as "
                              f"between(...), one_of(...), of_type(...) or list_of(...)")
        if not rule.ok(rule.value):
            raise ConfigError(f"notebook parameter {name!r} must be {rule.describe()}, "
                              f"got {rule.value!r} ({type(rule.value).__name__})")
        checked[name] = rule.value
    return checked
