"""Validators of plain text: not empty, matches a pattern, has a length in range."""

from __future__ import annotations

import re
from typing import Literal

from retrylib.errors import ConfigError
from retrylib.validators.base import ValidationContext, ValidationResult

# A closing fence at the start of a line first: JSON strings and most code never hold a
# raw newline followed by ```, so this cannot stop inside the block. The lenient form
# catches "…}```" and a block the model never closed.
_FENCE_STRICT = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
_FENCE_LENIENT = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """The Markdown fenced blocks of ``text`` as ``(language, body)`` pairs, in order.

    The language is lower-cased (``""`` for a bare fence). Empty when there is no fence.
    """
    for pattern in (_FENCE_STRICT, _FENCE_LENIENT):
        blocks = pattern.findall(text or "")
        if blocks:
            return [(lang.lower(), body) for lang, body in blocks]
    return []


class ResponseNotEmpty:
    """Checks that the answer holds something other than whitespace.

    parsed: ``None`` (a text check makes no object, so it never hides another's).
    """

    name = "response_not_empty"

    def __repr__(self) -> str:
        return "ResponseNotEmpty()"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        if text is None or text == "":
            return ValidationResult.fail(
                "the answer is empty",
                suggestions=["Reply with the answer itself, not an empty message."],
            )
        if not text.strip():
            return ValidationResult.fail(
                "the answer contains only whitespace",
                suggestions=["Reply with the answer itself, not an empty message."],
            )
        return ValidationResult.ok()


class RegexMatch:
    """Checks the answer against a regular expression.

    In ``"fullmatch"`` mode the answer's leading and trailing whitespace is ignored, because
    models add a trailing newline so often that counting it would only produce noise.

    Args:
        pattern: the regular expression (a string or a compiled pattern).
        flags: ``re`` flags, used when ``pattern`` is a string.
        mode: ``"search"`` (the pattern occurs anywhere) or ``"fullmatch"`` (the whole
            answer matches).
        description: what the pattern means, in words, for the error message
            ("an ISO date"); the pattern itself is shown when omitted.

    Raises:
        ConfigError: the pattern does not compile or the mode is unknown.

    parsed: the matched text.
    """

    name = "regex"

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        flags: int = 0,
        mode: Literal["search", "fullmatch"] = "search",
        description: str | None = None,
    ):
        if mode not in ("search", "fullmatch"):
            raise ConfigError(f"RegexMatch: mode must be 'search' or 'fullmatch', not {mode!r}")
        try:
            self.pattern = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
        except (re.error, TypeError) as exc:
            raise ConfigError(f"RegexMatch: pattern {pattern!r} does not compile: {exc}") from exc
        if not isinstance(self.pattern, re.Pattern):
            raise ConfigError(f"RegexMatch: pattern must be a string, not {type(pattern).__name__}")
        self.mode = mode
        self.description = description

    def __repr__(self) -> str:
        extra = f", description={self.description!r}" if self.description else ""
        return f"RegexMatch({self.pattern.pattern!r}, mode={self.mode!r}{extra})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        if self.mode == "fullmatch":
            m = self.pattern.fullmatch(text.strip())
        else:
            m = self.pattern.search(text)
        if m is not None:
            return ValidationResult.ok(m.group(0))
        what = self.description or f"the pattern /{self.pattern.pattern}/"
        if self.mode == "fullmatch":
            error = f"the answer as a whole is not {what} (got: {shorten(text.strip())!r})"
            hint = f"Reply with only {what}, nothing before or after it."
        else:
            error = f"the answer does not contain {what}"
            hint = f"Include {what} in the answer."
        return ValidationResult.fail(error, suggestions=[hint])


class LengthRange:
    """Checks that the answer's length, in characters, lies in a range (both ends included).

    Leading and trailing whitespace is not counted.

    Args:
        min_chars: the least number of characters allowed, or ``None`` for no minimum.
        max_chars: the most characters allowed, or ``None`` for no maximum.

    Raises:
        ConfigError: a bound is negative, ``min_chars > max_chars``, or both are ``None``.

    parsed: ``None``.
    """

    name = "length_range"

    def __init__(self, min_chars: int | None = None, max_chars: int | None = None):
        for label, value in (("min_chars", min_chars), ("max_chars", max_chars)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"LengthRange: {label} must be an integer, not {value!r}")
            if value is not None and value < 0:
                raise ConfigError(f"LengthRange: {label} must be >= 0, not {value}")
        if min_chars is None and max_chars is None:
            raise ConfigError("LengthRange: give min_chars, max_chars or both")
        if min_chars is not None and max_chars is not None and min_chars > max_chars:
            raise ConfigError(f"LengthRange: min_chars ({min_chars}) > max_chars ({max_chars})")
        self.min_chars = min_chars
        self.max_chars = max_chars

    def __repr__(self) -> str:
        return f"LengthRange(min_chars={self.min_chars}, max_chars={self.max_chars})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        body = (text or "").strip()
        n = len(body)
        if self.min_chars is not None and n < self.min_chars:
            return ValidationResult.fail(
                f"the answer is {n} characters long; it must be at least {self.min_chars}",
                suggestions=[f"Write a longer answer: at least {self.min_chars} characters."],
            )
        if self.max_chars is not None and n > self.max_chars:
            return ValidationResult.fail(
                f"the answer is {n} characters long; it must be at most {self.max_chars}",
                suggestions=[f"Shorten the answer to at most {self.max_chars} characters."],
            )
        return ValidationResult.ok()
