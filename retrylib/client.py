"""One async call function, two routes.

- **litellm route** (any litellm model string: ``openai/smollm2``, ``anthropic/...``):
  ``litellm.acompletion``, returning a ``ModelResponse``. litellm's cache applies. Needs
  the ``[litellm]`` extra; it is imported on the first call of this route only.
- **proxy route** (model ``proxy/<name>``): a plain httpx POST to an OpenAI-compatible
  ``{api_base}/chat/completions``, returning the JSON dict exactly as received. The base URL
  is the ``api_base`` argument, else ``$RETRYLIB_PROXY_URL``. Core install only.

``stream=True`` works on both: the stream is read to its end and returned whole, as the
route returns an answer that was not streamed (:mod:`retrylib.streams`), since an answer is
validated whole; a stream that breaks off is a transport failure, retried like any other.

Provider-level retries are off on both routes (``num_retries=0``, ``max_retries=0``): only
retrylib retries, so the requests a server receives equal the calls retrylib made.

``timeout`` bounds the whole request on both routes: connecting, sending and every byte of
the reply (the clients' own timeouts are per read, so a body that drips would pass them).
On the proxy route the wait for a pool slot comes first and is not counted: the proxy
route's pool, one per event loop, and how every loop's HTTP clients are closed as it ends,
are in :mod:`retrylib.pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
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
from retrylib.pool import litellm_gate, pool
from retrylib.streams import assemble_sse, is_event_stream, read_litellm_stream

PROXY_PREFIX = "proxy/"
PROXY_URL_ENV = "RETRYLIB_PROXY_URL"
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


def check_timeout(timeout: Any, model: str) -> None:
    """Refuse a request ``timeout`` that is not a finite number of seconds above 0.

    ``inf`` used to reach the transport, where litellm's ``OverflowError`` came back as a
    retried "Connection error" with no request sent. An ``httpx.Timeout`` passes as it is.

    Raises:
        ConfigError: naming the value and the model.
    """
    if timeout is None or isinstance(timeout, httpx.Timeout):
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"timeout must be a finite number of seconds > 0 (or an httpx.Timeout), "
                          f"got {timeout!r} (model {model})")


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
    request = litellm_request(messages, model=model, api_base=api_base, api_key=api_key,
                              timeout=timeout, **kwargs)
    # The wait at the gate is not part of the request; litellm's own timeout is per read.
    async with litellm_gate(), _whole_request(request["timeout"]):
        response = await _litellm_call(request)
        if request.get("stream") and not hasattr(response, "choices"):  # (a cache hit is whole)
            response = await read_litellm_stream(response, messages)
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
    content = json.dumps({"model": model, "messages": messages, **kwargs}, ensure_ascii=False,
                         separators=(",", ":"), allow_nan=False).encode()
    limit = timeout or _DEFAULT_TIMEOUT
    slots = pool()
    async with slots.gate, _whole_request(limit):  # the slot wait is not part of the request
        reply = await slots.post(base.rstrip("/") + "/chat/completions", content, headers, limit)
    if reply.status >= 400:
        raise ProxyHTTPError(reply.status, reply.headers, reply.text)
    if kwargs.get("stream") and is_event_stream(reply.headers, reply.body):
        return assemble_sse(reply.body, reply.status)
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        raise MalformedResponseError(reply.status, reply.text) from exc


@contextlib.asynccontextmanager
async def _whole_request(limit: float) -> AsyncGenerator[None, None]:
    """Bound the whole request by ``limit`` seconds: connect, send, every byte of the reply.

    Raises:
        httpx.ReadTimeout: the bound passed (a retryable timeout, as the routes' own are).
    """
    try:
        async with asyncio.timeout(limit) as bound:
            yield
    except TimeoutError:
        if not bound.expired():  # a timeout from inside the route: its own, keep it
            raise
        raise httpx.ReadTimeout(f"the request took longer than its timeout ({limit:g}s, the whole "
                                f"request: connect, send and the reply's body)") from None


class ModelCall:
    """A model bound to its route and default arguments: ``await call(messages=..., **kw)``.

    Keyword arguments given per call override the defaults (the fallback stage overrides
    ``model`` and ``api_base`` this way). ``reject`` evicts a rejected answer from litellm's
    cache; ``retry_with_validation`` calls it.

    ``bounds_attempt`` is ``True``: the call itself holds ``timeout`` over the whole request,
    body included, on both routes, and on the proxy route the wait for a pool slot comes
    before it and is not counted. A retry loop need not (and, to keep that wait out, should
    not) wrap the call in its own ``attempt_timeout``; only its deadline.
    """

    bounds_attempt = True

    def __init__(self, model: str, **defaults: Any):
        if not model or not isinstance(model, str):
            raise ConfigError(f"model must be a non-empty string, got {model!r}")
        check_api_base(defaults.get("api_base"), model)
        check_timeout(defaults.get("timeout"), model)
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
        if "timeout" in kw:
            check_timeout(kw["timeout"], req["model"])
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
