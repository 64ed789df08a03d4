"""The response cache, and the rule that a rejected answer is never served again.

``init_cache`` installs litellm's ``Cache`` (in memory, on disk, or in Redis) as
``litellm.cache``. The litellm route then reads it before every call and writes it **only
when the answer was accepted**: ``retry_with_validation`` tells the route its verdict
(``ModelCall.accept`` / ``ModelCall.reject``), so an answer that failed validation is never
stored, and one that was served from the cache and then failed is evicted. Response ids of
rejected answers are also remembered, so a stale copy in a shared cache (another process's
disk cache) is skipped as well.

A reject evicts only the entry *this call* was served. Many calls share a key (the same
prompt, sent concurrently), and another call may have accepted and stored its own answer
under it while this one was waiting for its verdict: that entry is not this call's to
delete. Each stored entry carries a random ``token``; a served answer carries the token of
the entry it came from (``_hidden_params["cache_token"]``), and :func:`reject` deletes the
entry under the key only if its token is still that one. An answer that was not served from
the cache was never stored (only accepted answers are), so rejecting it deletes nothing.
With the Redis kind, a store by another process between the read and the delete can still
lose that entry (two round trips, not one script); the in-memory and disk kinds have no such
window in one event loop.

Why not litellm's own automatic caching: it stores every answer in a background task
*after* the call returns, so a rejected answer would land in the cache after we evicted
it; and its cache-hit path imports litellm's proxy server modules (``orjson``,
``soundfile``), which a client has no business installing. retrylib uses litellm's cache
objects and key function, and calls litellm with ``caching=False``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from retrylib._extras import missing, require
from retrylib.errors import ConfigError

try:
    import litellm
    from litellm.caching.base_cache import BaseCache
    from litellm.caching.caching import Cache
except ModuleNotFoundError as exc:
    raise missing(exc, "retrylib's response cache") from None

KINDS = ("memory", "disk", "redis")
_REJECTED_MAX = 10_000
# Keys that steer retrylib or litellm but do not change the answer: not part of the key.
_NOT_KEYED = {"timeout", "num_retries", "max_retries", "caching", "cache", "api_key",
              "extra_headers", "metadata"}


class _RejectedIds:
    """A bounded, thread-safe set of response ids that failed validation."""

    def __init__(self, maxlen: int = _REJECTED_MAX):
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._maxlen = maxlen

    def add(self, rid: str) -> None:
        with self._lock:
            self._ids[rid] = None
            self._ids.move_to_end(rid)
            while len(self._ids) > self._maxlen:
                self._ids.popitem(last=False)

    def __contains__(self, rid: object) -> bool:
        with self._lock:
            return rid in self._ids


REJECTED = _RejectedIds()


class DiskCache(BaseCache):
    """A persistent cache backend on ``diskcache`` (litellm 1.110 dropped its own)."""

    def __init__(self, directory: str | Path):
        super().__init__()
        diskcache = require("diskcache", "the disk cache")

        self.directory = Path(directory)
        self.disk = diskcache.Cache(str(self.directory))

    def set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        self.disk.set(key, value, expire=kwargs.get("ttl"))

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        self.set_cache(key, value, **kwargs)

    async def async_set_cache_pipeline(self, cache_list: list[tuple[str, Any]], **kwargs: Any) -> None:
        for key, value in cache_list:
            self.set_cache(key, value, **kwargs)

    def get_cache(self, key: str, **kwargs: Any) -> Any:
        return self.disk.get(key)

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        return self.get_cache(key)

    def delete_cache(self, key: str) -> None:
        self.disk.delete(key)

    async def async_delete_cache(self, key: str) -> None:
        self.delete_cache(key)

    def flush_cache(self) -> None:
        self.disk.clear()


def init_cache(kind: str = "memory", **kwargs: Any) -> Cache:
    """Install the response cache for every litellm-route call.

    Args:
        kind: ``memory``, ``disk`` (``disk_cache_dir``, default ``.cache/retrylib``) or
            ``redis`` (``host``, ``port``, ``password``).
        **kwargs: passed to litellm's ``Cache`` (``ttl``, ...).

    Returns:
        The installed cache (also in ``litellm.cache``).

    Raises:
        ConfigError: an unknown kind or bad arguments.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown cache kind {kind!r}; use one of {sorted(KINDS)}")
    try:
        if kind == "disk":
            directory = kwargs.pop("disk_cache_dir", None) or Path(".cache") / "retrylib"
            cache = Cache(type="local", **kwargs)  # type: ignore[arg-type]
            cache.cache = DiskCache(directory)
        else:
            cache = Cache(type="local" if kind == "memory" else "redis", **kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"init_cache({kind!r}): {exc}") from exc
    litellm.cache = cache
    return cache


def disable_cache() -> None:
    """Remove the response cache."""
    litellm.cache = None


def cache_enabled() -> bool:
    return litellm.cache is not None


def cache_key(request: dict[str, Any]) -> str | None:
    """The cache key of a request (litellm's key function over the answer-shaping kwargs)."""
    cache = litellm.cache
    if cache is None:
        return None
    return cache.get_cache_key(**{k: v for k, v in request.items() if k not in _NOT_KEYED})


def _wants_no_cache(request: dict[str, Any]) -> bool:
    control = request.get("cache")
    return isinstance(control, dict) and bool(control.get("no-cache"))


async def lookup(request: dict[str, Any]) -> Any:
    """A cached ``ModelResponse`` for ``request``, or ``None``; never a rejected one."""
    key = cache_key(request)
    if key is None or _wants_no_cache(request):
        return None
    stored = await litellm.cache.cache.async_get_cache(key)  # type: ignore[union-attr]
    if not isinstance(stored, dict) or "response" not in stored:
        return None
    data = stored["response"]
    data = json.loads(data) if isinstance(data, str) else data
    if str(data.get("id")) in REJECTED:
        return None
    response = litellm.ModelResponse(**data)
    response._hidden_params["cache_hit"] = True
    response._hidden_params["cache_key"] = key
    response._hidden_params["cache_token"] = _token(stored)
    return response


def _token(stored: Any) -> str | None:
    """The token of a stored entry; an entry written before tokens existed: its response id."""
    if not isinstance(stored, dict):
        return None
    if stored.get("token"):
        return str(stored["token"])
    data = stored.get("response")
    try:
        data = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return None
    return f"id:{data.get('id')}" if isinstance(data, dict) and data.get("id") else None


async def store(response: Any, request: dict[str, Any]) -> bool:
    """Cache an accepted response (not one served from the cache already)."""
    key = cache_key(request)
    if key is None or getattr(response, "_hidden_params", {}).get("cache_hit"):
        return False
    if isinstance(request.get("cache"), dict) and request["cache"].get("no-store"):
        return False
    payload = {"timestamp": time.time(), "token": uuid.uuid4().hex,
               "response": response.model_dump_json(exclude_unset=True)}
    await litellm.cache.cache.async_set_cache(key, payload, ttl=litellm.cache.ttl)  # type: ignore[union-attr]
    return True


async def reject(response: Any, request: dict[str, Any]) -> bool:
    """Make sure ``response`` is never served from the cache again.

    Its id joins the rejected ids (a stale copy elsewhere is skipped by :func:`lookup`), and
    the entry it was served from is deleted, if the key still holds that entry: an entry
    that another call stored under the same key meanwhile is left alone.

    Returns:
        Whether this response's own entry was deleted.
    """
    rid = getattr(response, "id", None)
    if rid:
        REJECTED.add(str(rid))
    hidden = getattr(response, "_hidden_params", None) or {}
    mine = hidden.get("cache_token") if hidden.get("cache_hit") else None
    key = cache_key(request)
    if key is None or mine is None:
        return False  # not served from the cache: never stored, nothing of ours to evict
    backend = litellm.cache.cache  # type: ignore[union-attr]
    if _token(await backend.async_get_cache(key)) != mine:
        return False  # gone already, or another call's accepted answer: not ours to delete
    delete = getattr(backend, "async_delete_cache", None)
    if delete is not None:
        await delete(key)
    else:
        backend.delete_cache(key)  # type: ignore[union-attr]
    return True


def was_rejected(response: Any) -> bool:
    """Whether this response (by id) failed validation before."""
    rid = getattr(response, "id", None)
    return bool(rid) and str(rid) in REJECTED
