"""retrylib's exceptions, one tree under :class:`RetrylibError`.

::

    RetrylibError
    ├── ConfigError (ValueError)      a programmer mistake: bad config, unknown validator type,
    │                                 bad argument or notebook parameter, a non-loopback host
    │                                 for a testing server. Raised before any call is made.
    ├── MissingExtraError (ImportError)
    │                                 a feature needs an optional dependency; names the extra.
    ├── ServerStartError (RuntimeError)
    │                                 the embedded model server could not start; quotes its log.
    ├── ServerDiedError (RuntimeError)
    │                                 the embedded model server died after it started (a
    │                                 signal such as SIGSEGV, or an exit); quotes its log.
    ├── ServerUnreachableError (ConnectionError)
    │                                 a testing server in another process (``ChaosClient``'s
    │                                 proxy) did not answer: refused, reset, timed out.
    ├── ExtractionError (ValueError)  no text could be read from a response. Inside the retry
    │                                 loop this is a failed validation ("empty response").
    ├── ProxyHTTPError                the proxy route got a non-2xx status. Carries status_code,
    │                                 lower-cased headers and the body, like litellm's errors.
    ├── MalformedResponseError        the proxy route got a 2xx whose body is not JSON (retryable,
    │                                 as litellm's InternalServerError is for the same fault)
    ├── StateStoreError (RuntimeError)
    │                                 the shared state of the budget and the breaker (Redis) is
    │                                 unreachable, and the store was told ``on_error="raise"``
    └── RetryError                    a call that ended without a valid answer. Carries attempts.
        ├── NonRetryableError         one call, and an error retrying cannot fix (400, 401, ...)
        │                             reason: "not_retryable:<kind>"
        ├── RetryExhaustedError       attempts ran out, the deadline did, or the server asked
        │                             for a wait beyond ``max_retry_after``
        │                             reason: "max_attempts" | "deadline" | "retry_after"
        ├── HumanReviewNeededError    the M-th validation failure: a person has to look
        │                             reason: "human"
        ├── ValidatorError            a validator raised: a bug in it, so no retry
        │                             reason: "validator_error"
        ├── BudgetExhaustedError      the retry budget refused an extra request: its bucket
        │                             is at or below the threshold (``retrylib.budget``)
        │                             reason: "budget"
        ├── CallCapExceededError      the next attempt would pass the call's token or cost cap
        │                             reason: "cap_tokens" | "cap_cost"
        ├── CircuitOpenError          the model's circuit breaker is open (``retrylib.breaker``)
        │                             reason: "circuit_open"
        └── StateStoreUnavailableError
                                      the call's state store did not answer before an attempt
                                      (``on_error="raise"``); also a ``StateStoreError``
                                      reason: "state_store"

One meaning per attribute
-------------------------
The same name means the same thing on every error of the tree:

===============  ==========================================================================
``str(exc)``     the human-readable account, one line. On a ``RetryError`` ``exc.message``
                 holds the same text.
``reason``       a short, stable code for code to branch on (every ``RetryError``):
                 ``max_attempts``, ``deadline``, ``retry_after`` (the server asked for a
                 wait beyond ``max_retry_after``), ``not_retryable:<kind>``, ``human``,
                 ``validator_error``, ``budget``, ``cap_tokens``, ``cap_cost``, ``circuit_open``,
                 ``state_store``.
                 ``<kind>`` is ``http_<status>`` when the failure had a status, else the
                 classifier's phrase as a slug (``connection_refused``,
                 ``context_window_exceeded``, ``unexpected_error``). Never prose.
``status_code``  the HTTP status of the reply that failed (``ProxyHTTPError``,
                 ``NonRetryableError``); ``None`` when there was none. A 2xx with a bad
                 body is ``MalformedResponseError.http_status``: it is not a failure status.
``last_error``   a plain dict of the last transport failure's facts (``type``,
                 ``status_code``, ``message``, ``headers``, ``retryable``, and ``reason``:
                 the classifier's phrase, :attr:`retrylib.classify.Classification.reason`,
                 such as ``"connection refused"``), or ``None``.
``attempts``     every :class:`~retrylib.result.Attempt` the call made, in order.
===============  ==========================================================================

Every :class:`RetryError` pickles. litellm's exceptions do not (their constructors need
arguments that pickling drops), so the errors keep the *facts* of the last failure
(class name, status, message, headers) rather than the exception object. A value that does
not pickle (a response holding a lock, a user's object) is reduced to plain data when the
error is pickled; what could not be reduced is replaced by a short placeholder string and
its place is listed in ``exc.pickle_notes`` of the unpickled copy.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import Any


class RetrylibError(Exception):
    """The base of every exception retrylib raises."""


class ConfigError(RetrylibError, ValueError):
    """An invalid configuration. The message names the field and the rule it broke."""


class MissingExtraError(RetrylibError, ImportError):
    """A feature needs an optional dependency that is not installed.

    Attributes:
        extra: the ``retrylib[...]`` extra that brings it (``None`` if no extra does).
    """

    def __init__(self, message: str, extra: str | None = None):
        super().__init__(message)
        self.extra = extra

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.extra))


class ServerStartError(RetrylibError, RuntimeError):
    """The embedded model server did not come up. The message quotes its log's tail."""


class ServerDiedError(RetrylibError, RuntimeError):
    """The embedded model server was running and then died.

    Attributes:
        returncode: the process's exit status (negative: killed by that signal).
        signal_name: ``"SIGSEGV"`` and the like when a signal ended it, else ``None``.
    """

    def __init__(self, message: str, returncode: int | None = None, signal_name: str | None = None):
        super().__init__(message)
        self.returncode = returncode
        self.signal_name = signal_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.returncode, self.signal_name))


class ServerUnreachableError(RetrylibError, ConnectionError):
    """A testing server in another process did not answer (refused, reset, timed out).

    Raised by :class:`~retrylib.testing.chaos.ChaosClient` for a proxy it cannot reach: the
    network failed, not the caller's arguments (those are a ``ConfigError``).

    Attributes:
        url: the address that did not answer.
    """

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url))


class ExtractionError(RetrylibError, ValueError):
    """No text could be extracted from a response (no choices, ``None`` content, unknown shape)."""


class ProxyHTTPError(RetrylibError):
    """A non-2xx reply on the proxy route.

    Attributes:
        status_code: the HTTP status.
        headers: the response headers, lower-cased.
        body: the response body as text (at most 2,000 characters).
    """

    def __init__(self, status_code: int, headers: dict[str, str] | None = None, body: str = ""):
        self.status_code = int(status_code)
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body[:2000]
        super().__init__(f"HTTP {self.status_code} from the proxy route: {self.body[:200]}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status_code, self.headers, self.body))


class MalformedResponseError(RetrylibError):
    """A success status whose body is not JSON (proxy route).

    Attributes:
        http_status: the status the server sent (2xx).
        body: the body as text (at most 2,000 characters).
    """

    def __init__(self, http_status: int, body: str = ""):
        self.http_status = int(http_status)
        self.body = body[:2000]
        super().__init__(f"HTTP {self.http_status} with a body that is not JSON: {self.body[:120]!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.http_status, self.body))


class RetryError(RetrylibError):
    """A call that ended without valid output.

    Attributes:
        message: the human-readable account (``str(exc)``).
        reason: a short code (see the module docstring); each subclass sets its own.
        attempts: every :class:`~retrylib.result.Attempt` made, in order.
        last_error: a plain dict describing the last failure (``type``, ``status_code``,
            ``message``, ``headers``, ``retryable``, ``reason``), or ``None``.
    """

    reason: str = "failed"

    def __init__(
        self,
        message: str,
        *,
        attempts: list[Any] | None = None,
        last_error: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.attempts = list(attempts or [])
        self.last_error = last_error
        self.metrics: dict[str, Any] = {}  # filled in by the retry loop

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, picklable_state(self.__dict__)))


def _rebuild(cls: type[RetryError], message: str, state: dict[str, Any]) -> RetryError:
    obj = cls.__new__(cls)
    Exception.__init__(obj, message)
    obj.__dict__.update(state)
    return obj


def picklable_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (an error's ``__dict__``) made of values that pickle.

    The common case costs one ``pickle.dumps`` of the whole state. Otherwise each value that
    does not pickle is reduced to plain data: a mapping or sequence item by item, a pydantic
    model by ``model_dump()``, any other object by its ``__dict__`` (with its class name under
    ``"__type__"``). What still does not pickle (a lock, a socket, a generator) becomes a
    placeholder string, and its place is listed under ``pickle_notes``.
    """
    try:
        pickle.dumps(state)
        return state
    except Exception:  # anything an unpicklable object's __reduce__ raises
        pass
    notes: list[str] = list(state.get("pickle_notes") or ())
    out = {k: _plain(v, k, notes, 0) for k, v in state.items() if k != "pickle_notes"}
    out["pickle_notes"] = notes
    return out


_MAX_DEPTH = 12


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:
        return False


def _plain(value: Any, where: str, notes: list[str], depth: int) -> Any:
    if _pickles(value):
        return value
    name = type(value).__qualname__
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            if type(value) is not dict:
                notes.append(f"{where}: a {name} was reduced to a plain dict")
            return {(k if _pickles(k) else repr(k)): _plain(v, f"{where}[{k!r}]", notes, depth + 1)
                    for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            if type(value) not in (list, tuple):
                notes.append(f"{where}: a {name} was reduced to a plain {'list' if isinstance(value, list) else 'tuple'}")
            items = [_plain(v, f"{where}[{i}]", notes, depth + 1) for i, v in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            try:
                data = dump()
            except Exception:  # a model whose dump fails: fall through to its __dict__
                pass
            else:
                notes.append(f"{where}: a {name} was reduced to its model_dump()")
                return _plain(data, where, notes, depth + 1)
        fields = getattr(value, "__dict__", None)
        if isinstance(fields, dict):
            notes.append(f"{where}: a {name} was reduced to a dict of its attributes")
            return {"__type__": name,
                    **{str(k): _plain(v, f"{where}.{k}", notes, depth + 1) for k, v in fields.items()}}
    notes.append(f"{where}: a {name} that does not pickle was dropped")
    return f"<{name}: dropped, it does not pickle>"


def not_retryable_reason(phrase: str = "", status_code: int | None = None) -> str:
    """The ``reason`` code of a :class:`NonRetryableError`: ``not_retryable:<kind>``.

    ``<kind>`` is ``http_<status>`` when there was a status, else ``phrase`` (the classifier's
    reason, such as ``"context window exceeded"``) as a slug, without a parenthesised tail.
    A phrase that is already a ``not_retryable:`` code is returned as it is.
    """
    if phrase.startswith("not_retryable:"):
        return phrase
    if status_code is not None:
        return f"not_retryable:http_{int(status_code)}"
    kind = re.sub(r"[^a-z0-9]+", "_", re.sub(r"\s*\(.*\)\s*$", "", phrase.lower())).strip("_")
    return f"not_retryable:{kind or 'unknown'}"


class NonRetryableError(RetryError):
    """An error that retrying cannot fix; raised after exactly one call.

    The original exception is ``__cause__`` (it does not survive pickling; its facts do, in
    ``last_error``, whose ``reason`` is the classifier's phrase).

    Attributes:
        status_code: the HTTP status, when there was one.
        reason: ``not_retryable:<kind>`` (see :func:`not_retryable_reason`); the ``reason``
            argument may be the classifier's phrase, which is turned into that code.
    """

    reason = "not_retryable:unknown"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        reason: str = "",
        attempts: list[Any] | None = None,
        last_error: dict[str, Any] | None = None,
    ):
        super().__init__(message, attempts=attempts, last_error=last_error)
        self.status_code = status_code
        self.reason = not_retryable_reason(reason, status_code)


#: The ``reason`` codes of :class:`RetryExhaustedError`.
EXHAUSTED_REASONS = ("max_attempts", "deadline", "retry_after")
# Codes an older loop passed, and what they are now.
_OLD_REASONS = {"retry_after_too_long": "retry_after"}


class RetryExhaustedError(RetryError):
    """The attempts ran out, the deadline did, or the server asked for too long a wait.

    Attributes:
        reason: one of ``max_attempts``, ``deadline``, ``retry_after`` (a ``Retry-After``
            beyond ``max_retry_after``).

    Raises:
        ValueError: ``reason`` is not one of those codes (a bug in the caller).
    """

    reason = "max_attempts"

    def __init__(
        self,
        message: str,
        *,
        reason: str = "max_attempts",
        attempts: list[Any] | None = None,
        last_error: dict[str, Any] | None = None,
    ):
        super().__init__(message, attempts=attempts, last_error=last_error)
        reason = _OLD_REASONS.get(reason, reason)
        if reason not in EXHAUSTED_REASONS:
            raise ValueError(f"RetryExhaustedError reason must be one of {EXHAUSTED_REASONS}, "
                             f"got {reason!r}")
        self.reason = reason


class ValidatorError(RetryError):
    """A validator raised (or returned something that is not a verdict): a bug in it.

    Retrying cannot fix a broken validator, so the call ends, keeping everything measured so
    far: ``attempts`` (the last one holds the answer the validator choked on) and
    ``metrics``. The validator's exception is ``__cause__``.

    Attributes:
        reason: always ``"validator_error"``.
        validator: the name of the validator that raised.
    """

    reason = "validator_error"

    def __init__(self, message: str, *, validator: str = "", attempts: list[Any] | None = None,
                 last_error: dict[str, Any] | None = None):
        super().__init__(message, attempts=attempts, last_error=last_error)
        self.reason = "validator_error"
        self.validator = validator


class HumanReviewNeededError(RetryError):
    """The model failed validation M times; a person has to decide.

    It carries the whole story, and pickles, so it can be queued for review. When a review
    store is configured (``RetryConfig.review_store``, a ``review_store=`` argument, or
    ``$RETRYLIB_REVIEW_STORE``), the case was written to it before this was raised, and
    ``case_id`` names it: ``retrylib review show <case_id>``, then
    ``retrylib.review.resume(case_id, ...)`` continues the call.

    Attributes:
        attempts: every attempt, with its validation errors and stage.
        messages: the exact messages sent on the last attempt.
        last_response: the last raw response (a dict, a ``ModelResponse`` or a ``str``).
        last_text: the text extracted from it.
        validation_errors: the errors of the last failed validation.
        config: the ``RetryConfig`` (a :class:`~retrylib.review.recorded.RecordedConfig`,
            which also reads as the dict it used to be: ``config["max_attempts"]``,
            ``config.get(...)``); ``config_dict`` is the plain dict.
        reason: always ``"human"``; ``str(exc)`` says why a human is needed.
        context: what the original design's ``PoCHumanReviewNeededError.context`` held, for a
            declarative call (``llm_call``): ``original_llm_config``, ``last_response``,
            ``attempt`` (and ``error`` when the last attempt failed in transport); ``{}`` for
            a call made with ``retry_with_validation``. Plain data, so it pickles.
        case_id: the review case written for this call, or ``None`` (no store configured,
            or the write failed: then ``review_error`` says why).
        review_error: why the case could not be written, or ``None``.
    """

    reason = "human"

    def __init__(
        self,
        message: str,
        *,
        attempts: list[Any] | None = None,
        messages: list[dict[str, Any]] | None = None,
        last_response: Any = None,
        last_text: str | None = None,
        validation_errors: list[str] | None = None,
        config: Any = None,
        last_error: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        case_id: str | None = None,
    ):
        super().__init__(message, attempts=attempts, last_error=last_error)
        self.reason = "human"
        self.context = dict(context or {})
        self.messages = list(messages or [])
        self.last_response = last_response
        self.last_text = last_text
        self.validation_errors = list(validation_errors or [])
        self.config = config
        self.case_id = case_id
        self.review_error: str | None = None

    # ``config`` is kept as a dict (it pickles anywhere, and is what older pickles hold) and
    # read as a RetryConfig; the import is late because retrylib.config imports this module.
    @property
    def config(self) -> Any:
        """The ``RetryConfig`` of the call (``None`` when none was given)."""
        view = self.__dict__.get("_config_view")
        if view is None:
            data = self.config_dict
            if not data:
                return None
            from retrylib.review.recorded import recorded

            view = self.__dict__["_config_view"] = recorded(data)
        return view

    @config.setter
    def config(self, value: Any) -> None:
        dump = getattr(value, "model_dump", None)
        self.__dict__["_config"] = dict(dump() if callable(dump) else (value or {}))
        self.__dict__.pop("_config_view", None)

    @property
    def config_dict(self) -> dict[str, Any]:
        """The ``RetryConfig`` as a plain dict (``RetryConfig.model_dump()``)."""
        return dict(self.__dict__.get("_config", self.__dict__.get("config")) or {})

    @property
    def context(self) -> dict[str, Any]:
        """See the class docstring."""
        return self.__dict__.get("_context", self.__dict__.get("context")) or {}

    @context.setter
    def context(self, value: dict[str, Any]) -> None:
        self.__dict__["_context"] = dict(value or {})
        # llm_call attaches its context after the loop raised: the queued case learns it too.
        sink = self.__dict__.get("_context_sink")
        if sink is not None and value:
            sink(self.__dict__["_context"])

    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_config_view", "_context_sink")}
        return (_rebuild, (type(self), self.message, picklable_state(state)))

    def summary(self) -> str:
        """A short, human-readable account of what happened."""
        lines = [f"Human review needed: {self.message}", f"attempts: {len(self.attempts)}"]
        if self.case_id:
            lines.append(f"review case: {self.case_id}")
        for a in self.attempts:
            errs = "; ".join(getattr(a, "validation_errors", ()) or ()) or getattr(a, "error_type", "") or ""
            lines.append(f"  #{a.number} [{a.stage}] {a.outcome}: {errs[:160]}")
        return "\n".join(lines)


# -- the budget, the breaker and their shared state (issue 12) ------------------------------


def _num(x: float) -> str:
    """``4.0``, ``5.05``, ``10.0``: at least one decimal, at most three."""
    s = f"{float(x):.3f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


class StateStoreError(RetrylibError, RuntimeError):
    """The shared state store (Redis) did not answer, and it was told ``on_error="raise"``.

    Raised by :class:`retrylib.state.RedisStore` within its socket timeouts (it never hangs).
    It is not a transport failure of the model: nothing was sent to the model.

    Attributes:
        url: the store's address, without its password.
    """

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url))


class BudgetExhaustedError(RetryError):
    """The retry budget refused an extra request of the call (``retrylib.budget``).

    A :class:`RetryError`: the call ends without a valid answer, and carries its attempts.
    It is not a :class:`RetryExhaustedError`: the call had attempts left, the budget shared
    by every call of its key did not (code that turns exhausted calls into human reviews
    should not queue an outage).

    Attributes:
        key: the bucket's key (a model, a route, or a name the caller gave).
        level: the bucket's level when the request was refused, in tokens.
        max_tokens: the bucket's size.
        threshold: extra requests need a level above this (``max_tokens / 2``).
        kind: what the refused request was for (``transport``, ``reask``, ``fallback``,
            ``judge``, ...).
        reason: ``"budget"``.
    """

    reason = "budget"

    def __init__(
        self,
        key: str,
        level: float,
        max_tokens: float,
        threshold: float,
        *,
        kind: str = "retry",
        attempts: list[Any] | None = None,
        last_error: dict[str, Any] | None = None,
    ):
        message = (f"retry budget exhausted for key {key!r}: {_num(level)} of {max_tokens:g} "
                   f"tokens (retries need > {_num(threshold)}); the {kind} request was not sent")
        super().__init__(message, attempts=attempts, last_error=last_error)
        self.key, self.level, self.kind = key, float(level), kind
        self.max_tokens, self.threshold = float(max_tokens), float(threshold)
        self.reason = "budget"


class CallCapExceededError(RetryError):
    """The call's next attempt would pass its cap on tokens or cost (``retrylib.budget.CallCap``).

    Attributes:
        limit: ``"tokens"`` or ``"cost"``.
        cap: the cap.
        used: what the call's attempts used so far.
        estimate: what the next attempt would use (see ``CallCap`` for the rule).
        reason: ``"cap_tokens"`` or ``"cap_cost"``.
    """

    reason = "cap_tokens"

    def __init__(
        self,
        limit: str,
        cap: float,
        used: float,
        estimate: float,
        *,
        rule: str = "",
        attempts: list[Any] | None = None,
        last_error: dict[str, Any] | None = None,
    ):
        unit = "tokens" if limit == "tokens" else "cost"
        fmt = (lambda v: f"{v:,.0f}") if limit == "tokens" else (lambda v: f"${v:.6g}")
        message = (f"call cap on {unit} reached: {fmt(used)} used of {fmt(cap)}, and the next "
                   f"attempt would take about {fmt(estimate)}" + (f" ({rule})" if rule else ""))
        super().__init__(message, attempts=attempts, last_error=last_error)
        self.limit, self.cap, self.used, self.estimate = limit, float(cap), float(used), float(estimate)
        self.reason = f"cap_{unit}"


class CircuitOpenError(RetryError):
    """The model's circuit breaker refused the request, and no fallback model is left.

    Attributes:
        key: the breaker's key (the model).
        state: ``"open"``, or ``"half_open"`` when its probes are all in flight.
        retry_in: seconds until the breaker lets a probe through (an estimate in half-open).
        failures: the consecutive transport failures it counted.
        reason: ``"circuit_open"``.
    """

    reason = "circuit_open"

    def __init__(
        self,
        key: str,
        state: str,
        retry_in: float,
        failures: int = 0,
        *,
        attempts: list[Any] | None = None,
        last_error: dict[str, Any] | None = None,
    ):
        why = (f"after {failures} consecutive transport failures" if state == "open"
               else "its half-open probe is still in flight")
        message = (f"circuit breaker {state.replace('_', '-')} for {key!r} {why}: the request "
                   f"was not sent; the next probe in {retry_in:.1f} s")
        super().__init__(message, attempts=attempts, last_error=last_error)
        self.key, self.state, self.retry_in, self.failures = key, state, float(retry_in), int(failures)
        self.reason = "circuit_open"


class StateStoreUnavailableError(RetryError, StateStoreError):
    """The call's budget or breaker state store (Redis) did not answer before an attempt, and
    the store was told ``on_error="raise"``: the call ends here, and nothing was sent for the
    attempt it was about to make.

    Both a :class:`RetryError` (it carries the attempts made before it, so their requests
    are counted: a batch row's ``attempts`` and ``api_calls``) and a
    :class:`StateStoreError` (code that catches the store's own error still catches it).
    ``__cause__`` is the store's error.

    Attributes:
        url: the store's address, without its password.
        reason: ``"state_store"``.
    """

    reason = "state_store"

    def __init__(
        self,
        message: str,
        url: str = "",
        *,
        attempts: list[Any] | None = None,
        last_error: dict[str, Any] | None = None,
    ):
        super().__init__(message, attempts=attempts, last_error=last_error)
        self.url = url
        self.reason = "state_store"
