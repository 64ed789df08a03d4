"""One async call function, two routes.

- **litellm route** (any litellm model string: ``openai/smollm2``, ``anthropic/...``):
  ``litellm.acompletion``, returning a ``ModelResponse``. litellm's cache applies.
- **proxy route** (model ``proxy/<name>``): a plain httpx POST to an OpenAI-compatible
  ``{api_base}/chat/completions``, returning the JSON dict exactly as received. The base URL
  is the ``api_base`` argument, else ``$RETRYLIB_PROXY_URL``.

Provider-level retries are off on both routes (``num_retries=0``, ``max_retries=0``): only
retrylib retries, so the requests a server receives equal the calls retrylib made.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402
import litellm  # noqa: E402

from retrylib import cache  # noqa: E402
from retrylib.errors import ConfigError, MalformedResponseError, ProxyHTTPError  # noqa: E402

PROXY_PREFIX = "proxy/"
PROXY_URL_ENV = "RETRYLIB_PROXY_URL"
_LOCAL_KEY = "sk-local-no-key"
_DEFAULT_TIMEOUT = 600.0


def is_proxy_model(model: str) -> bool:
    return model.startswith(PROXY_PREFIX)


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1") or (host or "").startswith("127.")


async def acompletion(
    messages: list[dict[str, Any]],
    *,
    model: str,
    api_base: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> Any:
    """Send one chat completion request through the route the model string names.

    Args:
        messages: the conversation.
        model: a litellm model string, or ``proxy/<name>`` for the plain HTTP route.
        api_base: the server's OpenAI base URL (``http://host:port/v1``).
        api_key: the key; for a loopback ``api_base`` a placeholder is used when omitted.
        timeout: seconds for the whole request.
        **kwargs: any other request parameter (``temperature``, ``response_format``,
            ``extra_headers``, ``mcp_config``, ...), passed through unchanged.

    Returns:
        A litellm ``ModelResponse`` (litellm route) or the response ``dict`` (proxy route).

    Raises:
        ConfigError: the proxy route without a base URL.
        ProxyHTTPError, MalformedResponseError, httpx.HTTPError: on the proxy route.
        litellm's exceptions: on the litellm route.
    """
    if not model:
        raise ConfigError("model must be a non-empty string")
    if api_key is None and _is_loopback(api_base):
        api_key = _LOCAL_KEY
    if is_proxy_model(model):
        return await _proxy(messages, model[len(PROXY_PREFIX):], api_base, api_key, timeout, kwargs)
    for k in ("num_retries", "max_retries"):
        kwargs.pop(k, None)
    request = dict(model=model, messages=messages, api_base=api_base, api_key=api_key,
                   timeout=timeout or _DEFAULT_TIMEOUT, num_retries=0, max_retries=0, **kwargs)
    response = await litellm.acompletion(**request)
    if cache.cache_enabled() and cache.was_rejected(response):
        # An answer that failed validation came back from a cache: ask the model afresh.
        # The fresh answer is written over the stale entry.
        response = await litellm.acompletion(**{**request, "cache": {"no-cache": True}})
    return response


async def _proxy(messages: list[dict[str, Any]], model: str, api_base: str | None,
                 api_key: str | None, timeout: float | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    base = api_base or os.environ.get(PROXY_URL_ENV)
    if not base:
        raise ConfigError(f"the proxy route needs api_base= or ${PROXY_URL_ENV} (model {PROXY_PREFIX}{model})")
    headers = {"Content-Type": "application/json", **(kwargs.pop("extra_headers", None) or {})}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    for k in ("num_retries", "max_retries", "caching", "cache", "metadata"):
        kwargs.pop(k, None)
    body = {"model": model, "messages": messages, **kwargs}
    async with httpx.AsyncClient(timeout=timeout or _DEFAULT_TIMEOUT) as http:
        resp = await http.post(base.rstrip("/") + "/chat/completions", json=body, headers=headers)
    if resp.status_code >= 400:
        raise ProxyHTTPError(resp.status_code, dict(resp.headers), resp.text)
    try:
        return resp.json()
    except ValueError as exc:
        raise MalformedResponseError(resp.status_code, resp.text) from exc


class ModelCall:
    """A model bound to its route and default arguments: ``await call(messages=..., **kw)``.

    Keyword arguments given per call override the defaults (the fallback stage overrides
    ``model`` and ``api_base`` this way). ``reject`` evicts a rejected answer from litellm's
    cache; ``retry_with_validation`` calls it.
    """

    def __init__(self, model: str, **defaults: Any):
        if not model:
            raise ConfigError("model must be a non-empty string")
        self.model = model
        self.defaults = defaults
        self._last: dict[int, Any] = {}

    def _request(self, kw: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model, **self.defaults, **kw}

    async def __call__(self, messages: list[dict[str, Any]], **kw: Any) -> Any:
        req = self._request(kw)
        response = await acompletion(messages, **req)
        # Kept (by the identity of the message list) until the verdict, for reject().
        self._last[id(messages)] = response
        if len(self._last) > 64:
            self._last.pop(next(iter(self._last)))
        return response

    async def reject(self, messages: list[dict[str, Any]], **kw: Any) -> bool:
        req = self._request(kw)
        response = self._last.pop(id(messages), None)
        if is_proxy_model(req["model"]) or response is None:
            return False
        api_key = req.get("api_key") or (_LOCAL_KEY if _is_loopback(req.get("api_base")) else None)
        return await cache.reject(response, {**req, "messages": messages, "api_key": api_key})

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.defaults.items() if k != "api_key"}
        return f"ModelCall({self.model!r}, {shown})"


def make_call(model: str, **defaults: Any) -> ModelCall:
    """Bind ``model`` and default kwargs (``api_base``, ``temperature``, ...) into a call.

    Returns:
        A :class:`ModelCall` usable as ``retry_with_validation``'s ``call``.
    """
    return ModelCall(model, **defaults)
