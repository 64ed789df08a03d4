"""classify: which failures are worth retrying, and how long the server asks us to wait.

The litellm exceptions here are real: each comes from a real litellm call to the chaos
proxy replying that status (upstream-free, so no model is involved), or from a call to a
port nothing listens on. The table follows the OpenAI/Anthropic SDKs' ``_should_retry``.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import

import httpx
import litellm
import litellm.exceptions
import pytest

from retrylib import MalformedResponseError, ProxyHTTPError, classify, parse_retry_after
from retrylib.classify import error_facts, response_headers, status_of
from retrylib.client import acompletion
from retrylib.testing.local import free_port

MESSAGES = [{"role": "user", "content": "hi"}]
RETRYABLE = [408, 409, 429, 500, 502, 503, 504]
NOT_RETRYABLE = [400, 401, 403, 404, 422]
# What litellm 1.110 raises for each status on the openai provider (DESIGN.md's table).
LITELLM_CLASS = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "APIError", 404: "NotFoundError",
    408: "Timeout", 409: "APIError", 422: "BadRequestError", 429: "RateLimitError",
    500: "InternalServerError", 502: "BadGatewayError", 503: "ServiceUnavailableError",
    504: "Timeout",
}


async def litellm_error(url: str, fault: str) -> Exception:
    """The exception a real litellm call raises when the proxy answers with ``fault``."""
    with pytest.raises(Exception) as info:
        await acompletion(MESSAGES, model="openai/smollm2", api_base=url, max_tokens=4, timeout=30,
                          extra_headers={"X-Chaos-Fault": fault})
    return info.value


# -- status codes -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [*RETRYABLE, 599, 520])
def test_retryable_status_codes(status):
    """408, 409, 429 and every 5xx are retryable."""
    c = classify(status)
    assert c.retryable is True
    assert (c.status_code, c.reason, c.error_type) == (status, f"HTTP {status}", f"HTTP {status}")


@pytest.mark.parametrize("status", [*NOT_RETRYABLE, 402, 405, 413, 418])
def test_not_retryable_status_codes(status):
    """400, 401, 403, 404, 422 (and other 4xx) are not retryable."""
    c = classify(status)
    assert c.retryable is False
    assert c.status_code == status


@pytest.mark.parametrize("status", RETRYABLE + NOT_RETRYABLE)
async def test_real_litellm_exceptions_follow_the_table(chaos_free, status):
    """A real litellm exception for each status is classified exactly like the bare status."""
    exc = await litellm_error(chaos_free.url, str(status))
    assert type(exc).__name__ == LITELLM_CLASS[status]  # the table in DESIGN.md still holds
    assert type(exc).__module__.startswith("litellm")
    c = classify(exc)
    assert c.retryable is classify(status).retryable
    assert c.status_code == status
    assert c.error_type == LITELLM_CLASS[status]
    assert len(chaos_free.journal()) == 1  # one request: litellm did not retry on its own


async def test_403_is_plain_api_error_classified_by_status(chaos_free):
    """litellm raises plain APIError (not PermissionDeniedError) for 403; the status decides."""
    exc = await litellm_error(chaos_free.url, "403")
    assert type(exc) is litellm.exceptions.APIError
    assert not isinstance(exc, litellm.exceptions.PermissionDeniedError)
    c = classify(exc)
    assert (c.retryable, c.status_code, c.reason) == (False, 403, "HTTP 403")


async def test_409_is_plain_api_error_but_retryable(chaos_free):
    """409 also arrives as plain APIError, and the status makes it retryable."""
    c = classify(await litellm_error(chaos_free.url, "409"))
    assert (c.retryable, c.status_code, c.error_type) == (True, 409, "APIError")


# -- the real cause -----------------------------------------------------------------------


async def test_refused_connection_is_retryable_connection_refused():
    """A refused connection reaches us as InternalServerError 500; it is classified by its cause."""
    port = free_port()  # nothing listens here
    with pytest.raises(litellm.exceptions.InternalServerError) as info:
        await acompletion(MESSAGES, model="openai/smollm2", api_base=f"http://127.0.0.1:{port}/v1",
                          max_tokens=4, timeout=10)
    exc = info.value
    assert exc.status_code == 500  # what litellm claims
    chain, cur = [], exc
    while cur is not None and len(chain) < 16:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    assert any(isinstance(e, ConnectionRefusedError) for e in chain)  # the true cause is there
    c = classify(exc)
    assert c.retryable is True
    assert c.reason == "connection refused"


def test_builtin_connection_errors():
    """Bare connection errors are retryable and named by kind."""
    assert classify(ConnectionRefusedError()).reason == "connection refused"
    assert classify(ConnectionResetError()).reason == "connection reset"
    assert classify(TimeoutError()).reason == "timeout"
    assert all(classify(e).retryable for e in (ConnectionRefusedError(), ConnectionResetError(),
                                                TimeoutError(), BrokenPipeError()))


async def test_reset_mid_body_is_retryable(chaos_free):
    """A connection reset mid-response (real TCP abort) is retryable."""
    exc = await litellm_error(chaos_free.url, "reset")
    c = classify(exc)
    assert c.retryable is True, c


async def test_malformed_body_is_retryable(chaos_free):
    """A 200 whose body is not JSON (litellm: InternalServerError) is retryable."""
    exc = await litellm_error(chaos_free.url, "malformed")
    assert classify(exc).retryable is True


def test_proxy_route_errors():
    """retrylib's own ProxyHTTPError is classified by status and headers; MalformedResponseError retries."""
    c = classify(ProxyHTTPError(429, {"Retry-After": "2"}, "slow down"))
    assert (c.retryable, c.status_code, c.retry_after, c.error_type) == (True, 429, 2.0, "ProxyHTTPError")
    assert classify(ProxyHTTPError(401, {}, "no")).retryable is False
    m = classify(MalformedResponseError(200, "not json"))
    assert (m.retryable, m.reason) == (True, "malformed response body")


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [("500:x-should-retry=false", False), ("503:x-should-retry=false", False),
     ("400:x-should-retry=true", True), ("401:x-should-retry=true", True)],
)
async def test_x_should_retry_overrides_the_table(chaos_free, fault, retryable):
    """x-should-retry: true|false wins over the status table, both ways."""
    exc = await litellm_error(chaos_free.url, fault)
    c = classify(exc)
    assert c.retryable is retryable
    assert c.reason.endswith(f"(x-should-retry: {str(retryable).lower()})")
    assert c.retryable is not classify(int(fault.split(":")[0])).retryable  # it really overrode


async def test_retry_after_seconds_from_real_429(chaos_free):
    """Retry-After: 3 on a real 429 gives retry_after == 3.0 and the headers are exposed."""
    exc = await litellm_error(chaos_free.url, "429:retry-after=3")
    assert response_headers(exc)["retry-after"] == "3"
    c = classify(exc)
    assert (c.retryable, c.retry_after, c.error_type) == (True, 3.0, "RateLimitError")


async def test_retry_after_ms_from_real_503(chaos_free):
    """retry-after-ms: 1500 on a real 503 gives 1.5 s."""
    c = classify(await litellm_error(chaos_free.url, "503:retry-after-ms=1500"))
    assert c.retry_after == 1.5


async def test_retry_after_http_date_from_real_429(chaos_free):
    """Retry-After as an HTTP date 5 s ahead gives about 5 s."""
    c = classify(await litellm_error(chaos_free.url, "429:retry-after-date=5"))
    assert c.retry_after is not None and 3.0 <= c.retry_after <= 5.0


def test_parse_retry_after_seconds():
    """Retry-After in seconds (integer or fractional), case-insensitive header names."""
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25


def test_parse_retry_after_ms_wins():
    """retry-after-ms is preferred over Retry-After when both are sent."""
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25


def test_parse_retry_after_http_date():
    """Retry-After as an HTTP date is the seconds from now until then."""
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    got = parse_retry_after({"Retry-After": date}, now=now)
    assert got is not None and 29.0 <= got <= 30.0


def test_parse_retry_after_never_negative():
    """A date in the past and a negative number both give 0."""
    now = time.time()
    assert parse_retry_after({"Retry-After": email.utils.formatdate(now - 60, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "-4"}) == 0.0
    assert parse_retry_after({"retry-after-ms": "-4"}) == 0.0


def test_parse_retry_after_absent_or_garbage():
    """No header or an unparseable one gives None; a bad -ms value falls back to Retry-After."""
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}) == 2.0


# -- never retry -----------------------------------------------------------------------------


def test_context_window_exceeded_not_retryable():
    """ContextWindowExceededError is not retryable, and says why."""
    exc = litellm.ContextWindowExceededError(message="too long", model="smollm2", llm_provider="openai")
    c = classify(exc)
    assert (c.retryable, c.reason) == (False, "context window exceeded")


def test_content_policy_violation_not_retryable():
    """ContentPolicyViolationError is not retryable, and says why."""
    exc = litellm.ContentPolicyViolationError(message="no", model="smollm2", llm_provider="openai")
    c = classify(exc)
    assert (c.retryable, c.reason) == (False, "content policy violation")


def test_cancelled_is_never_retryable():
    """asyncio.CancelledError is never retryable."""
    c = classify(asyncio.CancelledError())
    assert (c.retryable, c.reason, c.error_type) == (False, "cancelled", "CancelledError")


def test_unknown_exception_not_retryable():
    """A bug in the caller's code (KeyError) is not retried: that only hides it."""
    c = classify(KeyError("oops"))
    assert c.retryable is False
    assert c.reason == "unexpected error (KeyError)"


def test_status_of_reads_response():
    """status_of finds the status on the exception or on its response."""
    resp = httpx.Response(418, request=httpx.Request("GET", "http://127.0.0.1/"))
    assert status_of(httpx.HTTPStatusError("x", request=resp.request, response=resp)) == 418
    assert status_of(KeyError()) is None


def test_error_facts_are_plain_data():
    """error_facts keeps the class name, status, message, headers and verdict as plain values."""
    facts = error_facts(ProxyHTTPError(503, {"Retry-After": "1"}, "busy"))
    assert facts == {"type": "ProxyHTTPError", "status_code": 503,
                     "message": "HTTP 503 from the proxy route: busy",
                     "headers": {"retry-after": "1"}, "retryable": True, "reason": "HTTP 503"}


# -- completeness ------------------------------------------------------------------------------

_REQ = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
_ARGS = {"message": "boom", "model": "smollm2", "llm_provider": "openai",
         "custom_llm_provider": "openai", "current_cost": 2.0, "max_budget": 1.0,
         "entity_type": "key", "route_to_model": "m", "session_id": "s", "request_data": {},
         "failures": [], "raw_response": "{}", "schema": "{}", "status_code": 500, "request": _REQ}
# Classes whose status comes from the response they are given.
_RESPONSE_STATUS = {"PermissionDeniedError": 403, "UnprocessableEntityError": 422}


def _litellm_exception_classes() -> dict[str, type[Exception]]:
    return {name: obj for name, obj in vars(litellm.exceptions).items()
            if inspect.isclass(obj) and issubclass(obj, Exception)
            and obj.__module__.startswith("litellm")}


def _build(cls: type[Exception]) -> Exception:
    """An instance built through the class's own constructor, required arguments filled in."""
    kw = {}
    for name, p in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if name == "response":
            kw[name] = httpx.Response(_RESPONSE_STATUS.get(cls.__name__, 500), request=_REQ)
        else:
            kw[name] = _ARGS[name]
    return cls(**kw)


def test_litellm_exceptions_listed():
    """The module really exports the exception tree we test against (the check is not vacuous)."""
    names = _litellm_exception_classes()
    assert len(names) >= 30
    assert {"RateLimitError", "ContextWindowExceededError", "APIConnectionError"} <= set(names)


def test_every_litellm_exception_is_classified_deliberately():
    """Every exception class exported by litellm.exceptions gets a deliberate verdict."""
    unmapped = []
    for name, cls in sorted(_litellm_exception_classes().items()):
        c = classify(_build(cls))
        assert c.error_type == name
        if c.reason.startswith("unexpected error"):
            unmapped.append(name)
    assert not unmapped, f"litellm exceptions with no deliberate classification: {unmapped}"


@pytest.mark.parametrize(
    ("name", "retryable"),
    [("AuthenticationError", False), ("BadRequestError", False), ("NotFoundError", False),
     ("PermissionDeniedError", False), ("UnprocessableEntityError", False),
     ("RateLimitError", True), ("ServiceUnavailableError", True), ("InternalServerError", True),
     ("BadGatewayError", True), ("Timeout", True), ("APIConnectionError", True),
     ("UnsupportedParamsError", False), ("BudgetExceededError", False)],
)
def test_constructed_litellm_exceptions_verdicts(name, retryable):
    """litellm's classes built directly get the verdict their meaning calls for."""
    assert classify(_build(getattr(litellm.exceptions, name))).retryable is retryable
