"""Is a failure worth retrying, and how long does the server ask us to wait?

The table is the one the OpenAI and Anthropic Python SDKs use in their own retry logic
(``_should_retry`` in both):

- retryable: 408, 409, 429, every 5xx, timeouts, connection errors and resets;
- not retryable: 400, 401, 403, 404, 422 (and other 4xx), context-window-exceeded,
  content-policy violations;
- a ``x-should-retry: true|false`` response header overrides the table.

Classification is by the *real cause*. litellm reports a refused connection as an
``InternalServerError`` with status 500; the ``ConnectionRefusedError`` is only reachable
through ``__context__``/``__cause__``, so the exception chain is walked first.
``asyncio.CancelledError`` is never retryable.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

_RETRYABLE_STATUS = frozenset({408, 409, 429})

# litellm / openai exceptions that carry no useful status, by class name (the MRO is
# searched, so subclasses are covered). Not-retryable names win over retryable ones.
_NOT_RETRYABLE_NAMES = {
    "ContextWindowExceededError": "context window exceeded",
    "ContentPolicyViolationError": "content policy violation",
    "UnsupportedParamsError": "unsupported parameters",
    "BadRequestError": "bad request",
    "AuthenticationError": "authentication failed",
    "PermissionDeniedError": "permission denied",
    "NotFoundError": "not found",
    "UnprocessableEntityError": "unprocessable entity",
    "BudgetExceededError": "budget exceeded",
    "ModelNotMappedError": "model not mapped (a configuration error)",
    "ModifyResponseException": "response blocked by a guardrail",
    "SensitiveDataRouteException": "request blocked: sensitive data",
    "InvalidRequestError": "invalid request",
}
_RETRYABLE_NAMES = {
    "Timeout": "timeout",
    "APITimeoutError": "timeout",
    "APIConnectionError": "connection error",
    "RateLimitError": "rate limited",
    "ServiceUnavailableError": "service unavailable",
    "InternalServerError": "server error",
    "BadGatewayError": "bad gateway",
    "MidStreamFallbackError": "stream broke mid-response",
    "MalformedResponseError": "malformed response body",
    "OpenAIError": "provider error",  # the openai SDK's base class; its subclasses are above
}
_CONNECTION_CAUSES: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    httpx.TransportError,  # connect/read/write errors, protocol errors, timeouts
    TimeoutError,
    asyncio.TimeoutError,
)


# Builtin exceptions that carry nothing but their message (no headers, status or response),
# with what _connection_reason says of each (one dict lookup on the hot path).
_PLAIN_CONNECTION: dict[type[BaseException], str] = {
    ConnectionError: "connection error", ConnectionRefusedError: "connection refused",
    ConnectionResetError: "connection reset", ConnectionAbortedError: "connection error",
    BrokenPipeError: "connection error", TimeoutError: "timeout"}


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one failure.

    Attributes:
        retryable: whether another attempt can help.
        reason: a short phrase ("rate limited", "connection refused", "HTTP 401", ...).
        retry_after: seconds the server asked us to wait, or ``None``.
        status_code: the HTTP status, when there was one.
        error_type: the exception's class name (or ``"HTTP <status>"``).
    """

    retryable: bool
    reason: str
    retry_after: float | None = None
    status_code: int | None = None
    error_type: str = ""
    headers: dict[str, str] | None = None


# The hot path's verdicts are built through the slots' own descriptors: a frozen dataclass's
# __init__ sets each field through object.__setattr__ (0.72 µs for these six; this, 0.41).
_SET_RETRYABLE, _SET_REASON, _SET_RETRY_AFTER, _SET_STATUS, _SET_TYPE, _SET_HEADERS = (
    Classification.__dict__[f].__set__  # the slot's member descriptor
    for f in ("retryable", "reason", "retry_after", "status_code", "error_type", "headers"))


def _plain_verdict(reason: str, error_type: str) -> Classification:
    """``Classification(True, reason, None, None, error_type, {})``, built faster."""
    c = object.__new__(Classification)
    _SET_RETRYABLE(c, True)
    _SET_REASON(c, reason)
    _SET_RETRY_AFTER(c, None)
    _SET_STATUS(c, None)
    _SET_TYPE(c, error_type)
    _SET_HEADERS(c, {})
    return c


def response_headers(exc: BaseException) -> dict[str, str]:
    """The response headers an exception carries, lower-cased (empty when none)."""
    for attr in ("litellm_response_headers", "headers"):
        h = getattr(exc, attr, None)
        if h:
            return {str(k).lower(): str(v) for k, v in dict(h).items()}
    resp = getattr(exc, "response", None)
    h = getattr(resp, "headers", None)
    if h:
        return {str(k).lower(): str(v) for k, v in dict(h).items()}
    return {}


def parse_retry_after(headers: dict[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, else ``Retry-After`` (seconds or HTTP date).

    Returns ``None`` when neither header is present or parseable. Never negative.
    """
    h = {k.lower(): v for k, v in headers.items()}
    ms = h.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = h.get("retry-after")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        return code
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 16:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _connection_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else "connection error"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed mid-response"
    return "connection error"


def _status_verdict(status: int) -> tuple[bool, str]:
    if status in _RETRYABLE_STATUS or status >= 500:
        return True, f"HTTP {status}"
    return False, f"HTTP {status}"


def _names(exc: BaseException) -> list[str]:
    return [c.__name__ for c in type(exc).__mro__]


def classify(failure: BaseException | int) -> Classification:
    """Classify an exception or an HTTP status code.

    Args:
        failure: an exception (litellm's, openai's, httpx's, retrylib's ``ProxyHTTPError``,
            a builtin ``ConnectionError``...) or an HTTP status code.

    Returns:
        A :class:`Classification`. Unknown exceptions (bugs in the caller's code, say) are
        not retryable: retrying a ``KeyError`` only hides it.
    """
    if isinstance(failure, int):
        ok, reason = _status_verdict(failure)
        return Classification(ok, reason, None, failure, f"HTTP {failure}")
    exc = failure
    etype = type(exc).__name__
    plain = _PLAIN_CONNECTION.get(type(exc))
    if plain is not None and exc.__cause__ is None and exc.__context__ is None:
        # The hot path of a flaky socket: a builtin error with no chain, headers or status.
        return _plain_verdict(plain, etype)
    if isinstance(exc, asyncio.CancelledError):
        return Classification(False, "cancelled", None, None, etype)
    headers = response_headers(exc)
    retry_after = parse_retry_after(headers) if headers else None
    status = status_of(exc)
    retryable, reason = _verdict(exc, status)
    override = headers.get("x-should-retry", "").strip().lower()
    if override in ("true", "false"):
        retryable = override == "true"
        reason = f"{reason} (x-should-retry: {override})"
    return Classification(retryable, reason, retry_after, status, etype, headers)


def _verdict(exc: BaseException, status: int | None) -> tuple[bool, str]:
    names = _names(exc)
    for name in names:  # context window / content policy beat their 400 status
        if name in ("ContextWindowExceededError", "ContentPolicyViolationError"):
            return False, _NOT_RETRYABLE_NAMES[name]
    # The real cause: a refused connection hides behind a 500. The deepest link is the most
    # specific (ConnectionRefusedError beneath httpx.ConnectError beneath litellm's error).
    causes = [link for link in _chain(exc) if isinstance(link, _CONNECTION_CAUSES)]
    if causes:
        reasons = [_connection_reason(link) for link in causes]
        specific = [r for r in reasons if r != "connection error"]
        return True, (specific[-1] if specific else reasons[-1])
    if status is not None:
        return _status_verdict(status)
    for name in names:
        if name in _NOT_RETRYABLE_NAMES:
            return False, _NOT_RETRYABLE_NAMES[name]
        if name in _RETRYABLE_NAMES:
            return True, _RETRYABLE_NAMES[name]
    return False, f"unexpected error ({type(exc).__name__})"


def error_facts(exc: BaseException, c: Classification | None = None) -> dict[str, Any]:
    """The picklable facts of a failure: what a ``RetryError`` keeps instead of the object."""
    c = c or classify(exc)
    return {
        "type": type(exc).__name__,
        "status_code": c.status_code,
        "message": str(exc)[:2000],
        "headers": c.headers if c.headers is not None else response_headers(exc),
        "retryable": c.retryable,
        "reason": c.reason,
    }
