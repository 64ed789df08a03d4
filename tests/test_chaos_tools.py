"""The fault proxy's scripted tool calls: ``tool_call:<name>:<arguments>`` replies.

They let a test fix the model's tool call, so the tool stage's whole path is deterministic
(upstream-free: no model is needed).
"""

from __future__ import annotations

import json

import httpx
import pytest

from retrylib import ConfigError
from retrylib.testing.chaos import ChaosProxy, parse_fault, parse_plan


def test_tool_call_token_keeps_name_and_arguments_verbatim():
    """The name is up to the second colon; the arguments are kept as written, colons included."""
    f = parse_fault('tool_call:run_python:{"code": "d = {1: 2}"}')
    assert (f.name, dict(f.options)["name"], f.content) == ("tool_call", "run_python",
                                                             '{"code": "d = {1: 2}"}')
    broken = parse_fault('tool_call:run_python:{"code": "print(1')
    assert broken.content == '{"code": "print(1'  # not validated: tests need bad JSON too


def test_bare_tool_call_and_missing_name():
    """A bare token calls tool 'tool' with {}; a token without a name is a ConfigError."""
    bare = parse_fault("tool_call")
    assert (dict(bare.options)["name"], bare.content) == ("tool", "{}")
    for token in ("tool_call:run_python", "tool_call::{}"):
        with pytest.raises(ConfigError, match="tool_call needs a name and arguments"):
            parse_fault(token)


def test_plan_list_items_may_hold_commas():
    """In a list plan each item is one token, so JSON arguments with commas survive."""
    plan = parse_plan(['tool_call:check_json:{"text": "[1, 2]", "schema": "{}"}', "reply:done"])
    assert [f.name for f in plan] == ["tool_call", "reply"]
    assert json.loads(plan[0].content or "") == {"text": "[1, 2]", "schema": "{}"}


def test_proxy_serves_a_tool_call_reply_as_llama_cpp_does():
    """The reply has content None, finish_reason tool_calls, and the call; the journal has it."""
    args = '{"code": "print(6 * 7)"}'
    with ChaosProxy(upstream=None, upstream_free=True) as proxy:
        proxy.set_plan([f"tool_call:run_python:{args}"])
        body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "max_tokens": 9}
        r = httpx.post(proxy.url + "/chat/completions", json=body, timeout=10).json()
        choice = r["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_chaos_")
        assert call["function"] == {"name": "run_python", "arguments": args}
        assert r["usage"]["completion_tokens"] == len(args.split())
        assert [e["fault"] for e in proxy.journal()] == [f"tool_call:run_python:{args}"]


def test_header_override_serves_a_tool_call():
    """X-Chaos-Fault: tool_call:... works as for any fault (the whole header is one token)."""
    with ChaosProxy(upstream=None, upstream_free=True) as proxy:
        r = httpx.post(proxy.url + "/chat/completions", timeout=10,
                       headers={"X-Chaos-Fault": 'tool_call:f:{"a": 1, "b": 2}'},
                       json={"model": "m", "messages": []}).json()
        assert r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"a": 1, "b": 2}'
