"""run_tool_rounds: tools offered, the model's tool calls run through MCP, results fed back,
the final answer asked for; every measured pitfall handled.

The deterministic tests script the model's replies on the upstream-free fault proxy
(``tool_call:<name>:<arguments>``), so the tool call is fixed and the test reads, from the
proxy's journal, exactly what reached the next request. The end-to-end tests use the real
embedded model (SmolLM2 and Gemma, served with ``chatml-function-calling``) behind the
proxy, and a run_python server started by the test.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import psutil
import pytest
from processes import assert_all_gone, descendants

from retrylib import ConfigError, make_call
from retrylib.testing import ScriptedCall, reply
from retrylib.testing.chaos import ChaosProxy
from retrylib.testing.local import LocalModelServer
from retrylib.tools import ToolRounds, ToolSession, default_debug_tool_config, run_tool_rounds
from retrylib.tools.rounds import FINAL_ASK, parse_arguments, tool_calls_of, unescape_entities

pytestmark = pytest.mark.timeout(300)
TASK = [{"role": "user", "content": "Write a function `add(a, b)`. Reply with one ```python block."}]


def mcp_processes(before: set[int]) -> list[psutil.Process]:
    """The MCP server processes (and the code they run) started since ``before``."""
    out = []
    for p in descendants():
        try:
            line = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.pid not in before and ("retrylib.tools.run_python" in line or " -I -c " in f" {line} "):
            out.append(p)
    return out


@pytest.fixture
def proxy():
    """An upstream-free fault proxy: every reply is scripted."""
    with ChaosProxy(upstream=None, upstream_free=True) as p:
        yield p


@pytest.fixture
async def tools():
    """run_python (and check_json) in a ToolSession; no process left afterwards."""
    before = {p.pid for p in descendants()}
    async with ToolSession(default_debug_tool_config(timeout=5)) as session:
        yield session
    assert_all_gone(mcp_processes(before))


def bodies(proxy: ChaosProxy) -> list[dict[str, Any]]:
    """The request bodies the proxy received, in order."""
    return [e["body"] for e in proxy.journal()]


def call_of(proxy: ChaosProxy):
    """The proxy route (a plain OpenAI-compatible POST) to the fault proxy."""
    return make_call("proxy/scripted", api_base=proxy.url)


def tool_call(code: str, name: str = "run_python") -> str:
    return f"tool_call:{name}:{json.dumps({'code': code})}"


# -- the deterministic path ----------------------------------------------------------------

async def test_fixed_tool_call_result_reaches_the_next_request(proxy, tools):
    """The scripted call runs through MCP; its output is in the user message of the final
    request, which offers no tools; what was sent first offered them, described in a system
    message, with tool_choice auto."""
    proxy.set_plan([tool_call("print(6 * 7)"), "reply:```python\ndef add(a, b):\n    return a + b\n```"])
    r = await run_tool_rounds(call_of(proxy), TASK, {"max_tokens": 64}, tools, max_rounds=1)
    first, final = bodies(proxy)
    assert first["tool_choice"] == "auto" and {t["function"]["name"] for t in first["tools"]} == {
        "run_python", "check_json"}
    assert first["messages"][0]["role"] == "system" and "run_python(code: string)" in first["messages"][0]["content"]
    assert "tools" not in final and "tool_choice" not in final
    assert [m["role"] for m in final["messages"]] == ["user", "assistant", "user", "user"]
    assistant, results, ask = final["messages"][1:]
    assert assistant["content"] == "" and assistant["tool_calls"][0]["function"]["name"] == "run_python"
    assert "42" in results["content"] and "-> ok" in results["content"]
    assert ask["content"] == FINAL_ASK
    assert (r.requests, r.extra_requests, r.rounds, r.ended) == (2, 1, 1, "rounds_used")
    (rec,) = r.calls
    assert (rec.round, rec.name, rec.arguments, rec.text, rec.is_error) == (
        1, "run_python", {"code": "print(6 * 7)"}, "42\n", False)
    assert r.messages == final["messages"] and "def add" in (r.text or "")


async def test_plain_answer_in_a_tool_round_is_the_answer(proxy, tools):
    """After a tool round, a non-empty plain answer ends the rounds: no extra final request."""
    proxy.set_plan([tool_call("1 + 1"), "reply:the answer"])
    r = await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=3)
    assert (r.requests, r.ended, r.text, len(r.calls)) == (2, "answered", "the answer", 1)
    assert bodies(proxy)[1]["tool_choice"] == "auto"  # round 2 still offered the tools


async def test_empty_plain_answer_leads_to_a_final_request_without_tools(proxy, tools):
    """chatml-function-calling's "message" path answers "": the final request asks again."""
    proxy.set_plan(["empty", "reply:final"])
    r = await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=2)
    assert (r.requests, r.ended, r.text, r.calls) == (2, "no_tool_call", "final", [])
    assert "tools" in bodies(proxy)[0] and "tools" not in bodies(proxy)[1]


async def test_bounded_by_max_rounds_plus_one(proxy, tools):
    """A model that always calls a tool gets max_rounds rounds, then one final request."""
    proxy.set_plan([tool_call("1"), tool_call("2"), tool_call("3"), "reply:done"])
    r = await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=2)
    # The third reply calls a tool although none was offered: it is the answer, and has no text.
    assert (r.requests, r.rounds, r.ended, r.text) == (3, 2, "rounds_used", None)
    assert tool_calls_of(r.response)[0]["arguments"] == json.dumps({"code": "3"})
    assert [c.text for c in r.calls] == ["1\n", "2\n"]
    assert "tools" not in bodies(proxy)[2] and len(proxy.journal()) == 3


async def test_html_entities_in_arguments_and_final_text_are_unescaped(proxy, tools):
    """&#39; that chatml-function-calling's escaping made the model copy is undone before
    the code runs, and in the final text."""
    proxy.set_plan([tool_call("print(&#39;hi&#39;, &quot;x&quot;)"),
                    "reply:print(&#39;done&#39;) &amp; &lt;ok&gt;"])
    r = await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=1)
    assert r.calls[0].arguments == {"code": "print('hi', \"x\")"} and r.calls[0].text == "hi x\n"
    assert r.text == "print('done') & <ok>"
    assert unescape_entities("&copy; &#x41;") == "&copy; A"  # only the entities escaping makes


async def test_unparseable_arguments_are_a_tool_error_told_to_the_model(proxy, tools):
    """Arguments that are not JSON are not run as {}: the model is told, as an error."""
    proxy.set_plan(['tool_call:run_python:{"code": print(1)}', "reply:x"])
    r = await run_tool_rounds(call_of(proxy), TASK, {"max_tokens": 500}, tools, max_rounds=1)
    (rec,) = r.calls
    assert (rec.arguments, rec.is_error, rec.error, rec.duration) == (None, True, "bad_arguments", 0)
    results = bodies(proxy)[1]["messages"][2]["content"]
    assert "ERROR (bad_arguments)" in results and "not valid JSON" in results
    assert '{"code": print(1)}' in results


async def test_arguments_cut_at_max_tokens_are_reported_as_cut_short(proxy, tools):
    """finish_reason tool_calls with arguments that stop mid-string and completion_tokens at
    max_tokens: the model is told its call was cut off."""
    args = '{"code": "for i in range(3):\\n    print(i'
    proxy.set_plan([f"tool_call:run_python:{args}", "reply:x"])
    r = await run_tool_rounds(call_of(proxy), TASK, {"max_tokens": len(args.split())}, tools,
                              max_rounds=1)
    (rec,) = r.calls
    assert (rec.error, rec.arguments, rec.raw_arguments) == ("cut_short", None, args)
    assert "cut off at max_tokens" in bodies(proxy)[1]["messages"][2]["content"]


async def test_max_tokens_bound_in_the_route_also_marks_a_cut_reply(proxy, tools):
    """max_tokens set in make_call (the route's defaults), not per call: a reply that used
    all of it is still told apart from bad JSON, as cut short."""
    args = '{"code": "for i in range(3):\\n    print(i'
    proxy.set_plan([f"tool_call:run_python:{args}", "reply:x"])
    call = make_call("proxy/scripted", api_base=proxy.url, max_tokens=len(args.split()))
    r = await run_tool_rounds(call, TASK, {}, tools, max_rounds=1)
    assert (r.calls[0].error, r.calls[0].arguments) == ("cut_short", None)
    assert "cut off at max_tokens" in bodies(proxy)[1]["messages"][2]["content"]


async def test_tokens_of_every_request_are_summed_and_a_given_record_is_filled(proxy, tools):
    """ToolRounds sums the usage of the tool round and of the final request; with record=,
    that record is the one filled in and returned."""
    proxy.set_plan([tool_call("print(1)"), "reply:one two three"])
    record = ToolRounds(response=None, text=None)
    r = await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=1, record=record)
    words = [sum(len(str(m.get("content") or "").split()) for m in b["messages"])
             for b in bodies(proxy)]
    assert r is record and (r.requests, r.tokens_in, r.tokens_out) == (2, sum(words), 2 + 3)
    assert r.running is None and r.calls[0].text == "1\n"


async def test_raw_newlines_inside_json_strings_are_accepted(proxy, tools):
    """llama.cpp's grammar lets raw newlines into JSON strings; such code still runs."""
    proxy.set_plan(['tool_call:run_python:{"code": "x = 5\nprint(x * 2)"}', "reply:x"])
    r = await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=1)
    assert (r.calls[0].is_error, r.calls[0].text) == (False, "10\n")
    assert parse_arguments('{"a": "b\nc"}', cut=False) == ({"a": "b\nc"}, None, None)


async def test_unknown_tool_and_failing_code_are_told_back(proxy, tools):
    """A tool the session lacks and a non-zero exit both come back to the model as errors."""
    proxy.set_plan([tool_call("x", name="run_pyhton"), tool_call("raise KeyError('k')"), "reply:x"])
    r = await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=2)
    assert [c.error for c in r.calls] == ["unknown_tool", "tool_error"]
    second, third = bodies(proxy)[1], bodies(proxy)[2]
    assert "ERROR (unknown_tool)" in second["messages"][-1]["content"]
    results = third["messages"][-2]["content"]  # the final request ends with the ask
    assert "KeyError" in results and "exit code 1" in results


async def test_no_message_ever_has_content_none(proxy, tools):
    """Every message sent, in every request, has string content (None gives HTTP 500)."""
    proxy.set_plan([tool_call("1"), tool_call("2"), "reply:x"])
    await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=2)
    sent = [m for b in bodies(proxy) for m in b["messages"]]
    assert len(sent) > 6 and all(isinstance(m.get("content"), str) for m in sent)


async def test_tool_choice_is_never_required(proxy, tools):
    """A caller's tool_choice='required' (HTTP 500 on llama.cpp) and own tools are replaced."""
    proxy.set_plan(["empty", "reply:x"])
    await run_tool_rounds(call_of(proxy), TASK, {"tool_choice": "required", "tools": []}, tools)
    first = bodies(proxy)[0]
    assert first["tool_choice"] == "auto" and len(first["tools"]) == 2


async def test_force_tool_forces_the_first_round_only(proxy, tools):
    """force_tool names the function in round 1 (llama.cpp honours max_tokens then); later
    rounds are auto. An unknown name is a ConfigError."""
    proxy.set_plan([tool_call("1"), tool_call("2"), "reply:x"])
    await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=2, force_tool=True)
    choices = [b.get("tool_choice") for b in bodies(proxy)]
    assert choices == [{"type": "function", "function": {"name": "run_python"}}, "auto", None]
    with pytest.raises(ConfigError, match="force_tool 'nope'"):
        await run_tool_rounds(call_of(proxy), TASK, {}, tools, force_tool="nope")


async def test_response_format_only_on_the_final_request(proxy, tools):
    """A grammar would forbid the tool call: response_format waits for the final request."""
    proxy.set_plan([tool_call("1"), 'reply:{"a": 1}'])
    fmt = {"type": "json_object"}
    await run_tool_rounds(call_of(proxy), TASK, {"response_format": fmt}, tools, max_rounds=1)
    first, final = bodies(proxy)
    assert "response_format" not in first and final["response_format"] == fmt


async def test_inputs_are_not_changed_and_system_message_is_extended(proxy, tools):
    """The caller's messages and kwargs are left as they were; its system message is kept,
    with the tools appended in the tool rounds and without them in the final request."""
    messages = [{"role": "system", "content": "Be brief."}, *TASK]
    kwargs = {"max_tokens": 32, "temperature": 0}
    snapshot = json.dumps([messages, kwargs])
    proxy.set_plan([tool_call("1"), "reply:x"])
    await run_tool_rounds(call_of(proxy), messages, kwargs, tools, max_rounds=1)
    assert json.dumps([messages, kwargs]) == snapshot
    first, final = bodies(proxy)
    assert first["messages"][0]["content"].startswith("Be brief.\n\nYou can call these tools")
    assert final["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_on_request_sees_each_request_first_and_may_refuse(proxy, tools):
    """on_request is called before every request; raising in it stops the rounds, and the
    exception carries the rounds made so far."""
    seen: list[tuple[str, int]] = []

    async def budget(event: dict[str, Any]) -> None:
        seen.append((event["kind"], event["round"]))
        if len(seen) == 3:
            raise RuntimeError("budget exhausted")

    proxy.set_plan([tool_call("1"), tool_call("2"), "reply:x"])
    with pytest.raises(RuntimeError, match="budget exhausted") as info:
        await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=2, on_request=budget)
    assert seen == [("tool_round", 1), ("tool_round", 2), ("final", 3)]
    assert len(proxy.journal()) == 2  # the refused request was never sent
    partial = info.value.tool_rounds  # type: ignore[attr-defined]
    assert (partial.requests, [c.text for c in partial.calls]) == (2, ["1\n", "2\n"])


async def test_result_role_tool_sends_openai_tool_messages(proxy, tools):
    """result_role='tool' answers each call with a role tool message carrying its id."""
    proxy.set_plan([tool_call("7"), "reply:x"])
    await run_tool_rounds(call_of(proxy), TASK, {}, tools, max_rounds=1, result_role="tool")
    final = bodies(proxy)[1]["messages"]
    call_id = final[1]["tool_calls"][0]["id"]
    assert final[2] == {"role": "tool", "tool_call_id": call_id, "content": "7\n"}


async def test_bad_parameters_are_config_errors(tools):
    """max_rounds < 0, a tool_timeout <= 0 and an unknown result_role are refused."""
    call = ScriptedCall()
    for kw, msg in (({"max_rounds": -1}, "max_rounds"), ({"tool_timeout": 0}, "tool_timeout"),
                    ({"result_role": "system"}, "result_role")):
        with pytest.raises(ConfigError, match=msg):
            await run_tool_rounds(call, TASK, {}, tools, **kw)
    assert call.calls == 0


async def test_scripted_dicts_and_litellm_model_responses_work_in_process(tools):
    """With ScriptedCall (in-process), tool calls are read from an OpenAI dict and from a
    genuine litellm ModelResponse, and run."""
    import litellm

    calls = [{"id": "c1", "type": "function",
              "function": {"name": "run_python", "arguments": '{"code": "3 * 3"}'}}]
    model_response = litellm.ModelResponse(choices=[{
        "index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": None, "tool_calls": calls}}])
    for first in (reply(None, finish_reason="tool_calls", tool_calls=calls), model_response):
        call = ScriptedCall([first, "nine"])
        r = await run_tool_rounds(call, TASK, {"model": "m"}, tools, max_rounds=1)
        assert r.calls[0].text == "9\n" and r.text == "nine"
        assert "9" in call.requests[1].messages[2]["content"]
        assert call.requests[0].kwargs["tool_choice"] == "auto"
    assert tool_calls_of(reply("plain")) == []


async def test_tool_timeout_is_told_back_and_cancel_mid_tool_leaves_no_process(proxy):
    """A tool call past tool_timeout is an is_error result; cancelling the rounds while a
    tool runs, then closing the session, leaves no MCP process."""
    before = {p.pid for p in descendants()}
    async with ToolSession(default_debug_tool_config(timeout=60)) as session:
        proxy.set_plan([tool_call("import time; time.sleep(30)"), "reply:x"])
        r = await run_tool_rounds(call_of(proxy), TASK, {}, session, max_rounds=1, tool_timeout=0.5)
        assert r.calls[0].error == "timeout"
        assert "did not answer within 0.5 s" in bodies(proxy)[1]["messages"][2]["content"]
        proxy.clear()
        proxy.set_plan([tool_call("import time; time.sleep(30)"), "reply:x"])
        task = asyncio.create_task(run_tool_rounds(call_of(proxy), TASK, {}, session, max_rounds=1,
                                                   tool_timeout=60))
        await asyncio.sleep(2.0)
        running = mcp_processes(before)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(running) >= 2  # the server and the code it was running
    assert_all_gone(running)
    assert mcp_processes(before) == []


# -- end to end, on the real embedded model -------------------------------------------------

@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def tool_model(request):
    """The embedded model, also served as <alias>-tools under chatml-function-calling."""
    with LocalModelServer(request.param, tools=True, n_ctx=2048) as srv:
        yield srv


def test_tools_server_config_keeps_the_plain_alias_as_it_was(tmp_path):
    """tools=True serves the model as before plus <alias>-tools under chatml-function-calling;
    extra_args go into the config file (server keys at the top); odd ones are a ConfigError."""
    srv = LocalModelServer("gemma3", tools=True, port=5555, extra_args=("--interrupt_requests", "False"))
    config = srv.tools_config(tmp_path / "m.gguf")
    plain, tools = config["models"]  # type: ignore[misc]
    assert (plain["model_alias"], plain["chat_format"]) == ("gemma3", "gemma")
    assert (tools["model_alias"], tools["chat_format"]) == ("gemma3-tools", "chatml-function-calling")
    assert config["interrupt_requests"] == "False" and config["port"] == 5555
    assert srv.tools_model == "gemma3-tools" and LocalModelServer("smollm2").tools_model is None
    with pytest.raises(ConfigError, match="--name value pairs"):
        LocalModelServer("smollm2", tools=True, extra_args=("--verbose",))


async def test_real_model_calls_run_python_and_the_result_reaches_the_next_request(tool_model):
    """The model, offered run_python (first round forced), makes a real MCP tool call; the
    result is in the next request on the wire; the MCP server is gone afterwards."""
    before = {p.pid for p in descendants()}
    with ChaosProxy(upstream=tool_model.api_base) as proxy:
        call = make_call(f"openai/{tool_model.tools_model}", api_base=proxy.url)
        question = [{"role": "user", "content": "What is 12345 * 6789? Use run_python to compute it."}]
        async with ToolSession(default_debug_tool_config(tools=("run_python",))) as session:
            r = await run_tool_rounds(call, question, {"max_tokens": 96, "temperature": 0}, session,
                                      max_rounds=1, force_tool=True, tool_timeout=10)
            started = mcp_processes(before)
        journal = proxy.journal()
    assert len(started) >= 1
    assert_all_gone(started)
    assert r.requests == len(journal) == 2
    assert journal[0]["body"]["tool_choice"] == {"type": "function", "function": {"name": "run_python"}}
    assert r.calls, "the model made no tool call"
    rec = r.calls[0]
    assert rec.name == "run_python" and rec.arguments is not None, rec  # it parsed: it ran
    assert rec.error in (None, "tool_error", "timeout") and rec.duration > 0
    results = journal[1]["body"]["messages"][-2]["content"]
    assert results.startswith("Tool results:") and rec.text.strip()[:80] in results
    assert "tools" not in journal[1]["body"]
    assert isinstance(r.text, str)
    async with httpx.AsyncClient() as client:
        served = (await client.get(f"{tool_model.api_base}/models", timeout=10)).json()["data"]
    assert {m["id"] for m in served} == {tool_model.model, tool_model.tools_model}
