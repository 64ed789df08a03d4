"""The tool stage runs the tool (issue 14): the loop starts retrylib's run_python MCP server
once per call, offers its tools, runs the model's tool call, feeds the result back, validates
the final answer, and leaves no process behind, also after a cancel mid tool call."""

from __future__ import annotations

import asyncio
import json

import psutil
import pytest

from retrylib import RetryConfig, retry_with_validation
from retrylib import validators as V
from retrylib.testing import ScriptedCall
from retrylib.tools import default_debug_tool_config

PROMPT = [{"role": "user", "content": "What is 6 times 7? Answer with the number only."}]


def tool_call(code: str, call_id: str = "call_1") -> dict:
    """An OpenAI chat completion whose reply is one run_python tool call."""
    return {"id": "c", "object": "chat.completion", "model": "scripted",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": "run_python", "arguments": json.dumps({"code": code})}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def tool_config(**kw) -> RetryConfig:
    return RetryConfig(**{"max_attempts": 3, "initial_delay": 0, "max_delay": 0,
                          "max_attempts_before_tool_use": 1, "debug_tool_name": "run_python",
                          "debug_tool_mcp_config": default_debug_tool_config(timeout=30),
                          "tool_mode": "execute", **kw})


def _servers() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True)
            if "retrylib.tools.run_python" in " ".join(p.cmdline())]


async def test_the_tool_stage_runs_run_python_and_feeds_the_result_back():
    """41 fails; on the tool stage the model calls run_python, the result (42) reaches the
    next request in a user message, and the final answer passes. No server is left."""
    call = ScriptedCall(["41", tool_call("print(6 * 7)"), "42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")], tool_config())
    assert r.content == "42" and [a.stage for a in r.attempts] == ["normal", "tool"]
    (tc,) = r.attempts[1].tool_calls
    assert tc["name"] == "run_python" and tc["is_error"] is False and "42" in tc["text"]
    assert r.metrics["tool_calls"] == 1 and r.metrics["api_calls"] == 2
    offered = call.requests[1].kwargs
    # the first tool round forces the debug tool (tool_choice="force", the default)
    assert offered["tool_choice"] == {"type": "function", "function": {"name": "run_python"}}
    assert offered["tools"][0]["function"]["name"] == "run_python"
    assert "mcp_config" not in offered  # execute mode: nothing for a proxy to read
    sent = call.requests[2].messages
    results = [m for m in sent if m["role"] == "user" and "run_python" in m["content"]]
    assert results and "42" in results[-1]["content"]
    assert all(m.get("content") is not None for m in sent)  # never None (llama.cpp 500s)
    assert "tool round" in (r.attempts[1].note or "")
    assert _servers() == []


async def test_a_failing_tool_run_is_a_tool_error_the_model_sees():
    """Code that raises: the tool result is an error, and the model is told so."""
    call = ScriptedCall(["41", tool_call("raise SystemExit(3)"), "42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")], tool_config())
    (tc,) = r.attempts[1].tool_calls
    assert tc["is_error"] is True
    assert "ERROR" in call.requests[2].messages[-1]["content"]
    assert _servers() == []


async def test_no_server_starts_when_the_tool_stage_is_not_reached():
    """A call that passes at once never starts the MCP server."""
    call = ScriptedCall(["42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")], tool_config())
    assert r.content == "42" and r.attempts[0].tool_calls == () and _servers() == []


async def test_cancel_mid_tool_call_leaves_no_process():
    """The call is cancelled while run_python runs a 30 s sleep: the server and its child
    are gone afterwards."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    call = ScriptedCall(["41", tool_call("import time; time.sleep(30)"), "42"])
    task = asyncio.create_task(retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                                     tool_config(tool_timeout=60)))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if any("time.sleep(30)" in " ".join(p.cmdline()) for p in
               psutil.Process().children(recursive=True)):
            break
    else:
        pytest.fail("the tool never started running the code")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before
            and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []


async def test_inject_mode_is_the_default_and_still_sends_mcp_config():
    """The original design's mode: mcp_config on the request, no process started."""
    call = ScriptedCall(["41", "42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(tool_mode="inject"))
    assert r.attempts[1].mcp_config_sent and "mcp_config" in call.requests[1].kwargs
    assert "tools" not in call.requests[1].kwargs and _servers() == []


async def test_both_mode_injects_and_executes():
    """``both``: the config rides along and the tools run."""
    call = ScriptedCall(["41", tool_call("print(42)"), "42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(tool_mode="both"))
    assert r.attempts[1].mcp_config_sent and r.attempts[1].tool_calls
    assert "mcp_config" in call.requests[1].kwargs


async def test_auto_tool_choice_lets_the_model_choose():
    """``tool_choice="auto"``: no forced call; a plain answer in the round is the answer."""
    call = ScriptedCall(["41", "42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(tool_choice="auto"))
    assert call.requests[1].kwargs["tool_choice"] == "auto" and r.content == "42"
    assert r.attempts[1].tool_calls == ()
