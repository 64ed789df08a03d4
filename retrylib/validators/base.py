"""The validator protocol: what every validator takes and returns.

A validator is any object with a ``name`` and a ``validate(text, context)`` method that
returns a :class:`ValidationResult` (``async`` or not; a plain ``bool`` is taken as pass or
fail). Validators never raise for bad *output*: a bad answer is a result with
``valid=False`` and errors that say, in words the model can act on, what was wrong. An
exception from a validator is a bug in it: the call ends with ``ValidatorError``, which
keeps the attempts made so far.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The verdict on one answer.

    Attributes:
        valid: whether the answer passed.
        errors: what was wrong, one sentence each; fed back to the model.
        suggestions: how to fix it; fed back to the model after the errors.
        parsed: the parsed object (a dict, a pydantic model, ...) when the validator made one.
        soft: only *soft* checks failed (see :class:`~retrylib.validators.Soft`): the answer is
            re-asked like any other failure, but when the attempts run out it is returned,
            with these errors as ``RetryResult.warnings``, instead of raising.
    """

    valid: bool
    errors: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()
    parsed: Any = None
    soft: bool = False

    @classmethod
    def ok(cls, parsed: Any = None) -> ValidationResult:
        if cls is not ValidationResult:
            return cls(True, (), (), parsed, False)
        return _built(True, (), (), parsed)

    @classmethod
    def fail(cls, *errors: str, suggestions: tuple[str, ...] | list[str] = ()) -> ValidationResult:
        if cls is not ValidationResult:
            return cls(False, tuple(errors), tuple(suggestions), None, False)
        return _built(False, errors, tuple(suggestions), None)


# ok() and fail() run once per answer judged: they build the frozen result through the slots'
# own descriptors (a frozen dataclass's __init__ sets each field through object.__setattr__:
# 0.62 µs for these five; this, about 0.35).
_SET_VALID, _SET_ERRORS, _SET_SUGGESTIONS, _SET_PARSED, _SET_SOFT = (
    ValidationResult.__dict__[f].__set__  # the slot's member descriptor
    for f in ("valid", "errors", "suggestions", "parsed", "soft"))


def _built(valid: bool, errors: tuple[str, ...], suggestions: tuple[str, ...],
           parsed: Any) -> ValidationResult:
    """``ValidationResult(valid, errors, suggestions, parsed, False)``, built faster."""
    r = object.__new__(ValidationResult)
    _SET_VALID(r, valid)
    _SET_ERRORS(r, errors)
    _SET_SUGGESTIONS(r, suggestions)
    _SET_PARSED(r, parsed)
    _SET_SOFT(r, False)
    return r


@dataclass(slots=True)
class ValidationContext:
    """What a validator may know about the call it judges.

    One context is made per attempt; nothing in it is shared between concurrent calls.

    Attributes:
        attempt: the 1-based number of the attempt whose answer is judged.
        messages: the messages that were sent for that attempt (read-only by convention).
        depth: how many ``retry_with_validation`` calls enclose this one; a validator that
            makes calls of its own (``LLMJudge``) passes ``depth + 1`` down and refuses to go
            past ``max_depth``.
        max_depth: the recursion limit for validators that call models.
        subresults: ``RetryResult`` objects of calls that validators made; the manager adds
            their API calls and tokens to the outer call's metrics.
        budget: the outer call's ``RetryBudget`` (or ``None``): a validator that makes calls
            (``LLMJudge``) draws on it, since its calls are extra requests of the call.
        bounded: a deadline holds over this validation. :func:`run_validator` then runs a
            plain (blocking) ``validate`` in a worker thread, at any depth (``AllOf``'s
            children too), so the loop can give up on it in time. The thread cannot be
            stopped: it runs on after the call has ended.
    """

    attempt: int = 1
    messages: list[dict[str, Any]] = field(default_factory=list)
    depth: int = 0
    max_depth: int = 2
    subresults: list[Any] = field(default_factory=list)
    budget: Any = None
    bounded: bool = False


def is_async(fn: Any) -> bool:
    """Whether calling ``fn`` gives an awaitable (an ``async def`` function or ``__call__``)."""
    dunder = None if inspect.isfunction(fn) else next(
        (k.__dict__["__call__"] for k in type(fn).__mro__ if "__call__" in k.__dict__), None)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(dunder)


@runtime_checkable
class Validator(Protocol):
    """Anything with a name and an async ``validate``."""

    name: str

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult: ...


def validator_name(v: Any) -> str:
    return str(getattr(v, "name", None) or type(v).__name__)


async def run_validator(v: Any, text: str, context: ValidationContext) -> ValidationResult:
    """``v.validate(text, context)``, awaited if it is async; a ``bool`` becomes a result.

    Raises:
        TypeError: the validator returned something else (the loop reports it as
            ``ValidatorError``).
    """
    if context.bounded and not is_async(v.validate):
        r = await asyncio.to_thread(v.validate, text, context)  # a blocking validate
    else:
        r = v.validate(text, context)
    if type(r) is not ValidationResult and inspect.isawaitable(r):
        r = await r
    if type(r) is ValidationResult or isinstance(r, ValidationResult):
        return r
    if isinstance(r, bool):
        return ValidationResult.ok() if r else ValidationResult.fail(f"{validator_name(v)} failed")
    raise TypeError(f"validator {validator_name(v)!r} returned {type(r).__name__}, not a "
                    "ValidationResult or bool")
