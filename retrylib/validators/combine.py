"""Validators made of validators: every one must pass (``AllOf``), or any one (``AnyOf``);
``Soft`` marks a check whose failure is re-asked but does not, in the end, block the answer."""

from __future__ import annotations

from typing import Any

from retrylib.errors import ConfigError
from retrylib.validators.base import ValidationContext, ValidationResult, Validator, run_validator


def _children(kind: str, validators: tuple[Any, ...]) -> tuple[Validator, ...]:
    # AllOf([a, b]) reads as naturally as AllOf(a, b); accept both.
    if len(validators) == 1 and isinstance(validators[0], list | tuple):
        validators = tuple(validators[0])
    if not validators:
        raise ConfigError(f"{kind}: give at least one validator")
    for v in validators:
        if not callable(getattr(v, "validate", None)):
            raise ConfigError(f"{kind}: {v!r} is not a validator (it has no validate method)")
    return tuple(validators)


def named_errors(validator: Any, result: ValidationResult) -> tuple[str, ...]:
    """The result's errors, or ``"<name> failed"`` when the validator gave no words."""
    return tuple(result.errors) or (f"{getattr(validator, 'name', type(validator).__name__)} failed",)


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _expose_schema(owner: Any, combine: str) -> None:
    """Give ``owner`` a ``json_schema()`` method only when a child has one."""
    knowing = [v for v in owner.validators if callable(getattr(v, "json_schema", None))]
    if not knowing:
        return

    def json_schema() -> dict[str, Any]:
        schemas = [v.json_schema() for v in knowing]
        return schemas[0] if len(schemas) == 1 else {combine: schemas}

    json_schema.__doc__ = f"The children's JSON schemas (one as is, several under {combine!r})."
    owner.json_schema = json_schema


class AllOf:
    """Checks that the answer passes every validator, and reports every problem at once.

    The validators run in order, all of them, so the model hears about every problem in one
    re-ask. Two rules keep the report short:

    - identical error lines are said once (the JSON validators share their parse, so an
      answer that is not JSON gets one "invalid JSON" line, not one per validator);
    - a costly validator (one with ``costly = True``, such as ``LLMJudge``) is skipped once
      a cheaper one has failed: judging an answer already known to be wrong wastes calls.

    The result is ``soft`` when every failure came from a :class:`Soft` check; its ``parsed``
    is then the hard validators' parse, so an answer returned with warnings is still parsed.

    Args:
        *validators: the validators (or one list of them).
        fail_fast: stop at the first failure instead.

    Raises:
        ConfigError: no validators, or something that is not one.

    parsed: the last non-``None`` parsed value of the validators, in order.
    Has ``json_schema()`` when a child has one (several go under ``allOf``; ``Soft`` children
    are left out: a schema sent to the grammar is a hard rule).
    """

    name = "all_of"

    def __init__(self, *validators: Validator, fail_fast: bool = False):
        self.validators = _children("AllOf", validators)
        self.fail_fast = fail_fast
        self.costly = any(getattr(v, "costly", False) for v in self.validators)
        _expose_schema(self, "allOf")

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.validators))
        return f"AllOf({inner}{', fail_fast=True' if self.fail_fast else ''})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        errors: list[str] = []
        suggestions: list[str] = []
        parsed: Any = None
        hard_failed = False
        for v in self.validators:
            if errors and getattr(v, "costly", False):
                continue
            r = await run_validator(v, text, context)
            if r.valid:
                if r.parsed is not None:
                    parsed = r.parsed
                continue
            hard_failed = hard_failed or not r.soft
            errors += named_errors(v, r)
            suggestions += list(r.suggestions)
            if self.fail_fast:
                break
        if errors:
            soft = not hard_failed
            return ValidationResult(False, _unique(errors), _unique(suggestions),
                                    parsed if soft else None, soft)
        return ValidationResult.ok(parsed)


class AnyOf:
    """Checks that the answer passes at least one validator.

    The alternatives run in order and the first that passes decides. When none passes, every
    alternative's errors are reported, each prefixed with "alternative N (name)".

    Args:
        *validators: the alternatives (or one list of them).

    Raises:
        ConfigError: no validators, or something that is not one.

    parsed: the parsed value of the alternative that passed.
    Has ``json_schema()`` when a child has one (several go under ``anyOf``).
    """

    name = "any_of"

    def __init__(self, *validators: Validator):
        self.validators = _children("AnyOf", validators)
        self.costly = any(getattr(v, "costly", False) for v in self.validators)
        _expose_schema(self, "anyOf")

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.validators))})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        errors: list[str] = []
        suggestions: list[str] = []
        softly: ValidationResult | None = None  # the first alternative that failed only softly
        for i, v in enumerate(self.validators, 1):
            r = await run_validator(v, text, context)
            if r.valid:
                return r
            if r.soft and softly is None:
                softly = r
            label = f"alternative {i} ({getattr(v, 'name', type(v).__name__)})"
            errors += [f"{label}: {e}" for e in r.errors] or [f"{label} failed"]
            suggestions += list(r.suggestions)
        if len(self.validators) > 1:
            suggestions.insert(0, "It is enough to satisfy one of the alternatives.")
        return ValidationResult(False, tuple(errors), _unique(suggestions),
                                softly.parsed if softly else None, softly is not None)


class Soft:
    """A check worth retrying for, but not worth failing the call over.

    A soft failure is fed back and escalates the ladder like any other; but when the
    attempts run out (or the human stage is reached) and some answer failed *only* soft
    checks, ``retry_with_validation`` returns that answer — the one with the fewest soft
    errors, the latest on a tie — with the errors in ``RetryResult.warnings``, instead of
    raising. Use it for heuristics that a right answer may occasionally fail, such as
    :class:`~retrylib.validators.Grounded`.

    Args:
        validator: the check to soften.

    Raises:
        ConfigError: ``validator`` is not a validator.
    """

    name = "soft"

    def __init__(self, validator: Validator):
        (self.validator,) = _children("Soft", (validator,))
        self.costly = bool(getattr(validator, "costly", False))

    def __repr__(self) -> str:
        return f"Soft({self.validator!r})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        r = await run_validator(self.validator, text, context)
        if r.valid:
            return r
        return ValidationResult(False, r.errors, r.suggestions, r.parsed, True)
