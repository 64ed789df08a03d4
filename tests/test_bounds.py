"""Every bound holds, every argument is checked at the door (issue 16, the loop's part).

The timing assertions here are bounds far from the old behaviour (seconds past the deadline),
not speed measurements: ``benchmarks/deadlines.py`` measures how close to ``deadline=1.0``
each case ends (``benchmarks/results/deadlines.json``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from retrylib import ConfigError, RetryConfig, RetryExhaustedError, retry_with_validation
from retrylib import validators as V
from retrylib.client import make_call
from retrylib.testing import ScriptedCall, http_error
from retrylib.validators.base import ValidationResult

PROMPT = [{"role": "user", "content": "Say ok."}]
SLACK = 0.6  # far below the old overshoot (0.5-5 s), far above scheduling noise


def cfg(**kw):
    return RetryConfig(**{"max_attempts": 3, "initial_delay": 0, "max_delay": 0,
                          "jitter": "none", **kw})


class SlowValidator:
    name = "slow"

    def __init__(self, seconds):
        self.seconds = seconds

    async def validate(self, text, context):
        await asyncio.sleep(self.seconds)
        return ValidationResult.ok()


class BlockingValidator:
    """A plain (sync) validate that blocks."""

    name = "blocking"

    def validate(self, text, context):
        time.sleep(2.5)
        return ValidationResult.ok()


async def test_deadline_bounds_an_async_validator():
    """deadline=1.0 and a 3 s validator: the call ends at the deadline, reason deadline."""
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(ScriptedCall(["ok"]), PROMPT, [SlowValidator(3)],
                                    cfg(deadline=1.0))
    assert time.monotonic() - t < 1.0 + SLACK
    assert info.value.reason == "deadline" and "validated" in str(info.value)
    assert len(info.value.attempts) == 1


async def test_deadline_bounds_a_blocking_sync_validator():
    """A sync validate that blocks 2.5 s runs in a worker thread: the call ends on time."""
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError, match="deadline"):
        await retry_with_validation(ScriptedCall(["ok"]), PROMPT, [BlockingValidator()],
                                    cfg(deadline=1.0))
    assert time.monotonic() - t < 1.0 + SLACK


async def test_deadline_bounds_a_blocking_sync_call():
    """A plain call function that blocks 3 s: in a worker thread, bounded by the deadline."""

    def blocking(messages, **kw):
        time.sleep(3)
        return "late"

    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(blocking, PROMPT, None, cfg(deadline=1.0))
    assert time.monotonic() - t < 1.0 + SLACK
    assert info.value.reason == "deadline"
    assert info.value.attempts[0].error_type == "TimeoutError"


async def test_deadline_bounds_a_blocking_validator_inside_all_of():
    """A blocking sync validate beside another validator (run by AllOf) is bounded too: it
    used to block the event loop, and the valid answer came back 0.5 s past the deadline."""

    class Blocking15:
        name = "blocking_1_5"

        def validate(self, text, context):
            time.sleep(1.5)
            return ValidationResult.ok()

    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(ScriptedCall(["ok"]), PROMPT,
                                    [V.RegexMatch(r"ok"), Blocking15()], cfg(deadline=1.0))
    assert time.monotonic() - t < 1.0 + 0.3  # the old code ended at 1.5 s, with "ok"
    assert info.value.reason == "deadline"


def test_the_sync_entry_point_returns_at_the_deadline_over_a_stuck_call():
    """retry_with_validation_sync does not wait for the worker thread a deadline gave up on
    (asyncio.Runner joins its executor on close: the call returned at 2.0 s, not 1.0 s)."""
    from retrylib import retry_with_validation_sync

    def blocking(messages, **kw):
        time.sleep(2.5)
        return "late"

    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        retry_with_validation_sync(blocking, PROMPT, None, cfg(deadline=1.0))
    assert time.monotonic() - t < 1.0 + 0.8
    assert info.value.reason == "deadline"


@pytest.mark.parametrize("deadline", [None, 5.0])
async def test_a_plain_function_that_returns_an_awaitable_is_awaited(deadline):
    """``lambda messages, **kw: async_fn(...)`` is a plain function whose result is a
    coroutine: it is awaited, with and without a bound (it was taken for the response)."""

    async def answer(messages, **kw):
        await asyncio.sleep(0)
        return "ok"

    r = await retry_with_validation(lambda messages, **kw: answer(messages, **kw), PROMPT,
                                    [V.RegexMatch(r"^ok$")], cfg(deadline=deadline))
    assert r.content == "ok" and len(r.attempts) == 1


async def test_a_sync_call_without_bounds_runs_inline():
    """No deadline, no timeout: a plain call function is called directly (no thread)."""
    import threading

    seen = []

    def plain(messages, **kw):
        seen.append(threading.current_thread() is threading.main_thread())
        return "ok"

    r = await retry_with_validation(plain, PROMPT, None, cfg())
    assert r.content == "ok" and seen == [True]


async def test_sync_and_bool_validators_are_accepted():
    """A sync validate, or one that returns a bool, works (it used to raise TypeError)."""

    class SyncOk:
        name = "sync_ok"

        def validate(self, text, context):
            return ValidationResult.ok()

    class IsOk:
        name = "is_ok"

        def validate(self, text, context):
            return text == "ok"

    call = ScriptedCall(["no", "ok"])
    r = await retry_with_validation(call, PROMPT, [SyncOk(), IsOk()], cfg())
    assert r.content == "ok" and r.attempts[0].validation_errors == ("is_ok failed",)


async def _drip_server(seconds: float):
    """A real HTTP server on loopback that sends a valid completion one byte at a time,
    spread over ``seconds`` (each read is quick, the whole body is slow)."""
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "ok"}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                 "total_tokens": 2}}).encode()

    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next((ln.split(b":")[1] for ln in head.split(b"\r\n")
                               if ln.lower().startswith(b"content-length")), b"0"))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode())
            await writer.drain()
            for i in range(len(body)):
                writer.write(body[i:i + 1])
                await writer.drain()
                await asyncio.sleep(seconds / len(body))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_attempt_timeout_bounds_a_dripping_body():
    """attempt_timeout=1 and a body that drips for 4 s: the attempt is cut at ~1 s and
    recorded as a timeout (before, it succeeded after 4 s)."""
    server, port = await _drip_server(4.0)
    try:
        call = make_call("proxy/m", api_base=f"http://127.0.0.1:{port}/v1")
        t = time.monotonic()
        with pytest.raises(RetryExhaustedError) as info:
            await retry_with_validation(call, PROMPT, None, cfg(max_attempts=1, attempt_timeout=1))
        assert time.monotonic() - t < 1.0 + SLACK
        a = info.value.attempts[0]
        assert a.outcome == "transport_error" and a.retryable is True
        assert "attempt_timeout" in (a.error_message or "") or "imeout" in (a.error_type or "")
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("field,value", [
    ("initial_delay", math.inf), ("max_delay", math.inf), ("max_retry_after", math.inf),
    ("attempt_timeout", math.inf), ("deadline", math.inf), ("initial_delay", math.nan),
    ("tool_timeout", math.inf),
])
def test_infinite_values_are_config_errors(field, value):
    """inf and nan make no sense for a delay or a timeout: ConfigError names the field."""
    with pytest.raises(ConfigError, match=field):
        RetryConfig(**{field: value})


@pytest.mark.parametrize("kwargs,match", [
    ({"messages": "hello"}, r"messages must be a non-empty list of message dicts .*got str"),
    ({"messages": None}, r"messages must be a non-empty list .*got None"),
    ({"messages": []}, r"got list of length 0"),
    ({"messages": [{"content": "hi"}]}, r"messages\[0\] has no 'role'"),
    ({"messages": [{"role": "user", "content": None}]}, r"messages\[0\] \(user\) has no content"),
    ({"messages": [{"role": "user", "content": 3}]}, r"content must be a string or a list"),
    ({"messages": ["hi"]}, r"messages\[0\] must be a dict"),
    ({"validators": V.JsonObject()}, r"validators must be a list of validators, got JsonObject"),
    ({"config": 3}, r"config must be a RetryConfig"),
    ({"config": {"max_attempts": 0}}, r"max_attempts"),
])
async def test_arguments_are_checked_at_the_door(kwargs, match):
    """Each wrong argument is a ConfigError naming it, before any request."""
    call = ScriptedCall(["never"])
    args = {"messages": PROMPT, "validators": None, "config": None, **kwargs}
    with pytest.raises(ConfigError, match=match):
        await retry_with_validation(call, args["messages"], args["validators"], args["config"])
    assert call.calls == 0


async def test_a_config_dict_is_taken_as_a_retry_config():
    """config={...} builds a RetryConfig (it used to fail with an AttributeError)."""
    r = await retry_with_validation(ScriptedCall([http_error(503), "ok"]), PROMPT, None,
                                    {"max_attempts": 2, "initial_delay": 0, "max_delay": 0})
    assert r.content == "ok" and len(r.attempts) == 2


async def test_assistant_tool_call_messages_may_have_no_content():
    """An assistant message with tool_calls may carry content None (the OpenAI shape)."""
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "2"}]
    r = await retry_with_validation(ScriptedCall(["ok"]), msgs, None, cfg())
    assert r.content == "ok"


async def test_the_replay_is_capped():
    """Two 200 kB answers: the re-asks replay at most max_replay_chars of each, and the
    attempt record says how much was left out."""
    big = "x" * 200_000
    call = ScriptedCall([big, big, "ok"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch("^ok$")],
                                    cfg(max_replay_chars=5_000))
    sent = call.requests[2].messages
    assert len(json.dumps(sent)) < 4 * 5_000 + 2_000
    assert "characters left out of the replay" in sent[1]["content"]
    assert "max_replay_chars=5000" in (r.attempts[2].note or "")
    assert r.attempts[1].note and "attempt 1" in r.attempts[1].note
    unbounded = ScriptedCall([big, "ok"])
    await retry_with_validation(unbounded, PROMPT, [V.RegexMatch("^ok$")], cfg(max_replay_chars=None))
    assert unbounded.requests[1].messages[1]["content"] == big
