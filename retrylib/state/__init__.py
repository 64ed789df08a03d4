"""Shared state for the retry budget and the circuit breaker: one interface, two backends.

- :class:`StateStore`: the interface (atomic token buckets and breakers; semantics in
  :mod:`retrylib.state.base`);
- :class:`MemoryStore`: in-process, the default;
- :class:`RedisStore`: many processes on many machines (``[redis]`` extra, imported on first
  use), one Lua script per update.

A store's :meth:`~StateStore.spec` is plain data; :func:`from_spec` rebuilds the store from
it in another process (a Dask worker, say). Stores pickle as their spec.
"""

from __future__ import annotations

from typing import Any

from retrylib.errors import ConfigError
from retrylib.state.base import BreakerDecision, BreakerPolicy, StateStore
from retrylib.state.memory import MemoryStore
from retrylib.state.redis import RedisStore


def from_spec(spec: dict[str, Any] | StateStore | None) -> StateStore:
    """The store a :meth:`StateStore.spec` describes (a store is returned as it is;
    ``None`` gives a new :class:`MemoryStore`).

    Raises:
        ConfigError: the spec's ``kind`` is unknown.
    """
    if spec is None:
        return MemoryStore()
    if isinstance(spec, StateStore):
        return spec
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "memory":
        return MemoryStore()
    if kind == "redis":
        return RedisStore(**{k: v for k, v in spec.items() if k != "kind"})
    raise ConfigError(f"unknown state store spec {spec!r}: kind must be 'memory' or 'redis'")


__all__ = ["BreakerDecision", "BreakerPolicy", "MemoryStore", "RedisStore", "StateStore",
           "from_spec"]
