"""The tool stage end to end on the real embedded model (issue 14): a call that reaches the
tool stage makes a real MCP tool call through retrylib's loop; its result is in the next
request on the wire (the fault proxy's journal); no MCP process is left afterwards."""

from __future__ import annotations

import psutil
import pytest

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
    accepts any non-empty answer: the test is about the tool path, not the model's maths."""

    name = "first_answer_fails"

    async def validate(self, text, context):
        if context.attempt == 1:
            return ValidationResult.fail("compute it with the tool first")
        return ValidationResult.ok() if text.strip() else ValidationResult.fail("empty answer")


@pytest.fixture(scope="module")
def tool_server():
    with LocalModelServer("smollm2", tools=True, n_ctx=2048) as srv:
        yield srv


def _mcp_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "retrylib.tools.run_python" in " ".join(p.cmdline())]


async def test_the_loop_runs_a_real_tool_call_for_the_real_model(tool_server):
    """Attempt 2 is on the tool stage: the model calls run_python, the MCP server runs it, the
    result is in the next request, and the server is gone when the call ends."""
    with ChaosProxy(upstream=tool_server.api_base) as proxy:
        call = make_call(f"openai/{tool_server.tools_model}", api_base=proxy.url,
                         max_tokens=96, temperature=0)
        config = RetryConfig(max_attempts=3, initial_delay=0, max_delay=0,
                             max_attempts_before_tool_use=1, debug_tool_name="run_python",
                             debug_tool_mcp_config=default_debug_tool_config(timeout=10),
                             tool_mode="execute", tool_max_rounds=1)
        r = await retry_with_validation(call, QUESTION, [FirstAnswerFails()], config)
        journal = proxy.journal()
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
    assert r.metrics["tool_calls"] == len(calls) and _mcp_processes() == []
