"""``ToolSession``: the MCP servers of one call, started once, their tools offered as OpenAI tools.

::

    async with ToolSession(default_debug_tool_config()) as tools:
        tools.openai_tools()                   # [{"type": "function", "function": {...}}]
        r = await tools.call("run_python", {"code": "2 + 2"}, timeout=10)
        r.text, r.is_error                     # ("4\\n", False)

Every server starts in ``__aenter__`` (stdio, or streamable HTTP for a ``url``), is
initialized and listed; a tool name two servers share is prefixed with its server's name
(``python_run_python``), other names stay as the server gives them. A call never raises for
what the model did: an unknown tool, bad arguments, a timeout or a server that died come
back as a :class:`ToolResult` with ``is_error=True`` and ``error`` saying which.

Closing ends every server and what it started, also on cancellation and timeouts: the SDK
starts each stdio server in a new session and, on exit, closes its stdin, waits up to 2 s,
then SIGTERMs and SIGKILLs its whole process group, shielded from cancellation
(``run_python`` puts the code it runs in a group of its own, and ends it itself: see
:mod:`retrylib.tools.run_python`). The servers run in a task the session owns, so it may
be started, called and closed from different tasks. Their stderr goes to a log file
(``log_path``), never to the terminal. How tools are named and their schemas made safe for
llama.cpp: :mod:`retrylib.tools.specs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from loguru import logger

from retrylib._extras import require
from retrylib.errors import RetrylibError
from retrylib.tools.servers import ServerSpec, parse_mcp_config
from retrylib.tools.specs import ToolSpec, check_arguments, name_tools

ErrorKind = Literal["unknown_tool", "bad_arguments", "timeout", "tool_error", "session_error"]


class ToolServerError(RetrylibError, RuntimeError):
    """An MCP server did not start or did not answer ``initialize``; quotes its stderr."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What one tool call gave.

    Attributes:
        name: the tool's name as offered to the model.
        arguments: the arguments sent.
        text: the result's text (the error message when ``is_error``).
        is_error: the tool failed, or the call could not be made.
        duration: seconds the call took.
        error: ``None`` on success, else one of ``unknown_tool``, ``bad_arguments``
            (checked here against the input schema, or refused by the server),
            ``timeout``, ``tool_error`` (the tool reported an error), ``session_error``
            (the server died or the connection broke).
    """

    name: str
    arguments: dict[str, Any]
    text: str
    is_error: bool
    duration: float
    error: ErrorKind | None = None


class ToolSession:
    """The MCP servers of an ``{"mcpServers": ...}`` config, as one async context manager.

    Args:
        config: the Claude-style config (see :mod:`retrylib.tools.servers`); checked here.
        errlog: where the servers' stderr goes: a path, or an open text file; ``None``: a
            temporary log file (``log_path``).
        startup_timeout: seconds each server may take to start and answer ``initialize``.
        timeout: the default seconds per tool call (a server's own ``timeout`` key wins for
            its tools).

    Attributes:
        start_error: the error of the last :meth:`start` that failed (``None`` once started);
            the retry loop reads it so as not to start failing servers again in one call.

    Raises:
        ConfigError: the config is invalid (raised by the constructor, before any process).
        MissingExtraError: the ``[mcp]`` extra is not installed.
    """

    def __init__(self, config: Mapping[str, Any], *, errlog: str | Path | IO[str] | None = None,
                 startup_timeout: float = 30.0, timeout: float = 10.0):
        self.specs: list[ServerSpec] = parse_mcp_config(config)
        self._timeouts = {s.name: s.timeout for s in self.specs if s.timeout is not None}
        require("mcp", "the tool stage's MCP client")
        self.startup_timeout = float(startup_timeout)
        self.timeout = float(timeout)
        self._errlog_arg = errlog
        self.log_path: Path | None = None
        self.tools: dict[str, ToolSpec] = {}
        self._sessions: dict[str, Any] = {}
        self._runner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing = asyncio.Event()
        self._opening = ""
        self._start_by: float | None = None
        self.started_in: float | None = None
        self.start_error: Exception | None = None

    def __repr__(self) -> str:
        state = "open" if self._runner is not None else "closed"
        return f"ToolSession({[s.name for s in self.specs]}, tools={list(self.tools)}, {state})"

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> ToolSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self, timeout: float | None = None) -> ToolSession:
        """Start, initialize and list every server; on any failure, stop those started.

        Args:
            timeout: seconds the whole start may take, all servers together (a call's
                remaining deadline), besides ``startup_timeout`` per server; ``None``: no
                bound but that one.

        The servers live in a task of their own, so ``start``, :meth:`call` and
        :meth:`aclose` may each run in any task (anyio's task groups, which the SDK's
        transports use, must be left by the task that entered them: a pytest fixture or an
        ``asyncio.wait_for`` around an attempt would otherwise break the close).

        Raises:
            ToolServerError: a server exited, or did not answer within ``startup_timeout``
                (or ``timeout``).
        """
        if self._runner is not None:
            return self
        t0 = time.monotonic()
        self._start_by = None if timeout is None else t0 + max(0.0, float(timeout))
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._ready = ready
        self._runner = asyncio.create_task(self._run(ready), name="retrylib-mcp-servers")
        try:
            await asyncio.shield(ready)
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.start_error = exc
            await self.aclose()  # also when start() itself is cancelled
            raise
        self.start_error = None
        self.started_in = time.monotonic() - t0
        logger.debug("MCP servers {} up in {:.2f}s, tools {}", list(self._sessions),
                     self.started_in, list(self.tools))
        return self

    async def _run(self, ready: asyncio.Future[None]) -> None:
        """Own the servers: open them, report to ``ready``, wait for the close, close them."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._open_all(stack)
                ready.set_result(None)
                await self._closing.wait()
        except BaseException as exc:
            self.tools, self._sessions = {}, {}
            if ready.done():
                raise
            # The transports' task groups wrap what was raised inside them in groups.
            leaf = _unwrap(exc)
            if isinstance(leaf, asyncio.CancelledError) or not isinstance(leaf, Exception):
                ready.cancel()
            elif isinstance(leaf, ToolServerError):
                ready.set_exception(leaf)
            else:  # raised by a transport's own task (an HTTP server that refuses, say)
                err = ToolServerError(f"MCP server {self._opening!r} did not start: {_describe(leaf)}")
                err.__cause__ = leaf
                ready.set_exception(err)
        finally:
            self.tools, self._sessions = {}, {}

    async def _open_all(self, stack: contextlib.AsyncExitStack) -> None:
        import anyio

        errlog = self._open_errlog(stack)
        listed: list[tuple[str, Any]] = []
        for spec in self.specs:
            self._opening = spec.name
            try:
                # Only the requests are timed: a transport's task group must not be entered
                # inside a cancel scope that ends before it does (anyio refuses that).
                session = await self._connect(stack, spec, errlog)
                limit = self.startup_timeout
                if self._start_by is not None:
                    limit = max(0.0, min(limit, self._start_by - time.monotonic()))
                with anyio.fail_after(limit):
                    await session.initialize()
                    tools = (await session.list_tools()).tools
            except Exception as exc:
                errlog.flush()
                raise ToolServerError(
                    f"MCP server {spec.name!r} did not start: {_describe(exc)}; "
                    f"its stderr ({self.log_path or 'not kept'}):\n{self.stderr_tail()}") from exc
            self._sessions[spec.name] = session
            listed += [(spec.name, t) for t in tools]
        self.tools = name_tools(listed)

    def _open_errlog(self, stack: contextlib.AsyncExitStack) -> IO[str]:
        arg = self._errlog_arg
        if arg is not None and not isinstance(arg, str | Path):
            return arg
        if arg is None:
            fd, name = tempfile.mkstemp(prefix="retrylib-mcp-", suffix=".log")
            os.close(fd)
            arg = name
        path = Path(arg)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = path
        return stack.enter_context(path.open("a", encoding="utf-8"))

    async def _connect(self, stack: contextlib.AsyncExitStack, spec: ServerSpec, errlog: IO[str]) -> Any:
        mcp = require("mcp", "the tool stage's MCP client")
        if spec.transport == "stdio":
            assert spec.command is not None
            params = mcp.StdioServerParameters(command=spec.command, args=list(spec.args),
                                               env=spec.env or None, cwd=spec.cwd)
            read, write = await stack.enter_async_context(mcp.stdio_client(params, errlog=errlog))
        else:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            assert spec.url is not None
            client = await stack.enter_async_context(create_mcp_http_client(headers=spec.headers or None))
            read, write = await stack.enter_async_context(
                streamable_http_client(spec.url, http_client=client))
        return await stack.enter_async_context(mcp.ClientSession(read, write))

    async def aclose(self) -> None:
        """Stop every server (idempotent). A cancel cannot cut it short: the servers' shutdown
        (bounded by the SDK: stdin closed, 2 s, SIGTERM, 2 s, SIGKILL of the process group)
        is waited for, then the cancel goes on. A start-up still under way is cancelled, not
        waited for."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        if self._ready is not None and not self._ready.done():
            # Still starting (a server that has not answered initialize): waiting for the
            # start-up would take up to startup_timeout; cancelling it unwinds the transports,
            # which stop what they started.
            runner.cancel()
        cancelled = False
        while not runner.done():
            try:
                await asyncio.shield(runner)
            except asyncio.CancelledError:
                cancelled = cancelled or not runner.cancelled()
            except Exception:
                break
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            logger.warning("MCP servers closed with {!r}", runner.exception())
        if cancelled:
            raise asyncio.CancelledError

    def stderr_tail(self, lines: int = 15) -> str:
        """The last lines the servers wrote to stderr (``(no log)`` when not kept in a file)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty)"

    # -- what the model sees -------------------------------------------------------------
    def openai_tools(self) -> list[dict[str, Any]]:
        """Every tool as an OpenAI ``tools`` entry."""
        return [t.openai() for t in self.tools.values()]

    def describe(self) -> str:
        """The tools in words, one line each, for a system message."""
        lines = []
        for t in self.tools.values():
            props = t.parameters.get("properties") or {}
            sig = ", ".join(f"{k}: {(v or {}).get('type', 'any')}" for k, v in props.items())
            lines.append(f"- {t.name}({sig}): {t.description}".rstrip(": "))
        return "\n".join(lines)

    # -- calls ---------------------------------------------------------------------------
    async def call(self, name: str, arguments: Any = None, timeout: float | None = None) -> ToolResult:
        """Run one tool call; never raises for a bad call (see :class:`ToolResult`).

        Args:
            name: the tool's name as offered (:meth:`openai_tools`).
            arguments: a dict (``None``: no arguments).
            timeout: seconds; ``None``: the session's ``timeout``. A ``timeout`` in the
                server's config entry wins over both.

        Raises:
            RuntimeError: the session is not started (a programmer mistake).
        """
        if self._runner is None or not self._sessions:
            raise RuntimeError("ToolSession.call() on a session that is not open (use `async with ToolSession(...)`)")
        t0 = time.monotonic()
        args = {} if arguments is None else arguments

        def result(text: str, error: ErrorKind | None) -> ToolResult:
            shown = dict(args) if isinstance(args, Mapping) else {"_raw": args}
            return ToolResult(name, shown, text, error is not None, time.monotonic() - t0, error)

        tool = self.tools.get(name)
        if tool is None:
            return result(f"unknown tool {name!r}; the tools are: {', '.join(self.tools) or 'none'}",
                          "unknown_tool")
        if not isinstance(args, Mapping):
            return result(f"the arguments of {name} must be a JSON object, got "
                          f"{type(args).__name__}", "bad_arguments")
        problem = check_arguments(args, tool.parameters)
        if problem:
            return result(f"bad arguments for {name}: {problem}", "bad_arguments")
        limit = self._timeouts.get(tool.server) or (self.timeout if timeout is None else float(timeout))
        try:
            res = await self._sessions[tool.server].call_tool(tool.remote_name, dict(args),
                                                              read_timeout_seconds=limit)
        except Exception as exc:
            from mcp_types import REQUEST_TIMEOUT

            if getattr(exc, "code", None) == REQUEST_TIMEOUT or isinstance(exc, TimeoutError):
                return result(f"{name} did not answer within {limit:g} s", "timeout")
            return result(f"{name} could not be called (server {tool.server!r}): {_describe(exc)}",
                          "session_error")
        text = _content_text(res)
        if res.is_error:
            kind: ErrorKind = "bad_arguments" if "validation error for" in text else "tool_error"
            return result(text, kind)
        return result(text, None)


def _content_text(res: Any) -> str:
    parts = []
    for c in res.content or ():
        text = getattr(c, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(c, 'type', 'content')}]")
    if not parts and res.structured_content is not None:
        parts.append(json.dumps(res.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _unwrap(exc: BaseException) -> BaseException:
    """The one meaningful exception inside (nested) exception groups: a ToolServerError if
    there is one, else the first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        ours = [e for e in exc.exceptions if isinstance(_unwrap(e), ToolServerError)]
        exc = ours[0] if ours else exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
