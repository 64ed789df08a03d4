"""litellm's response cache, and the rule that a rejected answer is never served again.

``init_cache`` installs litellm's own cache (in memory, on disk, or in Redis); the litellm
route then reads and writes it on every call. A cached answer is only as good as its last
verdict, so when the retry loop rejects an answer, :func:`reject` does two things:

1. it deletes the cache entry for that request (so a later, identical request misses);
2. it remembers the response's id, so that if the same answer is served from any cache
   (another process's disk cache, a key computed differently), the route calls the model
   again with the cache read switched off, which also overwrites the stale entry.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from litellm.caching.caching import Cache  # noqa: E402

from retrylib.errors import ConfigError  # noqa: E402

_KINDS = {"memory": "local", "disk": "disk", "redis": "redis"}
_REJECTED_MAX = 10_000


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


def init_cache(kind: str = "memory", **kwargs: Any) -> Cache:
    """Install litellm's cache for every litellm-route call.

    Args:
        kind: ``memory``, ``disk`` (needs ``disk_cache_dir``, or uses litellm's default), or
            ``redis`` (``host``, ``port``, ``password``).
        **kwargs: passed to ``litellm.caching.caching.Cache``.

    Returns:
        The installed cache (also in ``litellm.cache``).

    Raises:
        ConfigError: an unknown kind.
    """
    if kind not in _KINDS:
        raise ConfigError(f"unknown cache kind {kind!r}; use one of {sorted(_KINDS)}")
    litellm.cache = Cache(type=_KINDS[kind], **kwargs)  # type: ignore[arg-type]
    return litellm.cache


def disable_cache() -> None:
    """Remove litellm's cache."""
    litellm.cache = None


def cache_enabled() -> bool:
    return litellm.cache is not None


async def reject(response: Any, request: dict[str, Any]) -> bool:
    """Make sure ``response`` is never served from the cache again.

    Args:
        response: the rejected response.
        request: the kwargs of the ``litellm.acompletion`` call that produced it.

    Returns:
        Whether a cache entry was deleted.
    """
    rid = getattr(response, "id", None)
    if rid:
        REJECTED.add(str(rid))
    cache = litellm.cache
    if cache is None:
        return False
    hidden = getattr(response, "_hidden_params", None) or {}
    keys = {cache.get_cache_key(**request)}
    if hidden.get("cache_key"):
        keys.add(hidden["cache_key"])
    backend = cache.cache
    deleted = False
    for key in keys:
        delete = getattr(backend, "async_delete_cache", None) or getattr(backend, "delete_cache", None)
        if delete is None:
            continue
        out = delete(key)
        if hasattr(out, "__await__"):
            await out
        deleted = True
    return deleted


def was_rejected(response: Any) -> bool:
    """Whether this response (by id) failed validation before."""
    rid = getattr(response, "id", None)
    return bool(rid) and str(rid) in REJECTED
