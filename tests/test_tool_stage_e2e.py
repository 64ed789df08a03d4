"""The tool stage end to end on the real embedded model (issue 14): a call that reaches the
tool stage makes a real MCP tool call through retrylib's loop; its result is in the next
request on the wire (the fault proxy's journal); no process is left afterwards: neither the
MCP server nor the ``python -I -c`` child that ran the model's code."""

from __future__ import annotations

import psutil
import pytest
from processes import assert_all_gone, descendants

from retrylib import RetryConfig, retry_with_validation
from retrylib.client import make_call
from retrylib.testing.chaos import ChaosProxy
from retrylib.testing.local import LocalModelServer
from retrylib.tools import default_debug_tool_config
from retrylib.validators.base import ValidationResult

QUESTION = [{"role": "user", "content": "What is 12345 * 6789? Use run_python to compute it, "
                                        "then answer with the number only."}]


class FirstAnswerFails:
    """Fails the first attempt whatever it says (so the call reaches the tool stage), then
    accepts any non-empty answer: the test is about the tool path, not the model's maths.
    On attempt 2 it notes the processes the tool stage left running (its MCP server), with
    their command lines read then (they are gone when the test reads them)."""

    name = "first_answer_fails"

    def __init__(self, before: set[int]):
        self.before = before
        self.seen: list[tuple[psutil.Process, str]] = []

    async def validate(self, text, context):
        if context.attempt == 2:
            self.seen = [(p, _cmdline(p)) for p in descendants() if p.pid not in self.before]
        if context.attempt == 1:
            return ValidationResult.fail("compute it with the tool first")
        return ValidationResult.ok() if text.strip() else ValidationResult.fail("empty answer")


@pytest.fixture(scope="module")
def tool_server():
    with LocalModelServer("smollm2", tools=True, n_ctx=2048) as srv:
        yield srv


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone since it was listed
        return ""


async def test_the_loop_runs_a_real_tool_call_for_the_real_model(tool_server):
    """Attempt 2 is on the tool stage: the model calls run_python, the MCP server runs it, the
    result is in the next request, and the server and the child that ran the code (``python
    -I -c``, a process of its own group) are gone when the call ends: no process this test
    started is left."""
    before = {p.pid for p in descendants()}  # the model server (the module's fixture) and such
    with ChaosProxy(upstream=tool_server.api_base) as proxy:
        call = make_call(f"openai/{tool_server.tools_model}", api_base=proxy.url,
                         max_tokens=96, temperature=0)
        config = RetryConfig(max_attempts=3, initial_delay=0, max_delay=0,
                             max_attempts_before_tool_use=1, debug_tool_name="run_python",
                             debug_tool_mcp_config=default_debug_tool_config(timeout=10),
                             tool_mode="execute", tool_max_rounds=1)
        validator = FirstAnswerFails(before)
        r = await retry_with_validation(call, QUESTION, [validator], config)
        journal = proxy.journal()
        left = [p for p in descendants() if p.pid not in before]
    assert [a.stage for a in r.attempts] == ["normal", "tool"]
    calls = r.attempts[1].tool_calls
    assert calls and calls[0]["name"] == "run_python" and calls[0]["arguments"] is not None
    assert calls[0]["duration"] > 0  # it ran in the MCP server
    # request 1: the plain attempt; 2: the forced tool round; 3: the final ask with the result
    assert len(journal) == 3
    assert journal[1]["body"]["tool_choice"]["function"]["name"] == "run_python"
    after = journal[2]["body"]["messages"]
    assert any(m["role"] == "user" and calls[0]["text"].strip()[:60] in m["content"] for m in after)
    assert "tools" not in journal[2]["body"]
    assert r.metrics["tool_calls"] == len(calls)
    assert r.attempts[1].requests == 2 and r.metrics["requests"] == 3
    # while the call ran, its MCP server was up (the code's child had ended with its call)
    assert any("retrylib.tools.run_python" in line for _, line in validator.seen), validator.seen
    assert left == [], [(p.pid, _cmdline(p)) for p in left]  # no server, no `python -I -c`
    assert_all_gone([p for p, _ in validator.seen])



SLOW_SERVER = """
import pathlib, sys, time
from mcp.server.mcpserver import MCPServer

server = MCPServer("slow", log_level="WARNING")


@server.tool(structured_output=False)
def run_python(code: str) -> str:
    \"\"\"Run Python code and return what it printed.\"\"\"
    pathlib.Path(sys.argv[1]).write_text("running")
    time.sleep(120)
    return "done"


server.run()
"""


async def test_cancelling_the_real_models_call_mid_tool_call_leaves_no_process(tool_server,
                                                                               tmp_path):
    """The real model is forced to call the tool (the first round forces debug_tool_name);
    the tool takes 120 s; the call is cancelled while the tool runs: the call ends within
    seconds, and no process the test started is left (the MCP server included)."""
    import asyncio
    import sys
    import time

    script, marker = tmp_path / "slow_server.py", tmp_path / "tool_running"
    script.write_text(SLOW_SERVER)
    before = {p.pid for p in descendants()}
    call = make_call(f"openai/{tool_server.tools_model}", api_base=tool_server.api_base,
                     max_tokens=96, temperature=0)
    config = RetryConfig(max_attempts=3, initial_delay=0, max_delay=0,
                         max_attempts_before_tool_use=1, debug_tool_name="run_python",
                         debug_tool_mcp_config={"mcpServers": {"slow": {
                             "command": sys.executable, "args": [str(script), str(marker)]}}},
                         tool_mode="execute", tool_max_rounds=1, tool_timeout=300)

    class AlwaysFails:
        name = "always_fails"

        async def validate(self, text, context):
            return ValidationResult.fail("compute it with the tool first")

    task = asyncio.create_task(retry_with_validation(call, QUESTION, [AlwaysFails()], config))
    for _ in range(1200):  # the tool runs once the model has answered the forced round
        await asyncio.sleep(0.1)
        if marker.exists() or task.done():
            break
    assert marker.exists(), "the model's tool call never reached the slow tool"
    servers = [p for p in descendants() if p.pid not in before]
    assert any("slow_server.py" in _cmdline(p) for p in servers)
    t = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t < 15
    assert_all_gone(servers)
    left = [p for p in descendants() if p.pid not in before]
    assert left == [], [(p.pid, _cmdline(p)) for p in left]
