"""One async call function, two routes.

- **litellm route** (any litellm model string: ``openai/smollm2``, ``anthropic/...``):
  ``litellm.acompletion``, returning a ``ModelResponse``. litellm's cache applies. Needs
  the ``[litellm]`` extra; it is imported on the first call of this route only.
- **proxy route** (model ``proxy/<name>``): a plain httpx POST to an OpenAI-compatible
  ``{api_base}/chat/completions``, returning the JSON dict exactly as received. The base URL
  is the ``api_base`` argument, else ``$RETRYLIB_PROXY_URL``. Core install only.

Provider-level retries are off on both routes (``num_retries=0``, ``max_retries=0``): only
retrylib retries, so the requests a server receives equal the calls retrylib made.

The proxy route under load
--------------------------
httpcore's pool checks every queued request against every connection, so 1,000 requests
queued on one pool starve the event loop (measured: 0 of 1,000 reached the server in 90 s).
So at most :data:`PROXY_POOL_SIZE` requests per event loop are handed to the pool, which has
exactly that many connections; the others wait in front of it, on a semaphore that is
cheap to wait on. That wait is not part of the attempt: ``timeout`` starts once a connection
slot is held, and it bounds the whole request, from connecting to the last byte of the body
(httpx's own timeouts are per read). A call that waits for a slot is never failed for it;
only the retry loop's ``deadline`` ends such a wait. ``benchmarks/load.py`` measures it.

Clients live as long as their event loop
----------------------------------------
The proxy route's httpx client is made once per event loop, and litellm keeps its own
clients per loop. When the loop ends through ``asyncio.run`` or ``asyncio.Runner`` (as each
``retry_with_validation_sync`` call does), retrylib closes both, so no socket outlives its
loop. A loop that is closed without ``shutdown_asyncgens()`` leaves them to the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import sys
from types import ModuleType

import httpx

from retrylib._extras import require
from retrylib.errors import ConfigError, MalformedResponseError, ProxyHTTPError

PROXY_PREFIX = "proxy/"
PROXY_URL_ENV = "RETRYLIB_PROXY_URL"
#: Requests in flight at once on the proxy route, per event loop (= its connections). Chosen
#: by measurement (benchmarks/load.py): 100 keeps throughput at the upstream-free proxy's rate
#: with 10,000 calls waiting, where httpcore's pool scan stays cheap.
PROXY_POOL_SIZE = 100
_LOCAL_KEY = "sk-local-no-key"
_DEFAULT_TIMEOUT = 600.0


def _cache() -> ModuleType | None:
    """retrylib's cache module when litellm is loaded (a cache exists only then), else None."""
    if "litellm" not in sys.modules:
        return None
    from retrylib import cache

    return cache if cache.cache_enabled() else None


def is_proxy_model(model: str) -> bool:
    return model.startswith(PROXY_PREFIX)


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1") or (host or "").startswith("127.")


def check_api_base(api_base: Any, model: str) -> None:
    """Refuse an ``api_base`` that no request can reach: retrying cannot fix it.

    Raises:
        ConfigError: not a string, or not an ``http(s)://host...`` URL (``localhost:1/v1``
            has no scheme), naming the argument and the model.
    """
    if api_base is None:
        return
    if not isinstance(api_base, str):
        raise ConfigError(f"api_base must be a URL string such as http://127.0.0.1:8080/v1, got "
                          f"{type(api_base).__name__} {api_base!r} (model {model})")
    url = urlparse(api_base)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"api_base must be an http:// or https:// URL with a host, such as "
                          f"http://127.0.0.1:8080/v1; got {api_base!r} (model {model})")


def _proxy_base(api_base: str | None, model: str) -> str:
    base = api_base or os.environ.get(PROXY_URL_ENV)
    if not base:
        raise ConfigError(f"the proxy route needs api_base= or ${PROXY_URL_ENV} (model {model})")
    check_api_base(base, model)
    return base


async def acompletion(
    messages: list[dict[str, Any]],
    *,
    model: str,
    api_base: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    store: bool = True,
    **kwargs: Any,
) -> Any:
    """Send one chat completion request through the route the model string names.

    Args:
        messages: the conversation.
        model: a litellm model string, or ``proxy/<name>`` for the plain HTTP route.
        api_base: the server's OpenAI base URL (``http://host:port/v1``).
        api_key: the key; for a loopback ``api_base`` a placeholder is used when omitted.
        timeout: seconds for the request. On the proxy route it bounds the whole request
            (connect, send, the body's last byte), and not the wait for a pool slot.
        store: cache the answer at once (when a cache is installed). ``ModelCall`` passes
            ``False`` and stores only answers the retry loop accepted.
        **kwargs: any other request parameter (``temperature``, ``response_format``,
            ``extra_headers``, ``mcp_config``, ...), passed through unchanged.

    Returns:
        A litellm ``ModelResponse`` (litellm route) or the response ``dict`` (proxy route).

    Raises:
        ConfigError: before any request: an empty model, an ``api_base`` that is not an
            http(s) URL, the proxy route without a base URL.
        ProxyHTTPError, MalformedResponseError, httpx.HTTPError: on the proxy route.
        litellm's exceptions: on the litellm route.
    """
    if not model or not isinstance(model, str):
        raise ConfigError(f"model must be a non-empty string, got {model!r}")
    check_api_base(api_base, model)
    if api_key is None and _is_loopback(api_base):
        api_key = _LOCAL_KEY
    if is_proxy_model(model):
        base = _proxy_base(api_base, model)
        return await _proxy(messages, model[len(PROXY_PREFIX):], base, api_key, timeout, kwargs)
    _closes_with_loop()
    request = litellm_request(messages, model=model, api_base=api_base, api_key=api_key,
                              timeout=timeout, **kwargs)
    response = await _litellm_call(request)
    c = _cache()
    if store and c is not None:
        await c.store(response, request)
    return response


def litellm_request(messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """The exact keyword arguments the litellm route sends (provider retries off)."""
    for k in ("num_retries", "max_retries", "caching"):
        kwargs.pop(k, None)
    kwargs["timeout"] = kwargs.get("timeout") or _DEFAULT_TIMEOUT
    return {"messages": messages, **kwargs, "num_retries": 0, "max_retries": 0}


async def _litellm_call(request: dict[str, Any]) -> Any:
    """Serve from retrylib's cache rules, else call litellm with its own caching off."""
    litellm = require("litellm", f"the litellm route (model {request.get('model')!r})")
    c = _cache()
    if c is not None:
        hit = await c.lookup(request)
        if hit is not None:
            return hit
    # litellm's own cache stays out of it, for reads and for its background writes.
    control = {**(request.get("cache") or {}), "no-cache": True, "no-store": True}
    return await litellm.acompletion(**{**request, "caching": False, "cache": control})


async def _proxy(messages: list[dict[str, Any]], model: str, base: str, api_key: str | None,
                 timeout: float | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **(kwargs.pop("extra_headers", None) or {})}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    for k in ("num_retries", "max_retries", "caching", "cache", "metadata"):
        kwargs.pop(k, None)
    body = {"model": model, "messages": messages, **kwargs}
    limit = timeout or _DEFAULT_TIMEOUT
    pool = _pool()
    async with pool.gate:  # the wait for a slot: not part of the attempt, never a failure
        try:
            async with asyncio.timeout(limit):  # the whole request, not each read
                resp = await pool.client.post(base.rstrip("/") + "/chat/completions", json=body,
                                              headers=headers, timeout=httpx.Timeout(limit, pool=None))
        except TimeoutError:
            raise httpx.ReadTimeout(f"the request took longer than its timeout ({limit}s, the "
                                    f"whole request: connect, send and the reply's body)") from None
    if resp.status_code >= 400:
        raise ProxyHTTPError(resp.status_code, dict(resp.headers), resp.text)
    try:
        return resp.json()
    except ValueError as exc:
        raise MalformedResponseError(resp.status_code, resp.text) from exc


class _Pool:
    """The proxy route's client of one event loop, and the gate in front of its pool."""

    __slots__ = ("client", "gate")

    def __init__(self, size: int):
        self.gate = asyncio.Semaphore(size)
        self.client = httpx.AsyncClient(limits=httpx.Limits(
            max_connections=size, max_keepalive_connections=size))


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()
# Per loop: the async generator whose ``finally`` closes the loop's clients when the loop
# shuts its async generators down (asyncio.run and asyncio.Runner do, as they end).
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = \
    weakref.WeakKeyDictionary()


def _pool() -> _Pool:
    """The running loop's pool (built once per loop: building one costs ~60 ms, its SSL
    context, and a client must not be shared across loops)."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None or pool.client.is_closed:
        pool = _POOLS[loop] = _Pool(PROXY_POOL_SIZE)
    _closes_with_loop(loop)
    return pool


def _closes_with_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
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
    pool = _POOLS.pop(loop, None)
    if pool is not None and not pool.client.is_closed:
        await pool.client.aclose()
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


class ModelCall:
    """A model bound to its route and default arguments: ``await call(messages=..., **kw)``.

    Keyword arguments given per call override the defaults (the fallback stage overrides
    ``model`` and ``api_base`` this way). ``reject`` evicts a rejected answer from litellm's
    cache; ``retry_with_validation`` calls it.
    """

    def __init__(self, model: str, **defaults: Any):
        if not model or not isinstance(model, str):
            raise ConfigError(f"model must be a non-empty string, got {model!r}")
        check_api_base(defaults.get("api_base"), model)
        if is_proxy_model(model):
            _proxy_base(defaults.get("api_base"), model)
        self.model = model
        self.defaults = defaults
        # Answers awaiting the loop's verdict, by the identity of the messages list sent
        # (the loop builds a new list per attempt). Bounded: a caller that never gives a
        # verdict must not leak.
        self._pending: OrderedDict[int, tuple[Any, dict[str, Any]]] = OrderedDict()

    async def __call__(self, messages: list[dict[str, Any]], **kw: Any) -> Any:
        req = {"model": self.model, **self.defaults, **kw}
        response = await acompletion(messages, store=False, **req)
        if not is_proxy_model(req["model"]) and _cache() is not None:
            self._pending[id(messages)] = (response, litellm_request(messages, **req))
            while len(self._pending) > 256:
                self._pending.popitem(last=False)
        return response

    async def accept(self, messages: list[dict[str, Any]], **kw: Any) -> bool:
        """The loop accepted the answer to ``messages``: cache it."""
        pending = self._pending.pop(id(messages), None)
        c = _cache()
        return pending is not None and c is not None and await c.store(*pending)

    async def reject(self, messages: list[dict[str, Any]], **kw: Any) -> bool:
        """The loop rejected the answer to ``messages``: never serve it again."""
        pending = self._pending.pop(id(messages), None)
        c = _cache()
        return pending is not None and c is not None and await c.reject(*pending)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.defaults.items() if k != "api_key"}
        return f"ModelCall({self.model!r}, {shown})"


def make_call(model: str, **defaults: Any) -> ModelCall:
    """Bind ``model`` and default kwargs (``api_base``, ``temperature``, ...) into a call.

    Returns:
        A :class:`ModelCall` usable as ``retry_with_validation``'s ``call``.

    Raises:
        ConfigError: at once, before any request: an empty model, an ``api_base`` that is
            not an http(s) URL with a host, or a ``proxy/`` model with neither ``api_base``
            nor ``$RETRYLIB_PROXY_URL``.
    """
    return ModelCall(model, **defaults)
