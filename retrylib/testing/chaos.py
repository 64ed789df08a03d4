"""A fault-injecting OpenAI-compatible HTTP proxy on loopback.

:class:`ChaosProxy` sits between a client (litellm, openai, httpx) and an upstream
OpenAI-compatible server, by default the embedded llama.cpp server. Every request either
passes through unchanged or gets a fault, chosen by a *plan*. The proxy keeps a journal of
every request it received, so tests assert on what actually went over the wire rather than
on what a client says it did. It binds to 127.0.0.1 only.

The fault catalogue and the plan grammar are in :mod:`retrylib.testing.faults`.

Control endpoints (JSON, never journaled): ``GET /_chaos/health``,
``GET /_chaos/journal?key=K``, ``POST /_chaos/plan`` with ``{"plan": ..., "key": K}``,
``DELETE /_chaos/journal?key=K``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.utils
import json
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from retrylib._extras import require
from retrylib.errors import ConfigError, ProxyHTTPError, ServerUnreachableError
from retrylib.testing._context import StartStop
from retrylib.testing.faults import ERROR_TYPES, FAULTS, Fault, completion, parse_fault, parse_plan

aiohttp = require("aiohttp", "the fault proxy (retrylib.testing.chaos)")
from aiohttp import web  # noqa: E402

__all__ = ["FAULTS", "ChaosClient", "ChaosProxy", "Fault", "parse_fault", "parse_plan", "run_forever"]

# Request bodies are forwarded byte for byte. llama-cpp-python 0.3.36's server ignores
# unknown top-level keys (litellm puts e.g. `mcp_config` there), so nothing is stripped.
_HOP_BY_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding",
               "te", "upgrade", "proxy-connection", "accept-encoding"}
_NOT_FORWARDED = {"content-encoding", "date", "server"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "chaos_error"),
                      "code": status}}
    return web.json_response(body, status=status, headers=headers)


class ChaosProxy(StartStop):
    """A fault-injecting OpenAI-compatible proxy, served from a daemon thread.

    Args:
        upstream: the upstream's OpenAI base URL (``http://127.0.0.1:8080/v1``); ``None``
            means upstream-free.
        host: where to listen; loopback only.
        port: the port, ``0`` for a free one (read it back from :attr:`url`).
        plan: the default key's sequence, as for :func:`parse_plan`.
        upstream_free: answer ``pass`` with ``fixed_content`` at full speed, never calling the
            upstream. For load and concurrency benchmarks only: it measures the client and the
            proxy, not a model. Such replies carry ``X-Chaos-Upstream: none`` and
            ``system_fingerprint: "chaos-upstream-free"``.
        fixed_content: the content of upstream-free replies.
        hang_seconds: how long ``hang`` holds a request at most.
        backlog: the listening socket's backlog (connections waiting to be accepted); raise
            it for many thousands of clients connecting at once (the kernel caps it at
            ``net.core.somaxconn``).
    """

    def __init__(self, upstream: str | None = "http://127.0.0.1:8080/v1", host: str = "127.0.0.1",
                 port: int = 0, plan: str | Sequence[str] | None = None,
                 upstream_free: bool = False, fixed_content: str = "OK",
                 hang_seconds: float = 30.0, backlog: int = 128):
        if host not in ("127.0.0.1", "localhost"):
            raise ConfigError(f"the chaos proxy binds to loopback only, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"the chaos proxy's port must be an integer from 0 (any free port) "
                              f"to 65535, got {port!r}")
        if not (isinstance(hang_seconds, int | float) and math.isfinite(hang_seconds)
                and hang_seconds >= 0):
            raise ConfigError(f"hang_seconds must be a finite number >= 0, got {hang_seconds!r}")
        self.upstream = upstream.rstrip("/") if upstream else None
        self.host, self.port = "127.0.0.1", int(port)
        self.upstream_free = upstream_free or upstream is None
        if isinstance(backlog, bool) or not isinstance(backlog, int) or not 1 <= backlog <= 65535:
            raise ConfigError(f"the chaos proxy's backlog must be an integer from 1 to 65535, "
                              f"got {backlog!r}")
        self.fixed_content, self.hang_seconds = fixed_content, float(hang_seconds)
        self.backlog = backlog
        self._lock = threading.Lock()
        self._plans: dict[str, deque[Fault]] = {}
        self._journal: list[dict[str, Any]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        if plan is not None:
            self.set_plan(plan)

    def __repr__(self) -> str:
        state = self.url if self._thread else "stopped"
        return f"<ChaosProxy {state} upstream={'none' if self.upstream_free else self.upstream}>"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``; the port is known once started."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL clients use: ``http://127.0.0.1:<port>/v1``."""
        return self.base_url + "/v1"

    # -- plans and journal (called from any thread) -------------------------------------

    def set_plan(self, plan: str | Sequence[str] | None, key: str | None = None) -> None:
        """Replace the scripted sequence of ``key`` (``None`` or ``""``: the default key).

        Raises:
            ConfigError: a token is unknown.
        """
        faults = parse_plan(plan)
        with self._lock:
            self._plans[key or ""] = deque(faults)

    def set_plans(self, plans: Mapping[str, str | Sequence[str] | None]) -> None:
        """Replace the sequences of many keys at once (``{key: plan}``): all or none.

        Raises:
            ConfigError: a token of any plan is unknown (then no plan is changed).
        """
        parsed = {key or "": deque(parse_plan(plan)) for key, plan in plans.items()}
        with self._lock:
            self._plans.update(parsed)

    def journal(self, key: str | None = None) -> list[dict[str, Any]]:
        """The journaled requests of ``key`` (``None``: every key), in arrival order.

        Each entry is a deep copy: ``seq``, ``time``, ``monotonic``, ``method``, ``path``,
        ``headers`` (lower-cased), ``body`` (parsed JSON, or text), ``key``, ``fault`` (the
        token applied), ``status`` (``None`` for hang and reset, or while in flight) and
        ``duration`` (seconds until the handler finished; ``None`` while in flight).
        """
        with self._lock:
            return copy.deepcopy([e for e in self._journal if key is None or e["key"] == key])

    def clear(self, key: str | None = None) -> None:
        """Forget the journal and plan of ``key``, or of everything when ``key`` is ``None``."""
        with self._lock:
            if key is None:
                self._journal.clear()
                self._plans.clear()
            else:
                self._journal = [e for e in self._journal if e["key"] != key]
                self._plans.pop(key, None)

    def _next_fault(self, key: str) -> Fault:
        plan = self._plans.get(key)
        return plan.popleft() if plan else Fault("pass", "pass")

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> ChaosProxy:
        """Serve from a daemon thread; returns once the port is bound.

        Returns:
            ``self``.

        Raises:
            OSError: the port could not be bound.
        """
        if self._thread is not None:
            return self
        self._ready.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        return self

    def stop(self) -> None:
        """Stop serving, wake held requests, free the port, and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own already
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() if it failed while starting
            if not self._ready.is_set():
                self._start_error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown timeout: in-flight requests must not keep stop() waiting long.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=self.backlog)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    # -- request handling (server thread) ------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_chaos/"):
            return await self._control(request)
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        key = request.headers.get("X-Chaos-Key", "")
        override = request.headers.get("X-Chaos-Fault")
        bad_header = None
        with self._lock:
            try:
                fault = parse_fault(override) if override else self._next_fault(key)
            except ConfigError as exc:
                fault, bad_header = Fault(override or "", "bad_header"), str(exc)
            self._seq += 1
            entry = {"seq": self._seq, "time": time.time(), "monotonic": time.monotonic(),
                     "method": request.method, "path": request.path_qs,
                     "headers": {k.lower(): v for k, v in request.headers.items()},
                     "body": body, "key": key, "fault": fault.token, "status": None,
                     "duration": None}
            self._journal.append(entry)
        response: web.StreamResponse
        if bad_header is not None:
            response = _error(400, f"X-Chaos-Fault: {bad_header}")
        else:
            response = await self._apply(fault, request, raw, body)
        with self._lock:
            entry["duration"] = time.monotonic() - entry["monotonic"]
            if fault.name not in ("hang", "reset"):  # those send no complete status
                entry["status"] = response.status
        return response

    async def _apply(self, fault: Fault, request: web.Request, raw: bytes,
                     body: Any) -> web.StreamResponse:
        name = fault.name
        if fault.status is not None:
            return _error(fault.status, f"HTTP {fault.status} injected by chaos proxy",
                          self._headers(fault))
        if name == "hang":
            await self._hang(request, self.hang_seconds if fault.seconds is None else fault.seconds)
            # The connection is closed by now; aiohttp drops a reply it cannot send.
            return web.Response(status=499)
        if name == "latency":
            await asyncio.sleep(1.0 if fault.seconds is None else fault.seconds)
            return await self._forward(request, raw, body)
        if name == "pass":
            return await self._forward(request, raw, body)
        if name == "reset":
            return await self._reset(request, body)
        if name == "malformed":
            return web.Response(status=200, body=b"this is not JSON {injected by chaos proxy",
                                content_type="application/json")
        if name == "empty":
            return web.json_response(completion("", body))
        if name == "truncated":
            full = json.dumps(completion("This reply was cut in half by the chaos proxy.", body))
            return web.Response(status=200, text=full[: len(full) // 2],
                                content_type="application/json")
        if name == "wrong_shape":
            return web.json_response({"result": "no choices here"})
        if name == "tool_call":
            return web.json_response(tool_call_completion(dict(fault.options)["name"],
                                                          fault.content or "", body))
        return web.json_response(completion(fault.content or "", body))  # reply:<content>

    @staticmethod
    def _headers(fault: Fault) -> dict[str, str]:
        headers = {}
        for key, value in fault.options:
            if key == "retry-after-date":
                # Computed at send time, so the date is N seconds after the reply, not the plan.
                headers["Retry-After"] = email.utils.formatdate(time.time() + float(value),
                                                                usegmt=True)
            elif key == "retry-after":
                headers["Retry-After"] = value
            else:
                headers[key] = value
        return headers

    async def _hang(self, request: web.Request, seconds: float) -> None:
        # aiohttp does not cancel a handler when its client leaves, so poll the transport.
        deadline, stopping = time.monotonic() + seconds, self._stopping
        assert stopping is not None  # set by _serve before any request arrives
        while time.monotonic() < deadline and not stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.05)
        if request.transport is not None:
            request.transport.close()

    async def _reset(self, request: web.Request, body: Any) -> web.StreamResponse:
        full = json.dumps(completion("This reply is reset mid-body by the chaos proxy.", body))
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = len(full)  # promise the whole body, then break the promise
        await response.prepare(request)
        await response.write(full[: len(full) // 3].encode())
        await asyncio.sleep(0.05)  # let the partial body reach the client before the RST
        if request.transport is not None:
            request.transport.abort()
        return response

    async def _forward(self, request: web.Request, raw: bytes, body: Any) -> web.StreamResponse:
        if self.upstream_free or self.upstream is None:
            return self._upstream_free_reply(request, body)
        path = request.path[3:] if request.path.startswith("/v1/") else request.path
        url = self.upstream + path + (f"?{request.query_string}" if request.query_string else "")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("x-chaos-")}
        try:
            async with self._session.request(request.method, url, data=raw or None,
                                             headers=headers) as upstream:
                ctype = upstream.headers.get("Content-Type", "application/json")
                if ctype.startswith("text/event-stream"):
                    # Stream SSE chunk by chunk, so streaming clients see tokens as they come.
                    response = web.StreamResponse(status=upstream.status,
                                                  headers={"Content-Type": ctype})
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
                # Keep the upstream's headers (a real Retry-After must reach the client); aiohttp
                # already decompressed the body, so its encoding and length no longer apply.
                kept = {k: v for k, v in upstream.headers.items()
                        if k.lower() not in _HOP_BY_HOP | _NOT_FORWARDED}
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    headers=kept)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            return _error(502, f"chaos proxy could not reach upstream {self.upstream}: "
                               f"{type(exc).__name__}: {exc}")
        except TimeoutError:
            return _error(504, f"chaos proxy: upstream {self.upstream} timed out")

    def _upstream_free_reply(self, request: web.Request, body: Any) -> web.Response:
        headers = {"X-Chaos-Upstream": "none"}
        if request.path.rstrip("/").endswith("/models"):
            return web.json_response({"object": "list", "data": [
                {"id": "chaos-upstream-free", "object": "model", "owned_by": "chaos"}]},
                headers=headers)
        return web.json_response(completion(self.fixed_content, body, "chaos-upstream-free"),
                                 headers=headers)

    async def _control(self, request: web.Request) -> web.Response:
        path, method = request.path.rstrip("/"), request.method
        key = request.query.get("key")
        if path == "/_chaos/health" and method == "GET":
            return web.json_response({"status": "ok", "url": self.url, "upstream": self.upstream,
                                      "upstream_free": self.upstream_free})
        if path == "/_chaos/journal" and method == "GET":
            return web.json_response({"entries": self.journal(key)})
        if path == "/_chaos/journal" and method == "DELETE":
            self.clear(key)
            return web.json_response({"cleared": "all" if key is None else key})
        if path == "/_chaos/plan" and method == "POST":
            try:
                data = await request.json()
                if isinstance(data.get("plans"), dict):  # many keys in one request
                    self.set_plans(data["plans"])
                    return web.json_response({"keys": len(data["plans"])})
                self.set_plan(data.get("plan"), data.get("key"))
            except (ConfigError, ValueError, AttributeError) as exc:
                return _error(400, f"chaos proxy: bad plan: {exc}")
            with self._lock:
                tokens = [f.token for f in self._plans[data.get("key") or ""]]
            return web.json_response({"key": data.get("key") or "", "plan": tokens})
        return _error(404, f"chaos proxy: no control endpoint {method} {path}")


def tool_call_completion(name: str, arguments: str, body: Any) -> dict[str, Any]:
    """A chat.completion calling ``name`` with ``arguments``, shaped as llama.cpp's
    chatml-function-calling answers: ``content`` None, ``finish_reason`` ``tool_calls``;
    completion tokens are the arguments' words (so a test can put ``max_tokens`` at them)."""
    out = completion("", body)
    out["choices"][0].update(finish_reason="tool_calls", message={
        "role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_chaos_{out['id'][-12:]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}]})
    words = len(arguments.split())
    out["usage"].update(completion_tokens=words, total_tokens=out["usage"]["prompt_tokens"] + words)
    return out


def run_forever(upstream: str | None = "http://127.0.0.1:8080/v1", host: str = "127.0.0.1",
                port: int = 8900, plan: str | Sequence[str] | None = None,
                upstream_free: bool = False, **kwargs: Any) -> None:
    """Serve a :class:`ChaosProxy` in the foreground until SIGINT or SIGTERM (``retrylib chaos``).

    Args:
        upstream, host, port, plan, upstream_free: as for :class:`ChaosProxy`.
        **kwargs: passed on to :class:`ChaosProxy` (``fixed_content``, ``hang_seconds``,
            ``backlog``).
    """
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with ChaosProxy(upstream, host, port, plan, upstream_free, **kwargs) as proxy:
        shown = "none (upstream-free)" if proxy.upstream_free else proxy.upstream
        print(f"chaos proxy: {proxy.url} (upstream: {shown})", flush=True)
        while not done.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass


class ChaosClient:
    """A running proxy's control endpoints, over HTTP: the same methods as :class:`ChaosProxy`.

    For code in another process than the proxy (a notebook kernel while the workbook runner
    owns the proxy, or a script next to ``retrylib chaos``).

    Args:
        url: the proxy's OpenAI base URL (``http://127.0.0.1:PORT/v1``) or its base URL.
        timeout: seconds for each control request.
    """

    def __init__(self, url: str, timeout: float = 10.0):
        base = url.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self.url = self.base_url + "/v1"
        self.timeout = timeout

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            resp = httpx.request(method, self.base_url + path, timeout=self.timeout, **kw)
        except httpx.HTTPError as exc:  # the network failed, not the caller: not a ConfigError
            raise ServerUnreachableError(f"chaos proxy at {self.base_url} is not reachable: "
                                         f"{type(exc).__name__}: {exc}", self.base_url) from exc
        if 400 <= resp.status_code < 500:  # a bad plan or key: the caller's mistake
            raise ConfigError(f"chaos proxy {method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        if resp.status_code >= 500:
            raise ProxyHTTPError(resp.status_code, dict(resp.headers), resp.text)
        return resp.json()

    def health(self) -> dict[str, Any]:
        """The proxy's health record.

        Raises:
            ServerUnreachableError: nothing answers at :attr:`url` (also from every other
                method); a 4xx from a control endpoint (a bad plan) is a ``ConfigError``.
        """
        return self._request("GET", "/_chaos/health")

    def set_plan(self, plan: str | Sequence[str] | None, key: str | None = None) -> None:
        """Replace the scripted sequence of ``key``; a bad token is a ``ConfigError``."""
        if plan is not None and not isinstance(plan, str):
            plan = [f.token if isinstance(f, Fault) else f for f in plan]
        self._request("POST", "/_chaos/plan", json={"plan": plan, "key": key or ""})

    def set_plans(self, plans: Mapping[str, str | Sequence[str] | None]) -> None:
        """Replace the sequences of many keys in one request; a bad token is a ``ConfigError``."""
        def tokens(plan: str | Sequence[str] | None) -> Any:
            if plan is None or isinstance(plan, str):
                return plan
            return [f.token if isinstance(f, Fault) else f for f in plan]

        self._request("POST", "/_chaos/plan", json={"plans": {k: tokens(v) for k, v in plans.items()}})

    def journal(self, key: str | None = None) -> list[dict[str, Any]]:
        params = {} if key is None else {"key": key}
        return self._request("GET", "/_chaos/journal", params=params)["entries"]

    def clear(self, key: str | None = None) -> None:
        params = {} if key is None else {"key": key}
        self._request("DELETE", "/_chaos/journal", params=params)

    def stop(self) -> None:
        """Nothing to stop: the proxy belongs to another process."""

    def __repr__(self) -> str:
        return f"<ChaosClient {self.url}>"
