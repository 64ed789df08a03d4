"""retrylib's run_python MCP server: REPL-style output, limits, errors, and no process left behind.

The server is started by the tests themselves, as the tool stage starts it: through
:class:`retrylib.tools.ToolSession` over stdio from :func:`default_debug_tool_config`. The
process table is read with psutil before and after each session closes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import psutil
import pytest
from processes import assert_all_gone, descendants

from retrylib.tools import ToolSession, default_debug_tool_config
from retrylib.tools.run_python import clamp, execute, repl_source

pytestmark = pytest.mark.timeout(120)


# -- the code runner, in process -------------------------------------------------------------

def test_repl_source_prints_a_trailing_expression():
    """Only a last expression statement is rewritten, and its source is kept as written."""
    assert "displayhook" in repl_source("x = 2\nx * 21")
    assert repl_source("x = 2") == "x = 2"
    assert repl_source("def f(:") == "def f(:"  # Python reports the syntax error itself
    assert repl_source("a = 'é'; a + 'ü'").startswith("a = 'é'; __retrylib_value__ = (a + 'ü')")


def test_clamp_bounds_junk_values():
    """Timeouts a tiny model might invent (1e15, -1, NaN, text) are clamped into the range."""
    bounds = (0.1, 120.0)
    assert [clamp(v, bounds) for v in (1e15, -1, float("nan"), "x", 5)] == [120.0, 0.1, 0.1, 0.1, 5.0]


async def test_execute_reports_the_value_exit_code_and_output():
    """A trailing expression prints like the REPL; None prints nothing; exit codes come back."""
    assert await execute("x = 6\nx * 7") == (0, "42\n", False)
    assert await execute("print('a')\nNone") == (0, "a\n", False)
    code, text, _ = await execute("raise ValueError('nope')")
    assert code == 1 and "ValueError: nope" in text


async def test_execute_caps_output_and_says_so():
    """Output past the cap is dropped and counted, and the answer says it was truncated."""
    code, text, cut = await execute("print('y' * 50000)", max_output=1000)
    assert code == 0 and cut
    assert text.startswith("y" * 1000) and "[output truncated: 50001 bytes, only the first 1000" in text


async def test_execute_timeout_kills_the_childs_process_group():
    """On timeout the code and a process it started itself are both killed."""
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)")
    exit_code, text, _ = await execute(code, timeout=1.5)
    assert exit_code is None
    grandchild = int(text.split()[0])
    assert_all_gone([psutil.Process(grandchild)] if psutil.pid_exists(grandchild) else [])


def test_execute_runs_isolated_in_a_temporary_folder():
    """python -I ignores PYTHON* variables and user site; the folder is fresh and removed."""
    code, text, _ = asyncio.run(execute("import os, sys\nprint(sys.flags.isolated, os.getcwd())"))
    isolated, folder = text.split()
    assert code == 0 and isolated == "1" and "retrylib-run-python-" in folder
    assert not os.path.exists(folder)


# -- the MCP server, started as the tool stage starts it -----------------------------------

@pytest.fixture
async def tools():
    """A run_python server (2 s code timeout, 2 KB output cap) in a ToolSession."""
    before = {p.pid for p in descendants()}
    async with ToolSession(default_debug_tool_config(timeout=2, max_output=2048)) as session:
        yield session
    assert_all_gone([p for p in descendants() if p.pid not in before])


def test_default_config_starts_this_interpreter_by_absolute_path():
    """The config names sys.executable (absolute: the SDK gives the server a minimal PATH)."""
    server = default_debug_tool_config()["mcpServers"]["run_python"]
    assert server["command"] == sys.executable and os.path.isabs(server["command"])
    assert server["args"][:2] == ["-m", "retrylib.tools.run_python"]


async def test_server_offers_both_tools_with_minimal_schemas(tools):
    """run_python(code) and check_json(text, schema), without pydantic's titles."""
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in tools.openai_tools()}
    assert offered["run_python"] == {"type": "object", "properties": {"code": {"type": "string"}},
                                     "required": ["code"]}
    assert set(offered["check_json"]["properties"]) == {"text", "schema"}


async def test_success_returns_the_output(tools):
    """A run that exits 0 is a plain result with what it printed."""
    r = await tools.call("run_python", {"code": "print('hi')\n6 * 7"})
    assert (r.is_error, r.error, r.text) == (False, None, "hi\n42\n")
    assert r.duration > 0


async def test_nonzero_exit_is_a_tool_error_with_the_traceback(tools):
    """An exception in the code is is_error=True, with its exit code and traceback."""
    r = await tools.call("run_python", {"code": "1 / 0"})
    assert r.is_error and r.error == "tool_error"
    assert "exit code 1" in r.text and "ZeroDivisionError" in r.text


async def test_server_timeout_is_a_tool_error(tools):
    """Code past the server's timeout is killed, and the call says so as an error."""
    r = await tools.call("run_python", {"code": "print('started', flush=True)\nwhile True: pass"})
    assert r.is_error and r.error == "tool_error"
    assert "timed out after 2 s" in r.text and "started" in r.text


async def test_output_cap_is_applied_by_the_server(tools):
    """The server caps what it returns and says it truncated."""
    r = await tools.call("run_python", {"code": "print('z' * 10000)"})
    assert not r.is_error and "[output truncated" in r.text and len(r.text) < 2300


async def test_unknown_tool_and_bad_arguments_are_errors_not_exceptions(tools):
    """An unknown name, a missing argument and a wrong type all come back as is_error results."""
    unknown = await tools.call("run_pyhton", {"code": "1"})
    assert unknown.is_error and unknown.error == "unknown_tool" and "run_python" in unknown.text
    missing = await tools.call("run_python", {})
    assert missing.is_error and missing.error == "bad_arguments" and "code" in missing.text
    wrong = await tools.call("run_python", {"code": 5})
    assert wrong.is_error and wrong.error == "bad_arguments" and "string" in wrong.text
    not_a_dict = await tools.call("run_python", "print(1)")
    assert not_a_dict.is_error and not_a_dict.error == "bad_arguments"


async def test_check_json_validates_against_the_schema(tools):
    """check_json answers 'valid', or an error naming what does not match."""
    schema = '{"type": "object", "required": ["name"], "properties": {"age": {"type": "integer"}}}'
    ok = await tools.call("check_json", {"text": '{"name": "Ann", "age": 3}', "schema": schema})
    assert (ok.is_error, ok.text) == (False, "valid")
    bad = await tools.call("check_json", {"text": '{"age": "3"}', "schema": schema})
    assert bad.is_error and "'name' is a required property" in bad.text and "at age" in bad.text
    not_json = await tools.call("check_json", {"text": "{nope", "schema": schema})
    assert not_json.is_error and "`text` is not JSON" in not_json.text


async def test_session_timeout_then_close_leaves_no_process():
    """A call past the session's timeout is an is_error result; the session still works, and
    after closing, neither the server nor the code it was running is alive."""
    before = {p.pid for p in descendants()}
    async with ToolSession(default_debug_tool_config(timeout=60)) as session:
        r = await session.call("run_python", {"code": "import time; time.sleep(50)"}, timeout=0.5)
        assert r.is_error and r.error == "timeout" and "0.5 s" in r.text
        started = [p for p in descendants() if p.pid not in before]
        assert any("-I" in p.cmdline() for p in started)  # the code is still running
        again = await session.call("run_python", {"code": "1 + 1"})
        assert again.text == "2\n"
    assert_all_gone(started)


async def test_cancel_mid_call_then_close_leaves_no_process():
    """Cancelling a task in the middle of call_tool, then closing, leaves no process."""
    before = {p.pid for p in descendants()}
    async with ToolSession(default_debug_tool_config(timeout=60)) as session:
        task = asyncio.create_task(session.call("run_python", {"code": "import time; time.sleep(50)"}))
        await asyncio.sleep(1.0)
        started = [p for p in descendants() if p.pid not in before]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(started) >= 2  # the server and the code
    assert_all_gone(started)


async def test_cancelling_the_whole_session_leaves_no_process():
    """A task that owns the session, cancelled mid-call, still ends every process."""
    before = {p.pid for p in descendants()}
    seen: list[psutil.Process] = []

    async def owner() -> None:
        async with ToolSession(default_debug_tool_config(timeout=60)) as session:
            call = asyncio.create_task(session.call("run_python", {"code": "import time; time.sleep(50)"}))
            await asyncio.sleep(1.0)
            seen.extend(p for p in descendants() if p.pid not in before)
            await call

    task = asyncio.create_task(owner())
    await asyncio.sleep(4.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(seen) >= 2
    assert_all_gone(seen)


def test_sigkilled_server_leaves_no_code_running():
    """If the server is killed with SIGKILL mid-run, its code child dies too (PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    import json

    server = subprocess.Popen([sys.executable, "-m", "retrylib.tools.run_python", "--timeout", "60"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert server.stdin is not None and server.stdout is not None

    def send(msg: dict) -> None:
        server.stdin.write((json.dumps(msg) + "\n").encode())
        server.stdin.flush()

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}})
        server.stdout.readline()
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "run_python", "arguments": {"code": "import time; time.sleep(50)"}}})
        deadline = time.monotonic() + 20
        children: list[psutil.Process] = []
        while not children and time.monotonic() < deadline:
            children = psutil.Process(server.pid).children()
            time.sleep(0.05)
        assert children, "the code never started"
        server.kill()
        server.wait()
        assert_all_gone(children)
    finally:
        if server.poll() is None:
            server.kill()


def test_cli_refuses_an_unknown_tool():
    """`--tools nope` exits 2 naming the tools it has, before serving anything."""
    p = subprocess.run([sys.executable, "-m", "retrylib.tools.run_python", "--tools", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "run_python" in p.stderr and "nope" in p.stderr
