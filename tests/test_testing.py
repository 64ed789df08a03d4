"""The in-process test tools themselves: ``ScriptedCall``, the genuine exceptions, ``set_testing``.

They are the seam ``tests/test_loop.py`` stands on, so each promise they make (what a script
item becomes, what is recorded, which class a status becomes, how classify reads it) is
checked here, in process.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import pickle
import time

import httpx
import litellm
import openai
import pytest

from retrylib import ConfigError, ProxyHTTPError
from retrylib.classify import classify
from retrylib.extract import extract_finish_reason, extract_text, extract_usage
from retrylib.testing import (
    Delay,
    Request,
    ScriptedCall,
    ScriptExhausted,
    Text,
    connection_error,
    connection_refused,
    connection_reset,
    http_error,
    is_testing,
    reply,
    scripted,
    set_testing,
    timeout_error,
)
from retrylib.testing.exceptions import headers_of
from retrylib.testing.mode import MODE

MSGS = [{"role": "user", "content": "hi"}]
STATUSES = (400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504)
LITELLM_NAMES = {400: "BadRequestError", 401: "AuthenticationError", 403: "APIError",
                 404: "NotFoundError", 408: "Timeout", 409: "APIError", 422: "BadRequestError",
                 429: "RateLimitError", 500: "InternalServerError", 502: "BadGatewayError",
                 503: "ServiceUnavailableError", 504: "Timeout"}
OPENAI_NAMES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                404: "NotFoundError", 408: "APIStatusError", 409: "ConflictError",
                422: "UnprocessableEntityError", 429: "RateLimitError",
                500: "InternalServerError", 502: "InternalServerError",
                503: "InternalServerError", 504: "InternalServerError"}


@pytest.fixture(autouse=True)
def _restore_mode():
    """Every test starts and ends outside test mode, whatever it did."""
    old = (MODE.testing, MODE.attempts)
    MODE.testing, MODE.attempts = False, None
    yield
    MODE.testing, MODE.attempts = old


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


# -- ScriptedCall: what it records -------------------------------------------------------------

async def test_requests_record_deep_copies_of_messages_and_kwargs():
    """Later edits to what was sent do not change the recorded request."""
    call = ScriptedCall(["a"])
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    headers = {"X-Key": "1"}
    await call(messages=messages, temperature=0.1, extra_headers=headers)
    messages[0]["content"][0]["text"] = "changed"
    messages.append({"role": "user", "content": "more"})
    headers["X-Key"] = "2"
    req = call.requests[0]
    assert isinstance(req, Request) and req.number == 1
    assert req.messages == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert req.kwargs == {"temperature": 0.1, "extra_headers": {"X-Key": "1"}}


async def test_requests_are_numbered_and_timed_in_order():
    """Requests get the next number and a monotonic arrival time; ``last`` is the last content."""
    call = ScriptedCall(["a", "b"])
    before = time.monotonic()
    await call(MSGS)
    await call([*MSGS, {"role": "user", "content": "again"}])
    first, second = call.requests
    assert (first.number, second.number) == (1, 2)
    assert before <= first.at <= second.at <= time.monotonic()
    assert (first.last, second.last) == ("hi", "again")
    assert call.calls == 2 and call.remaining == 0


async def test_last_of_an_empty_conversation_is_empty():
    """``Request.last`` is an empty string when no messages were sent."""
    call = ScriptedCall(["a"])
    await call([])
    assert call.requests[0].last == ""


# -- ScriptedCall: what each item becomes ------------------------------------------------------

async def test_a_str_item_becomes_an_openai_reply_naming_the_requested_model():
    """A str is served as an OpenAI chat completion; its model is the request's or the call's."""
    call = ScriptedCall(["one", "two"], model="m-default")
    out1 = await call(MSGS)
    out2 = await call(MSGS, model="openai/other")
    assert extract_text(out1) == "one" and out1["object"] == "chat.completion"
    assert out1["model"] == "m-default" and out2["model"] == "openai/other"
    assert out1["choices"][0]["finish_reason"] == "stop"


async def test_a_dict_item_is_served_as_a_copy():
    """A dict is served as is, but a copy: editing the served reply does not change the script."""
    item = reply("same", tokens=(1, 1))
    call = ScriptedCall([], then=item)
    first = await call(MSGS)
    first["choices"][0]["message"]["content"] = "edited"
    second = await call(MSGS)
    assert extract_text(second) == "same"
    assert second == item


async def test_exception_instances_and_classes_are_raised():
    """An exception instance is raised as is; an exception class is instantiated and raised."""
    err = http_error(503)
    call = ScriptedCall([err, KeyError])
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        await call(MSGS)
    assert info.value is err
    with pytest.raises(KeyError):
        await call(MSGS)
    assert call.calls == 2


async def test_then_serves_forever_once_the_script_is_used_up():
    """``then=`` is served for every request after the script's own items."""
    call = ScriptedCall(["first"], then="again")
    texts = [extract_text(await call(MSGS)) for _ in range(4)]
    assert texts == ["first", "again", "again", "again"]
    assert call.remaining == 0 and call.calls == 4


async def test_a_used_up_script_raises_script_exhausted_with_the_counts():
    """Without ``then=``, one request too many raises ScriptExhausted naming both counts."""
    call = ScriptedCall(["only"])
    await call(MSGS)
    with pytest.raises(ScriptExhausted) as info:
        await call(MSGS)
    assert str(info.value) == "ScriptedCall: the script has 1 item(s), but request 2 came"
    assert isinstance(info.value, AssertionError)
    assert call.calls == 2  # the surplus request is still recorded


async def test_an_empty_script_raises_on_the_first_request():
    """A script of no items raises ScriptExhausted at once."""
    with pytest.raises(ScriptExhausted, match="has 0 item"):
        await ScriptedCall()(MSGS)


async def test_delay_waits_then_serves_its_item():
    """``Delay(s, item)`` answers after ``s`` seconds with ``item`` (default ``"OK"``)."""
    call = ScriptedCall([Delay(0.03, "late"), Delay(0.0)])
    t = time.monotonic()
    out = await call(MSGS, timeout=1.0)
    assert time.monotonic() - t >= 0.028
    assert extract_text(out) == "late"
    assert extract_text(await call(MSGS)) == "OK"


async def test_delay_can_raise_after_waiting():
    """A Delay wrapping an exception raises it after the wait."""
    call = ScriptedCall([Delay(0.02, http_error(502))])
    t = time.monotonic()
    with pytest.raises(litellm.BadGatewayError):
        await call(MSGS)
    assert time.monotonic() - t >= 0.018


@pytest.mark.parametrize("route,cls", [
    ("proxy", httpx.ReadTimeout),
    ("litellm", litellm.Timeout),
    ("openai", openai.APITimeoutError),
], ids=["proxy", "litellm", "openai"])
async def test_delay_beyond_the_timeout_raises_the_routes_timeout_error_at_the_timeout(route, cls):
    """A Delay longer than the ``timeout`` kwarg raises the route's timeout error at the timeout."""
    call = ScriptedCall([Delay(5.0, "never")], route=route)
    t = time.monotonic()
    with pytest.raises(cls) as info:
        await call(MSGS, timeout=0.03)
    elapsed = time.monotonic() - t
    assert 0.028 <= elapsed < 0.5
    assert classify(info.value).retryable is True


async def test_an_endless_delay_hangs_until_the_timeout():
    """``Delay(inf)`` with a timeout raises the timeout error after that timeout."""
    call = ScriptedCall([Delay(float("inf"))])
    t = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await call(MSGS, timeout=0.02)
    assert time.monotonic() - t < 0.5


async def test_an_endless_delay_without_timeout_waits_for_a_cancel():
    """``Delay(inf)`` without a timeout hangs until the caller cancels it."""
    call = ScriptedCall([Delay(float("inf"))])
    task = asyncio.create_task(call(MSGS))
    await asyncio.sleep(0.02)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_sync_and_async_callables_get_the_request_and_serve_their_result():
    """A callable item is called with the messages and kwargs; its (awaited) result is served."""
    seen = []

    def sync_item(messages, **kw):
        seen.append(("sync", messages[-1]["content"], kw))
        return reply("from sync", tokens=(2, 2))

    async def async_item(messages, **kw):
        await asyncio.sleep(0)
        seen.append(("async", messages[-1]["content"], kw))
        return {"choices": [{"message": {"content": "from async"}}]}

    call = ScriptedCall([sync_item, async_item])
    assert extract_text(await call(MSGS, temperature=0)) == "from sync"
    assert extract_text(await call(MSGS, seed=3)) == "from async"
    assert seen == [("sync", "hi", {"temperature": 0}), ("async", "hi", {"seed": 3})]


async def test_a_callables_result_is_served_as_an_item():
    """What a callable returns is itself an item: an exception is raised, a Delay waits."""
    call = ScriptedCall([lambda m, **k: http_error(429), lambda m, **k: Delay(0.01, "waited")])
    with pytest.raises(litellm.RateLimitError):
        await call(MSGS)
    assert extract_text(await call(MSGS)) == "waited"


async def test_verdicts_name_the_request_whose_messages_they_judge():
    """``accept``/``reject`` record the number of the request that was sent those messages."""
    call = ScriptedCall(["a", "b"])
    first, second = [dict(m) for m in MSGS], [dict(m) for m in MSGS]
    await call(first)
    await call(second)
    call.reject(messages=first, model="x")
    call.accept(messages=second)
    call.accept(messages=[{"role": "user", "content": "never sent"}])
    assert call.verdicts == [("reject", 1), ("accept", 2), ("accept", 0)]


async def test_scripted_builds_a_scripted_call():
    """``scripted(*items, then=..., **options)`` is ``ScriptedCall`` with the items as a list."""
    call = scripted("a", then="z", model="mini", route="openai")
    assert (call.model, call.route) == ("mini", "openai")
    assert [extract_text(await call(MSGS)) for _ in range(2)] == ["a", "z"]


# -- reply -------------------------------------------------------------------------------------

def test_reply_openai_shape():
    """``reply`` builds an OpenAI completion with content, finish reason, usage and tool calls."""
    tc = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    r = reply("three little words", finish_reason="length", model="m", tool_calls=tc)
    assert extract_text(r) == "three little words"
    assert extract_finish_reason(r) == "length" and r["model"] == "m"
    assert extract_usage(r) == (8, 3)  # by default: 8 in, a word count out
    assert r["usage"]["total_tokens"] == 11
    assert r["choices"][0]["message"]["tool_calls"] == tc
    assert "tool_calls" not in reply("x")["choices"][0]["message"]


def test_reply_anthropic_shape():
    """``shape="anthropic"``: a messages dict; ``length`` becomes ``max_tokens``."""
    r = reply("hello", shape="anthropic", tokens=(3, 1))
    assert r["type"] == "message" and r["content"] == [{"type": "text", "text": "hello"}]
    assert extract_text(r) == "hello" and extract_usage(r) == (3, 1)
    assert extract_finish_reason(r) == "stop"
    cut = reply("hel", shape="anthropic", finish_reason="length")
    assert cut["stop_reason"] == "max_tokens" and extract_finish_reason(cut) == "length"
    assert reply(None, shape="anthropic")["content"] == []


def test_reply_text_shape_and_none_content():
    """``shape="text"`` is a Text (served as the bare string); ``None`` content has no text."""
    assert reply("plain", shape="text") == Text("plain")
    r = reply(None)
    assert r["choices"][0]["message"]["content"] is None
    assert extract_usage(r) == (8, 0)


# -- the genuine exceptions --------------------------------------------------------------------

@pytest.mark.parametrize("status", STATUSES)
def test_litellm_route_class_follows_the_table_and_classifies_like_its_status(status):
    """Each status becomes litellm's class for it, with a real response; classify agrees."""
    exc = http_error(status)
    assert type(exc).__name__ == LITELLM_NAMES[status]
    assert isinstance(exc, getattr(litellm, LITELLM_NAMES[status]))
    assert exc.status_code == status
    assert isinstance(exc.response, httpx.Response) and exc.response.status_code == status
    verdict, by_status = classify(exc), classify(status)
    assert verdict.retryable == by_status.retryable
    assert verdict.status_code == status == by_status.status_code
    assert "scripted HTTP" in str(exc)


@pytest.mark.parametrize("status", STATUSES)
def test_openai_route_class_follows_the_sdk_and_classifies_like_its_status(status):
    """On the openai route each status becomes the openai SDK's class; classify agrees."""
    exc = http_error(status, route="openai")
    assert type(exc).__name__ == OPENAI_NAMES[status]
    assert isinstance(exc, openai.APIStatusError)
    assert exc.status_code == status and exc.response.status_code == status
    assert classify(exc).retryable == classify(status).retryable
    assert classify(exc).status_code == status


@pytest.mark.parametrize("status", STATUSES)
def test_proxy_route_is_retrylibs_proxy_error_and_classifies_like_its_status(status):
    """On the proxy route each status is a ProxyHTTPError with that status; classify agrees."""
    exc = http_error(status, route="proxy", body="nope")
    assert type(exc) is ProxyHTTPError and exc.status_code == status and exc.body == "nope"
    assert classify(exc).retryable == classify(status).retryable
    assert classify(exc).status_code == status
    assert pickle.loads(pickle.dumps(exc)).status_code == status


@pytest.mark.parametrize("route", ["litellm", "openai", "proxy"])
@pytest.mark.parametrize("headers,seconds", [
    ({"retry-after": "2"}, 2.0),
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
], ids=["seconds", "capitalised", "ms", "ms-wins"])
def test_headers_reach_classifys_retry_after(route, headers, seconds):
    """Headers given to ``http_error`` reach ``classify(exc).retry_after`` on every route."""
    exc = http_error(429, headers=headers, route=route)
    verdict = classify(exc)
    assert verdict.retry_after == seconds and verdict.retryable
    lowered = {k.lower(): v for k, v in headers.items()}
    assert {k: headers_of(exc)[k] for k in lowered} == lowered


@pytest.mark.parametrize("route", ["litellm", "openai", "proxy"])
def test_x_should_retry_header_reaches_classify(route):
    """``x-should-retry`` given to ``http_error`` overrides the table in ``classify``."""
    stop = http_error(503, headers={"x-should-retry": "false"}, route=route)
    go = http_error(400, headers={"x-should-retry": "true"}, route=route)
    assert classify(stop).retryable is False and classify(go).retryable is True


def test_no_headers_means_no_retry_after():
    """Without headers ``classify`` finds no Retry-After."""
    assert classify(http_error(429)).retry_after is None
    assert headers_of(http_error(503, route="openai")).get("retry-after") is None


def test_connection_refused_hides_behind_a_litellm_500():
    """litellm's refused connection: InternalServerError 500 with ConnectionRefusedError beneath."""
    exc = connection_refused()
    assert type(exc) is litellm.InternalServerError and exc.status_code == 500
    chain = _chain(exc)
    assert any(type(link) is ConnectionRefusedError for link in chain)
    assert [type(link).__name__ for link in chain] == [
        "InternalServerError", "APIConnectionError", "ConnectError", "ConnectionRefusedError"]
    verdict = classify(exc)
    assert verdict.reason == "connection refused" and verdict.retryable
    assert verdict.status_code == 500


@pytest.mark.parametrize("route,cls", [
    ("openai", openai.APIConnectionError),
    ("proxy", httpx.ConnectError),
])
def test_connection_refused_on_the_openai_and_proxy_routes(route, cls):
    """The openai route raises APIConnectionError, the proxy httpx.ConnectError, refused beneath."""
    exc = connection_refused(route)
    assert type(exc) is cls
    assert isinstance(_chain(exc)[-1], ConnectionRefusedError)
    assert classify(exc).reason == "connection refused" and classify(exc).retryable


def test_connection_error_keeps_any_os_error_at_the_bottom():
    """``connection_error(cause)`` chains the given OSError; classify finds it."""
    exc = connection_error(ConnectionResetError(104, "reset"))
    assert isinstance(_chain(exc)[-1], ConnectionResetError)
    assert classify(exc).reason == "connection reset"


def test_connection_reset_is_a_plain_socket_error():
    """``connection_reset()`` is a bare ConnectionResetError (errno 104), retryable as a reset."""
    exc = connection_reset()
    assert type(exc) is ConnectionResetError and exc.errno == 104
    assert exc.__cause__ is None and exc.__context__ is None
    verdict = classify(exc)
    assert verdict.retryable and verdict.reason == "connection reset"


@pytest.mark.parametrize("route,cls", [
    ("litellm", litellm.Timeout),
    ("openai", openai.APITimeoutError),
    ("proxy", httpx.ReadTimeout),
])
def test_timeout_error_per_route(route, cls):
    """``timeout_error(route)`` is that route's timeout class, and it is retryable."""
    exc = timeout_error(route)
    assert type(exc) is cls
    assert classify(exc).retryable is True


# -- set_testing -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_set_testing_rejects_attempts_that_are_not_positive_integers(bad):
    """``attempts`` must be a positive int (not a bool): anything else is a ConfigError."""
    with pytest.raises(ConfigError, match="attempts must be a positive integer"):
        set_testing(True, attempts=bad)
    assert not is_testing() and MODE.attempts is None  # the failed call changed nothing


def test_set_testing_as_a_context_manager_restores_the_old_mode():
    """Leaving ``with set_testing(...)`` restores the previous mode, even on an exception."""
    with set_testing(True, attempts=2):
        assert is_testing() and MODE.attempts == 2
    assert not is_testing() and MODE.attempts is None
    with pytest.raises(RuntimeError), set_testing(True):
        raise RuntimeError("boom")
    assert not is_testing()


def test_set_testing_nests():
    """Nested ``set_testing`` blocks each restore the mode of the block around them."""
    with set_testing(True, attempts=3):
        with set_testing(False):
            assert not is_testing() and MODE.attempts is None
            with set_testing(True):
                assert is_testing() and MODE.attempts is None
            assert not is_testing()
        assert is_testing() and MODE.attempts == 3
    assert not is_testing() and MODE.attempts is None


def test_set_testing_without_with_keeps_the_mode_until_restored():
    """Ignoring the returned object keeps the mode; using it later restores the old one."""
    restore = set_testing(True, attempts=4)
    assert is_testing() and MODE.attempts == 4
    assert "restores" in repr(restore)
    with restore:
        pass
    assert not is_testing() and MODE.attempts is None


def test_attempts_are_ignored_when_testing_is_off():
    """``set_testing(False, attempts=2)`` turns test mode off and caps nothing."""
    with set_testing(True, attempts=5), set_testing(False, attempts=2):
        assert not is_testing() and MODE.attempts is None
