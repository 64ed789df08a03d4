"""ToolSession: the mcpServers config checked up front, real servers started over stdio and
streamable HTTP, tools offered as OpenAI tools, clashing names prefixed, stderr kept out of
the terminal, and every process gone after close.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import httpx
import pytest
from processes import assert_all_gone, descendants

from retrylib import ConfigError
from retrylib.testing.local import free_port
from retrylib.tools import ToolServerError, ToolSession, default_debug_tool_config
from retrylib.tools.servers import parse_mcp_config
from retrylib.tools.specs import check_arguments, minimal_schema

pytestmark = pytest.mark.timeout(120)
PY = sys.executable


def server(**extra: object) -> dict[str, object]:
    """A run_python server entry (its config from default_debug_tool_config)."""
    return {**default_debug_tool_config()["mcpServers"]["run_python"], **extra}


# -- the config, checked before any process starts ------------------------------------------

@pytest.mark.parametrize(("config", "message"), [
    ({}, "has no 'mcpServers' key"),
    ([], "must be a dict with 'mcpServers'"),
    ({"mcpServers": {}}, "non-empty dict"),
    ({"mcpServers": {"py": "python"}}, "MCP server 'py': must be a dict"),
    ({"mcpServers": {"py": {"args": ["x"]}}}, "MCP server 'py': has neither 'command'"),
    ({"mcpServers": {"py": {"command": PY, "url": "http://127.0.0.1:1/mcp"}}}, "has both"),
    ({"mcpServers": {"py": {"command": "no-such-command-xyz"}}}, "'no-such-command-xyz' not found on PATH"),
    ({"mcpServers": {"py": {"command": "/no/such/python"}}}, "not found or not executable"),
    ({"mcpServers": {"py": {"command": PY, "args": "-m x"}}}, "'args' must be a list of strings"),
    ({"mcpServers": {"py": {"command": PY, "env": {"N": 1}}}}, "'env' must be a dict of strings"),
    ({"mcpServers": {"py": {"command": PY, "cwd": "/no/such/dir"}}}, "is not an existing directory"),
    ({"mcpServers": {"py": {"url": "ftp://x/mcp"}}}, "'url' must be an http(s) URL"),
    ({"mcpServers": {"py": {"type": "sse", "url": "http://127.0.0.1:1/sse"}}}, "SSE transport is not supported"),
    ({"mcpServers": {"py": {"command": PY, "comand": "x"}}}, "unknown key(s) comand"),
    ({"mcpServers": {"py": {"command": PY, "disabled": True}}}, "all disabled"),
])
def test_invalid_config_is_a_config_error_naming_the_problem(config, message):
    """Each bad config raises ConfigError at construction, saying which server and what."""
    before = {p.pid for p in descendants()}
    with pytest.raises(ConfigError) as info:
        ToolSession(config)
    assert message in str(info.value)
    assert {p.pid for p in descendants()} <= before  # nothing was started


@pytest.mark.parametrize("value", [0, -1, "10", True, 60_000, float("inf")])
def test_a_server_timeout_that_is_not_seconds_is_a_config_error(value):
    """A server's 'timeout' must be seconds in (0, 3600]: milliseconds, strings, booleans and
    infinity are refused, naming the server and the key."""
    with pytest.raises(ConfigError, match=r"MCP server 'py': 'timeout' must be a number of seconds"):
        ToolSession({"mcpServers": {"py": server(timeout=value)}})


async def test_a_servers_timeout_bounds_each_call_of_its_tools():
    """'timeout': 0.5 in the server's entry wins over the caller's 60 s: the call ends as a
    timeout after about 0.5 s; a server without it keeps the caller's."""
    config = {"mcpServers": {"quick": server(timeout=0.5), "plain": server()}}
    async with ToolSession(config) as session:
        quick = await session.call("quick_run_python", {"code": "import time; time.sleep(5)"},
                                   timeout=60)
        plain = await session.call("plain_run_python", {"code": "import time; time.sleep(1); print(1)"},
                                   timeout=60)
    assert (quick.error, plain.error) == ("timeout", None)
    assert "within 0.5 s" in quick.text and quick.duration < 4


async def test_start_within_a_timeout_and_the_failure_is_remembered():
    """start(timeout=1) bounds a server that never answers, whatever startup_timeout says;
    the error stays in start_error for the caller to read."""
    config = {"mcpServers": {"mute": {"command": PY, "args": ["-c", "import time; time.sleep(60)"]}}}
    before = {p.pid for p in descendants()}
    session = ToolSession(config, startup_timeout=30)
    t0 = time.monotonic()
    with pytest.raises(ToolServerError, match="'mute' did not start: timed out"):
        await session.start(timeout=1)
    assert time.monotonic() - t0 < 8 and isinstance(session.start_error, ToolServerError)
    assert_all_gone([p for p in descendants() if p.pid not in before])


def test_config_resolves_names_on_path_and_keeps_a_venv_symlink():
    """A bare command is looked up on PATH; an absolute one is kept as given (not resolved,
    or a venv's python would lose its venv)."""
    (spec,) = parse_mcp_config({"mcpServers": {"sh": {"command": "sh", "args": ["-c", "true"]}}})
    assert spec.command is not None and spec.command.endswith("/sh") and spec.args == ("-c", "true")
    (py,) = parse_mcp_config({"mcpServers": {"py": {"command": PY}}})
    assert py.command == PY
    (remote,) = parse_mcp_config({"mcpServers": {"r": {"type": "http", "url": "http://127.0.0.1:9/mcp"}}})
    assert (remote.transport, remote.url) == ("http", "http://127.0.0.1:9/mcp")


def test_minimal_schema_drops_titles_but_not_a_property_named_title():
    """pydantic's `title` keys go; a parameter that is called `title` stays."""
    schema = {"title": "Args", "type": "object", "required": ["title"],
              "properties": {"title": {"title": "Title", "type": "string"},
                             "n": {"title": "N", "type": "integer"}}}
    assert minimal_schema(schema) == {"type": "object", "required": ["title"],
                                      "properties": {"title": {"type": "string"},
                                                     "n": {"type": "integer"}}}
    assert minimal_schema(None) == {"type": "object", "properties": {}}


def test_offered_parameters_are_grammar_safe_and_name_what_was_left_out():
    """A parameter schema llama.cpp's grammar builder would crash on (maxLength over 1000:
    measured, SIGSEGV) is offered without that bound, and the spec names it; names that are
    not valid OpenAI function names are made valid."""
    from mcp_types import Tool

    from retrylib.tools.specs import name_tools

    big = Tool(name="write.file", description=" Write a file. ", input_schema={
        "type": "object", "required": ["text"],
        "properties": {"text": {"type": "string", "maxLength": 5000, "title": "Text"}}})
    (spec,) = name_tools([("fs", big)]).values()
    assert (spec.name, spec.remote_name, spec.description) == ("write_file", "write.file", "Write a file.")
    assert spec.parameters == {"type": "object", "required": ["text"],
                               "properties": {"text": {"type": "string"}}}
    assert spec.dropped == ("/properties/text: maxLength 5000 (over 1000 above minLength)",)


def test_check_arguments_names_what_is_wrong():
    """Missing required arguments, unknown ones (when forbidden) and wrong JSON types."""
    schema = {"type": "object", "required": ["code"], "additionalProperties": False,
              "properties": {"code": {"type": "string"}, "n": {"type": "integer"}}}
    assert check_arguments({"code": "1"}, schema) is None
    assert "missing required argument(s): code" in (check_arguments({}, schema) or "")
    assert "unknown argument(s): x" in (check_arguments({"code": "1", "x": 1}, schema) or "")
    assert "'n' must be a integer, got bool" in (check_arguments({"code": "1", "n": True}, schema) or "")


# -- real servers --------------------------------------------------------------------------

async def test_two_servers_with_the_same_tools_get_prefixed_names():
    """Names two servers share are prefixed with the server's name; each reaches its server."""
    config = {"mcpServers": {"a": server(), "b": server(args=[
        "-m", "retrylib.tools.run_python", "--tools", "run_python"])}}
    before = {p.pid for p in descendants()}
    async with ToolSession(config) as session:
        assert sorted(session.tools) == ["a_run_python", "b_run_python", "check_json"]
        assert {t["function"]["name"] for t in session.openai_tools()} == set(session.tools)
        assert session.tools["check_json"].server == "a"
        ra = await session.call("a_run_python", {"code": "import os; os.getppid()"})
        rb = await session.call("b_run_python", {"code": "import os; os.getppid()"})
        assert not ra.is_error and not rb.is_error and ra.text != rb.text  # two servers
        started = [p for p in descendants() if p.pid not in before]
    assert_all_gone(started)


async def test_server_that_exits_at_once_is_a_tool_server_error_quoting_its_stderr():
    """A server that dies before initialize raises ToolServerError with its name and stderr."""
    config = {"mcpServers": {"broken": {"command": PY, "args": [
        "-c", "import sys; print('boom: no such module', file=sys.stderr); sys.exit(3)"]}}}
    before = {p.pid for p in descendants()}
    with pytest.raises(ToolServerError) as info:
        async with ToolSession(config):
            pass
    assert "MCP server 'broken' did not start" in str(info.value)
    assert "boom: no such module" in str(info.value)
    assert [p for p in descendants() if p.pid not in before] == []


async def test_one_bad_server_stops_the_ones_already_started():
    """When the second server fails, the first one is stopped too."""
    config = {"mcpServers": {"good": server(), "bad": {"command": PY, "args": ["-c", "pass"]}}}
    before = {p.pid for p in descendants()}
    with pytest.raises(ToolServerError, match="'bad'"):
        await ToolSession(config).start()
    assert_all_gone([p for p in descendants() if p.pid not in before])


async def test_server_that_never_answers_times_out_at_startup():
    """A process that reads stdin but never answers fails after startup_timeout, and is stopped."""
    config = {"mcpServers": {"mute": {"command": PY, "args": ["-c", "import time; time.sleep(60)"]}}}
    before = {p.pid for p in descendants()}
    with pytest.raises(ToolServerError, match="'mute' did not start: timed out"):
        async with ToolSession(config, startup_timeout=1.0):
            pass
    assert_all_gone([p for p in descendants() if p.pid not in before])


async def test_server_stderr_goes_to_the_log_file_not_the_terminal(capfd, tmp_path):
    """What a server writes to stderr lands in errlog, never on the test's stderr."""
    wrapper = ("import sys, runpy; print('hello from the server stderr', file=sys.stderr, flush=True); "
               "sys.argv = ['run_python']; runpy.run_module('retrylib.tools.run_python', run_name='__main__')")
    log = tmp_path / "mcp.log"
    async with ToolSession({"mcpServers": {"py": {"command": PY, "args": ["-c", wrapper]}}},
                           errlog=log) as session:
        assert (await session.call("run_python", {"code": "1"})).text == "1\n"
    assert "hello from the server stderr" in log.read_text()
    assert "hello from the server stderr" not in capfd.readouterr().err


async def test_calls_from_other_tasks_and_close_from_another_task():
    """start, call and close may each happen in a different task (as under asyncio.wait_for)."""
    before = {p.pid for p in descendants()}  # a full-suite run has the model server as a child too
    session = ToolSession(default_debug_tool_config())
    await asyncio.create_task(session.start())
    r = await asyncio.wait_for(session.call("run_python", {"code": "21 * 2"}), 30)
    assert r.text == "42\n"
    started = [p for p in descendants() if p.pid not in before]
    assert started, "the session started no server process"
    await asyncio.create_task(session.aclose())
    assert_all_gone(started)
    with pytest.raises(RuntimeError, match="not open"):
        await session.call("run_python", {"code": "1"})


@pytest.fixture
def http_server():
    """run_python served over streamable HTTP on a free port, by a process the test owns."""
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "retrylib.tools.run_python", "--transport", "streamable-http",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_streamable_http_server_named_by_url(http_server):
    """A server with a `url` is reached over streamable HTTP; its tools work like stdio ones."""
    port = http_server
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        await asyncio.sleep(0.1)
    async with ToolSession({"mcpServers": {"remote": {"url": f"http://127.0.0.1:{port}/mcp"}}}) as session:
        assert set(session.tools) == {"run_python", "check_json"}
        r = await session.call("run_python", {"code": "print('over http')"})
        assert (r.is_error, r.text) == (False, "over http\n")
        err = await session.call("run_python", {"code": "raise SystemExit(4)"})
        assert err.is_error and "exit code 4" in err.text


async def test_unreachable_url_is_a_tool_server_error():
    """A URL nothing listens on fails at start with the server's name."""
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(ToolServerError, match="MCP server 'gone' did not start"):
        async with ToolSession({"mcpServers": {"gone": {"url": url}}}, startup_timeout=10):
            pass
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(url, timeout=2)


async def test_server_killed_mid_session_gives_session_error_results():
    """If a server dies after start, its calls are is_error results (session_error), and the
    session still closes cleanly."""
    before = {p.pid for p in descendants()}
    async with ToolSession(default_debug_tool_config(), timeout=5) as session:
        (srv,) = [p for p in descendants() if p.pid not in before
                  and "retrylib.tools.run_python" in " ".join(p.cmdline())]
        srv.kill()
        srv.wait(5)
        r = await session.call("run_python", {"code": "1"})
        assert r.is_error and r.error == "session_error"
        assert "run_python" in r.text
    assert [p for p in descendants() if p.pid not in before] == []


async def test_cancelling_a_start_that_hangs_ends_at_once_and_leaves_no_process(tmp_path):
    """A server that never answers initialize, startup_timeout 60 s: cancelling the start
    (a call cancelled, or its deadline) ends it within seconds, not after the 60 s, and
    the server process is gone."""
    hang = tmp_path / "hang.py"
    hang.write_text("import time\ntime.sleep(120)\n")
    before = {p.pid for p in descendants()}
    session = ToolSession({"mcpServers": {"mute": {"command": PY, "args": [str(hang)]}}},
                          startup_timeout=60)
    task = asyncio.create_task(session.start())
    started = []
    for _ in range(100):  # until the server process exists
        await asyncio.sleep(0.05)
        started = [p for p in descendants() if p.pid not in before]
        if started:
            break
    assert started, "the server never started"
    t = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t < 15  # the SDK's own shutdown: 2 s + 2 s, then SIGKILL
    await asyncio.to_thread(assert_all_gone, started)
