"""The tool stage runs the tool (issue 14): the loop starts retrylib's run_python MCP server
once per call, offers its tools, runs the model's tool call, feeds the result back, validates
the final answer, and leaves no process behind, also after a cancel mid tool call."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import psutil
import pytest
from processes import assert_all_gone, descendants

from retrylib import RetryConfig, make_call, retry_with_validation
from retrylib import validators as V
from retrylib.budget import RetryBudget
from retrylib.errors import CallCapExceededError, RetryExhaustedError
from retrylib.state import MemoryStore
from retrylib.testing import ScriptedCall, http_error
from retrylib.testing.chaos import ChaosProxy
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
    out = []
    for p in descendants():
        try:
            if "retrylib.tools.run_python" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:  # gone since it was listed
            continue
    return out


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


# -- what an attempt of the tool stage records and counts (the audit of issue 14) ----------

def _new_processes(before: set[int]) -> list[psutil.Process]:
    return [p for p in descendants() if p.pid not in before]


def _words(body: dict) -> int:
    """The prompt tokens the fault proxy reports for a request body (its word count)."""
    return sum(len(str(m.get("content") or "").split()) for m in body["messages"])


@pytest.fixture
def proxy():
    """An upstream-free fault proxy: every reply is scripted."""
    with ChaosProxy(upstream=None, upstream_free=True) as p:
        yield p


async def test_every_request_of_the_tool_rounds_counts_in_the_attempts_tokens(proxy):
    """Over the fault proxy: the tool stage's attempt sends a tool round and a final request;
    its tokens are both requests' usage (not the final one's only), it records 2 requests,
    and the call's metrics add them up."""
    code = json.dumps({"code": "print(6 * 7)"})
    proxy.set_plan(["reply:41", f"tool_call:run_python:{code}", "reply:42"])
    call = make_call("proxy/scripted", api_base=proxy.url)
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(tool_max_rounds=1))
    first, tool_round, final = (e["body"] for e in proxy.journal())
    a1, a2 = r.attempts
    assert (a1.tokens_in, a1.tokens_out, a1.requests) == (_words(first), 1, 1)
    # completion tokens: the tool call's arguments (4 words), then "42" (1)
    assert (a2.tokens_in, a2.tokens_out, a2.requests) == (_words(tool_round) + _words(final), 5, 2)
    assert _words(tool_round) > _words(final) > 0  # the tool round's own tokens are in there
    assert (r.metrics["tokens_in"], r.metrics["tokens_out"]) == (a1.tokens_in + a2.tokens_in, 6)
    assert (r.metrics["api_calls"], r.metrics["requests"], r.metrics["total_api_calls"]) == (2, 3, 3)


async def test_the_call_cap_sees_the_tool_rounds_tokens():
    """A tool round that uses 1,500 tokens counts in max_total_tokens: the next attempt is
    refused (CallCapExceededError), not sent."""
    big = {**tool_call("print(1)"), "usage": {"prompt_tokens": 1000, "completion_tokens": 500,
                                              "total_tokens": 1500}}
    call = ScriptedCall(["41", big, "41", "42"])
    with pytest.raises(CallCapExceededError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(tool_max_rounds=1, max_total_tokens=1000))
    assert len(call.requests) == 3 and len(info.value.attempts) == 2
    assert info.value.attempts[1].tokens_in + info.value.attempts[1].tokens_out == 1509


async def test_a_failed_request_in_the_rounds_keeps_the_tool_calls_that_ran():
    """The tool round runs print(6 * 7); the final request then fails (HTTP 500): the
    attempt is a transport error that still records the tool call, the 2 requests, their
    tokens, and a note saying what the rounds did."""
    call = ScriptedCall(["41", tool_call("print(6 * 7)"), http_error(500)])
    before = {p.pid for p in descendants()}
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(max_attempts=2, tool_max_rounds=1))
    a = info.value.attempts[1]
    assert (a.stage, a.outcome, a.status_code) == ("tool", "transport_error", 500)
    (tc,) = a.tool_calls
    assert (tc["name"], tc["text"], tc["is_error"]) == ("run_python", "42\n", False)
    assert (a.requests, a.tokens_in, a.tokens_out) == (2, 10, 5)  # the tool round's usage
    assert "1 tool call(s), 2 request(s) before it failed" in (a.note or "")
    assert a.to_dict()["tool_calls"][0]["text"] == "42\n"
    assert_all_gone(_new_processes(before))


async def test_the_mcp_server_starts_once_for_all_the_tool_stage_attempts():
    """Two attempts on the tool stage (the first final answer fails again): one run_python
    server serves both; each tool call reports the same parent (the server), and at each
    request of the tool stage exactly one server process is running."""
    seen: list[set[int]] = []

    def serve(item):
        def item_fn(messages, **kw):
            seen.append({p.pid for p in _servers()})
            return item
        return item_fn

    ppid = "import os; print(os.getppid())"
    call = ScriptedCall(["41", serve(tool_call(ppid)), serve("41"), serve(tool_call(ppid)),
                         serve("42")])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(tool_max_rounds=1))
    assert [a.stage for a in r.attempts] == ["normal", "tool", "tool"]
    parents = {int(a.tool_calls[0]["text"]) for a in r.attempts[1:]}
    assert len(seen) == 4 and all(len(s) == 1 for s in seen) and len(set().union(*seen)) == 1
    assert parents == set().union(*seen)  # the code ran as a child of that one server
    assert _servers() == []


async def test_attempt_timeout_mid_tool_call_ends_the_attempt_and_leaves_no_process(proxy):
    """Over the fault proxy with make_call (a route that bounds each request itself): round 1
    runs print(1), round 2's code sleeps 30 s; attempt_timeout=4 ends the attempt at 4 s, not
    at the tool's end. The record keeps the call that ran and notes the one in flight; the
    server and the child running the code are gone."""
    before = {p.pid for p in descendants()}
    proxy.set_plan(["reply:41", f"tool_call:run_python:{json.dumps({'code': 'print(1)'})}",
                    f"tool_call:run_python:{json.dumps({'code': 'import time; time.sleep(30)'})}",
                    "reply:42"])
    call = make_call("proxy/scripted", api_base=proxy.url)
    t0 = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")], tool_config(
            max_attempts=2, attempt_timeout=4, tool_timeout=60, tool_max_rounds=2))
    took = time.monotonic() - t0
    a = info.value.attempts[1]
    assert a.outcome == "transport_error" and "attempt_timeout" in (a.error_message or "")
    assert took < 15, took
    assert [c["text"] for c in a.tool_calls] == ["1\n"] and a.requests == 2
    assert "run_python was running when it ended" in (a.note or "")
    assert len(proxy.journal()) == 3  # the final request was never sent
    assert_all_gone(_new_processes(before))


async def test_the_deadline_mid_tool_call_ends_the_call_and_leaves_no_process():
    """deadline=5 passes while run_python runs a 30 s sleep: the call ends on time with
    RetryExhaustedError(deadline); no server and no code-running child is left."""
    before = {p.pid for p in descendants()}
    running: list[psutil.Process] = []

    def then_sleep(messages, **kw):
        running.extend(_servers())  # the server, before the code starts
        return tool_call("import time; time.sleep(30)")

    call = ScriptedCall(["41", then_sleep, "42"])
    t0 = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")], tool_config(
            deadline=5, tool_timeout=60, tool_max_rounds=1))
    took = time.monotonic() - t0
    assert info.value.reason == "deadline" and 4.5 < took < 12, took
    a = info.value.attempts[1]
    assert a.stage == "tool" and "run_python was running when it ended" in (a.note or "")
    assert len(running) == 1
    assert_all_gone(running)
    assert _new_processes(before) == []


async def test_tool_round_requests_draw_on_the_retry_budget():
    """With a RetryBudget (MemoryStore): the tool stage's attempt is a re-ask (1 token), and
    its second tool round and its final request are 2 more; the first round is the attempt's
    own request. 10 - 3 + 0.1 (the success) = 7.1."""
    budget = RetryBudget(max_tokens=10, token_ratio=0.1, store=MemoryStore())
    call = ScriptedCall(["41", tool_call("print(1)"), tool_call("print(2)"), "42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(budget=budget, tool_max_rounds=2))
    assert len(call.requests) == 4 and r.attempts[1].requests == 3
    assert await budget.level("scripted") == pytest.approx(7.1)
    assert r.attempts[1].budget_level == pytest.approx(7.1)


async def test_a_server_that_fails_to_start_is_not_started_again_in_the_call(tmp_path):
    """The server exits at once: the first tool-stage attempt goes without tools and says
    why; the next one does not spawn it again, and says so."""
    starts = tmp_path / "starts"
    config = {"mcpServers": {"broken": {"command": sys.executable, "args": [
        "-c", f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"]}}}
    call = ScriptedCall(["41", "41", "42"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(debug_tool_mcp_config=config))
    assert [a.stage for a in r.attempts] == ["normal", "tool", "tool"]
    assert starts.read_text() == "x"
    assert "the MCP servers did not start (ToolServerError" in (r.attempts[1].note or "")
    assert "did not start earlier in this call" in (r.attempts[2].note or "")
    assert "tools" not in call.requests[1].kwargs and "tools" not in call.requests[2].kwargs


async def test_server_start_up_is_bounded_by_the_calls_deadline():
    """A server that never answers initialize: with deadline=3 the call ends at about 3 s
    (not after the 30 s start-up timeout), and the process is stopped."""
    mute = {"mcpServers": {"mute": {"command": sys.executable,
                                    "args": ["-c", "import time; time.sleep(60)"]}}}
    before = {p.pid for p in descendants()}
    call = ScriptedCall(["41", "42"])
    t0 = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch(r"^42$")],
                                    tool_config(debug_tool_mcp_config=mute, deadline=3))
    assert time.monotonic() - t0 < 10 and info.value.reason == "deadline"
    a = info.value.attempts[-1]
    assert "the MCP servers did not start within the" in (a.note or "")
    assert "deadline passed while the MCP servers were starting" in (a.error_message or "")
    assert len(call.requests) == 1  # nothing was sent past the deadline
    assert_all_gone(_new_processes(before))
