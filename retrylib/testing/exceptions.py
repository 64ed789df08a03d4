"""Genuine transport exceptions, built in process, as each route raises them.

A :class:`~retrylib.testing.ScriptedCall` serves these, so a test of the loop sees exactly
the objects a real failure produces: litellm's and openai's exception classes with a real
``httpx.Response`` (status and headers), retrylib's own ``ProxyHTTPError``, and connection
errors chained the way litellm chains them (a refused connection hides behind a 500)::

    http_error(429, headers={"retry-after": "2"})            # litellm.RateLimitError
    http_error(503, route="openai")                           # openai.InternalServerError
    http_error(502, route="proxy")                            # retrylib ProxyHTTPError
    connection_refused()                                      # litellm.InternalServerError (500)
    timeout_error()                                           # litellm.Timeout (408)

The status → class table is the one measured on litellm 1.110's openai provider (DESIGN.md);
``tests/test_testing.py`` checks it against the exceptions real calls raise.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import httpx

from retrylib._extras import require
from retrylib.errors import ProxyHTTPError

Route = Literal["litellm", "openai", "proxy"]
_URL = "http://scripted.invalid/v1/chat/completions"

# litellm 1.110, openai provider: the class each status becomes (403/409 and the rest: APIError).
LITELLM_CLASS = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
                 408: "Timeout", 422: "BadRequestError", 429: "RateLimitError",
                 500: "InternalServerError", 502: "BadGatewayError",
                 503: "ServiceUnavailableError", 504: "Timeout"}
# The openai SDK's own mapping (openai._client._make_status_error).
OPENAI_CLASS = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                404: "NotFoundError", 409: "ConflictError", 422: "UnprocessableEntityError",
                429: "RateLimitError"}


def _response(status: int, headers: dict[str, str] | None, body: str) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, text=body,
                          request=httpx.Request("POST", _URL))


def http_error(status: int, *, headers: dict[str, str] | None = None, body: str = "",
               route: Route = "litellm", model: str = "scripted") -> Exception:
    """The exception ``route`` raises when the server answers ``status``.

    Args:
        status: the HTTP status (4xx or 5xx).
        headers: response headers (``retry-after``, ``retry-after-ms``, ``x-should-retry``).
        body: the response body.
        route: ``litellm`` (needs the ``[litellm]`` extra), ``openai`` (the openai SDK,
            which litellm brings), or ``proxy`` (retrylib's own proxy route).
        model: the model name litellm's message quotes.
    """
    body = body or f'{{"error": {{"message": "scripted HTTP {status}"}}}}'
    if route == "proxy":
        return ProxyHTTPError(status, headers, body)
    resp = _response(status, headers, body)
    if route == "openai":
        openai = require("openai", "http_error(route='openai')")
        name = OPENAI_CLASS.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
        return getattr(openai, name)(f"Error code: {status} - {body}", response=resp, body=None)
    litellm = require("litellm", "http_error(route='litellm')")
    name = LITELLM_CLASS.get(status, "APIError")
    cls = getattr(litellm, name)
    message = f"litellm.{name}: OpenAIException - {body}"
    exc: Exception
    if name == "APIError":
        exc = cls(status_code=status, message=message, llm_provider="openai", model=model,
                  request=resp.request, response=resp)
    elif name == "Timeout":
        exc = cls(message=message, model=model, llm_provider="openai", response=resp,
                  headers=dict(resp.headers), exception_status_code=status)
    else:
        exc = cls(message=message, llm_provider="openai", model=model, response=resp)
    exc.litellm_response_headers = resp.headers  # type: ignore[attr-defined]  # as litellm's mapping sets it
    return exc


def timeout_error(route: Route = "litellm", model: str = "scripted") -> Exception:
    """The exception ``route`` raises when the client's timeout fires."""
    if route == "proxy":
        return httpx.ReadTimeout("scripted read timeout", request=httpx.Request("POST", _URL))
    if route == "openai":
        openai = require("openai", "timeout_error(route='openai')")
        return openai.APITimeoutError(request=httpx.Request("POST", _URL))
    litellm = require("litellm", "timeout_error(route='litellm')")
    return litellm.Timeout(message="litellm.Timeout: Request timed out.", model=model,
                           llm_provider="openai")


def _chain(*links: BaseException) -> BaseException:
    """Link ``links`` (innermost first) through ``__context__`` and return the outermost.

    That is the chain Python builds when each is raised inside the ``except`` block of the one
    before, as litellm's wrapping does.
    """
    for inner, outer in itertools.pairwise(links):
        outer.__context__ = inner
    return links[-1]


def connection_error(cause: OSError, route: Route = "litellm", model: str = "scripted") -> Exception:
    """A connection failure with ``cause`` at the bottom of the chain, as ``route`` wraps it.

    litellm reports it as ``InternalServerError`` (status 500); the true cause is reachable
    only through ``__context__``. The proxy route raises httpx's ``ConnectError``.
    """
    req = httpx.Request("POST", _URL)
    connect = httpx.ConnectError(str(cause), request=req)
    if route == "proxy":
        return _chain(cause, connect)  # type: ignore[return-value]
    openai = require("openai", "connection_error()")
    api = openai.APIConnectionError(request=req)
    if route == "openai":
        return _chain(cause, connect, api)  # type: ignore[return-value]
    litellm = require("litellm", "connection_error()")
    outer = litellm.InternalServerError(message="litellm.InternalServerError: OpenAIException - "
                                        "Connection error.", llm_provider="openai", model=model)
    return _chain(cause, connect, api, outer)  # type: ignore[return-value]


def connection_refused(route: Route = "litellm") -> Exception:
    """A refused connection (nothing listens on the port), as ``route`` raises it."""
    return connection_error(ConnectionRefusedError(111, "Connect call failed"), route)


def connection_reset() -> ConnectionResetError:
    """A connection reset by the peer mid-response, as a plain socket error."""
    return ConnectionResetError(104, "Connection reset by peer")


def headers_of(exc: BaseException) -> dict[str, Any]:
    """The response headers an exception carries (lower-cased), for assertions."""
    from retrylib.classify import response_headers

    return dict(response_headers(exc))
