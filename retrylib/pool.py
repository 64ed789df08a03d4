"""The proxy route's connection pool, one per event loop, and closing each loop's clients.

The proxy route under load
--------------------------
httpcore's pool checks every queued request against every connection, so 1,000 requests
queued on one pool starve the event loop (measured: 0 of 1,000 reached the server in 90 s;
in the suite's 1,000-call test, 256 ended as ``PoolTimeout``). So at most
:data:`PROXY_POOL_SIZE` requests per event loop are handed to the pool, which has exactly
that many connections; the others wait in front of it, on a semaphore (:attr:`Pool.gate`)
that is cheap to wait on. That wait is not part of the attempt: the route's ``timeout``
starts once a slot is held (:mod:`retrylib.client`). A call that waits for a slot is never
failed for it; only the retry loop's ``deadline`` ends such a wait.

Two transports: httpx (the default, core install) and aiohttp (``$RETRYLIB_PROXY_TRANSPORT=
aiohttp``; it comes with litellm and the ``[testing]`` extra). aiohttp's request path costs
a fifth of httpx's and its connector's queue does not degrade: 7-9x the calls per second
against a fast server (benchmarks/results/load.json). Both raise the same httpx exceptions,
so a failure is classified and recorded alike.

The litellm route has a gate of its own (:data:`LITELLM_CONCURRENCY`), for memory: every call
inside litellm holds its request, logging and response objects, while one that waits at
the gate holds only its frames.

Clients live as long as their event loop
----------------------------------------
The proxy route's httpx client is made once per event loop, and litellm keeps its own
clients per loop. When the loop ends through ``asyncio.run`` or ``asyncio.Runner`` (as each
``retry_with_validation_sync`` call does), retrylib closes both, so no socket outlives its
loop: an async generator registered with the loop closes them from its ``finally`` when the
loop shuts its async generators down. A loop closed without ``shutdown_asyncgens()`` leaves
them to the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx

from retrylib.errors import ConfigError

__all__ = [
    "LITELLM_CONCURRENCY",
    "LITELLM_CONCURRENCY_ENV",
    "POOL_SIZE_ENV",
    "PROXY_POOL_SIZE",
    "TRANSPORTS",
    "TRANSPORT_ENV",
    "AiohttpPool",
    "Pool",
    "Reply",
    "close_loop_clients",
    "closes_with_loop",
    "litellm_concurrency",
    "litellm_gate",
    "pool",
    "pool_size",
    "transport",
]

#: Requests in flight at once on the proxy route, per event loop (= its connections), unless
#: ``$RETRYLIB_PROXY_POOL_SIZE`` says otherwise when the loop's pool is made. Chosen by
#: measurement (benchmarks/results/load.json, ``pool_sweep``): httpcore's cost per request
#: grows with the pool, so 100 serves a fast server best (5,000 calls at once: ~300 calls/s
#: at 100, ~150-210 at 500). A slow upstream (a real model, seconds per answer) is bound by
#: latency instead: raise it there, as many as the server can take at once.
PROXY_POOL_SIZE = 100
POOL_SIZE_ENV = "RETRYLIB_PROXY_POOL_SIZE"
#: Calls inside litellm at once on the litellm route, per event loop, unless
#: ``$RETRYLIB_LITELLM_CONCURRENCY`` says otherwise. litellm holds ~56 KB per call in flight
#: and its own pool admits 500 requests per host anyway; the rest wait at this gate, where
#: a call holds only its own frames: 3,000 calls at once, 56 KB per call without the gate,
#: 21 KB at 500, 8 KB at 100, at the same throughput (benchmarks/results/load.json). Like
#: the proxy route's, the wait at the gate is not part of the request's timeout.
LITELLM_CONCURRENCY = 500
LITELLM_CONCURRENCY_ENV = "RETRYLIB_LITELLM_CONCURRENCY"


#: The proxy route's HTTP client: ``httpx`` (the default, core install) or ``aiohttp``
#: (installed with litellm and the ``[testing]`` extra; ~8x the requests per second here,
#: see benchmarks/results/load.json). ``$RETRYLIB_PROXY_TRANSPORT`` picks one for new loops.
TRANSPORTS = ("httpx", "aiohttp")
TRANSPORT_ENV = "RETRYLIB_PROXY_TRANSPORT"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the proxy route's server sent: status, lower-cased headers, the body's bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Pool:
    """The proxy route's client of one event loop, and the gate in front of its pool.

    Whatever the transport, a failure is raised as the httpx exception it would have been
    (``httpx.ConnectError`` with the ``OSError`` beneath, ``httpx.RemoteProtocolError`` for a
    body cut short, ``httpx.ReadTimeout``), so classification and the attempt records are
    the same on both.

    Attributes:
        gate: a semaphore of ``size``: hold it while a request is in flight.
        transport: ``httpx`` or ``aiohttp``.
    """

    transport = "httpx"

    def __init__(self, size: int):
        self.gate = asyncio.Semaphore(size)
        self._client = httpx.AsyncClient(limits=httpx.Limits(
            max_connections=size, max_keepalive_connections=size))

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    async def post(self, url: str, content: bytes, headers: dict[str, str], timeout: float) -> Reply:
        """POST ``content``; per-read timeouts of ``timeout`` (the caller bounds the whole)."""
        resp = await self._client.post(url, content=content, headers=headers,
                                       timeout=httpx.Timeout(timeout, pool=None))
        return Reply(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)

    async def aclose(self) -> None:
        await self._client.aclose()


class AiohttpPool(Pool):
    """The same over aiohttp's connector, whose queue does not degrade and whose request
    path costs a fifth of httpx's (measured: 0.27 ms against 1.57 ms a request)."""

    transport = "aiohttp"

    def __init__(self, size: int):
        from retrylib._extras import require

        self._aiohttp = aiohttp = require("aiohttp", "the proxy route's aiohttp transport")
        self.gate = asyncio.Semaphore(size)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=size, limit_per_host=size),
            timeout=aiohttp.ClientTimeout(total=None))

    @property
    def closed(self) -> bool:
        return bool(self._session.closed)

    async def post(self, url: str, content: bytes, headers: dict[str, str], timeout: float) -> Reply:
        a = self._aiohttp
        try:
            async with self._session.post(url, data=content, headers=headers,
                                          timeout=a.ClientTimeout(sock_read=timeout, sock_connect=timeout)) as resp:
                body = await resp.read()
                return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
        except a.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc.os_error
        except (a.ServerTimeoutError, TimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out reading the reply") from exc
        except (a.ServerDisconnectedError, a.ClientPayloadError) as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except a.ClientOSError as exc:
            raise httpx.ReadError(str(exc)) from exc
        except a.ClientError as exc:
            raise httpx.NetworkError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._session.close()


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool] = weakref.WeakKeyDictionary()
# Per loop: the async generator whose ``finally`` closes the loop's clients when the loop
# shuts its async generators down (asyncio.run and asyncio.Runner do, as they end).
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = \
    weakref.WeakKeyDictionary()


def pool_size() -> int:
    """The proxy route's pool size for a new loop: ``$RETRYLIB_PROXY_POOL_SIZE`` or
    :data:`PROXY_POOL_SIZE`.

    Raises:
        ConfigError: the variable is not a whole number from 1 to 10,000.
    """
    return _size(POOL_SIZE_ENV, PROXY_POOL_SIZE)


def litellm_concurrency() -> int:
    """The litellm route's gate size for a new loop: ``$RETRYLIB_LITELLM_CONCURRENCY`` or
    :data:`LITELLM_CONCURRENCY`.

    Raises:
        ConfigError: the variable is not a whole number from 1 to 10,000.
    """
    return _size(LITELLM_CONCURRENCY_ENV, LITELLM_CONCURRENCY)


def _size(env: str, default: int) -> int:
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= 10_000:
        raise ConfigError(f"${env} must be a whole number from 1 to 10000, got {raw!r}")
    return size


_LITELLM_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
    weakref.WeakKeyDictionary()


def litellm_gate() -> asyncio.Semaphore:
    """The running loop's gate in front of litellm (the litellm route holds it per request)."""
    loop = asyncio.get_running_loop()
    gate = _LITELLM_GATES.get(loop)
    if gate is None:
        gate = _LITELLM_GATES[loop] = asyncio.Semaphore(litellm_concurrency())
    closes_with_loop(loop)
    return gate


def transport() -> str:
    """The proxy route's transport for a new loop: ``$RETRYLIB_PROXY_TRANSPORT`` or ``httpx``.

    Raises:
        ConfigError: the variable names another transport.
    """
    name = os.environ.get(TRANSPORT_ENV, "httpx").strip().lower() or "httpx"
    if name not in TRANSPORTS:
        raise ConfigError(f"${TRANSPORT_ENV} must be one of {', '.join(TRANSPORTS)}, got {name!r}")
    return name


def pool() -> Pool:
    """The running loop's pool (built once per loop: building one costs ~60 ms, its SSL
    context, and a client must not be shared across loops)."""
    loop = asyncio.get_running_loop()
    found = _POOLS.get(loop)
    if found is None or found.closed:
        found = _POOLS[loop] = (AiohttpPool if transport() == "aiohttp" else Pool)(pool_size())
    closes_with_loop(loop)
    return found


def closes_with_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Make sure the running loop closes retrylib's and litellm's clients as it ends."""
    loop = loop or asyncio.get_running_loop()
    if loop in _CLOSERS:
        return
    closer = _close_at_shutdown()
    _CLOSERS[loop] = closer
    # The first step runs the generator up to its yield, synchronously: asyncio's firstiter
    # hook registers it with the loop, whose shutdown_asyncgens() will aclose() it.
    step: Any = closer.asend(None)
    try:
        step.send(None)
    except StopIteration:
        pass


async def _close_at_shutdown() -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await close_loop_clients()


async def close_loop_clients() -> int:
    """Close the running loop's HTTP clients: the proxy route's, and litellm's own.

    Called as the loop ends (see the module docstring); safe to call at any time, the next
    request makes new ones.

    Returns:
        How many clients were closed.
    """
    closed = 0
    loop = asyncio.get_running_loop()
    found = _POOLS.pop(loop, None)
    if found is not None and not found.closed:
        await found.aclose()
        closed += 1
    if "litellm" in sys.modules:
        closed += await _close_litellm_clients()
    return closed


async def _close_litellm_clients() -> int:
    """Close the clients litellm built for the running loop and keeps in its client cache.

    litellm keys them by loop and closes them only when they are evicted (600 s later, or
    never), so each finished ``asyncio.run`` would leave its sockets open. This reads
    litellm 1.110's cache internals; if they change, nothing is closed (and nothing breaks).
    """
    try:
        import litellm
        from litellm.caching.evicted_client_closer import running_loop_token

        cache = litellm.in_memory_llm_clients_cache
        closer = cache.evicted_client_closer
        suffix = f"-{running_loop_token()}"
        mine = [k for k in list(cache.cache_dict) if str(k).endswith(suffix)]
    except Exception:  # another litellm layout: leave its clients to litellm
        return 0
    closed = 0
    for key in mine:
        client = cache.cache_dict.get(key)
        cache.cache_dict.pop(key, None)
        cache.ttl_dict.pop(key, None)
        owned = getattr(closer, "_is_owned", lambda _c: False)(client)
        close = getattr(client, "aclose", None) or getattr(client, "close", None)
        if owned and close is not None:
            with contextlib.suppress(Exception):  # a client that fails to close: it is gone anyway
                out = close()
                if asyncio.iscoroutine(out):
                    await out
                closed += 1
    return closed
