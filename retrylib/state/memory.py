"""``MemoryStore``: the in-process state store, the default of the budget and the breaker.

Every operation runs under one ``threading.Lock`` and never awaits while holding it, so it
is atomic across the asyncio tasks of a loop and across threads (several event loops, a
``run_sync`` thread, a thread pool). It is *per process*: a forked or spawned worker gets
its own store. To share a budget or a breaker between processes, use
:class:`~retrylib.state.RedisStore`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from retrylib.state.base import (
    MICRO,
    BreakerDecision,
    BreakerPolicy,
    StateStore,
    check_bucket_args,
    decide,
    micro,
)

# A breaker's record: [state index, failures, opened_at, probes out, last probe granted at].
_Record = list[Any]


def _observe(rec: _Record, policy: BreakerPolicy, now: float) -> None:
    """The lazy, time-driven transitions (see :mod:`retrylib.state.base`)."""
    if rec[0] == 1 and now >= rec[2] + policy.cooldown:
        rec[0], rec[3], rec[4] = 2, 0, 0.0
    if rec[0] == 2 and rec[3] > 0 and now >= rec[4] + policy.cooldown:
        rec[3] = 0  # probes granted a cooldown ago never reported: their workers are gone


class MemoryStore(StateStore):
    """Token buckets and circuit breakers in this process's memory.

    Args:
        clock: the store's clock for breaker operations called with ``now=None``
            (default ``time.monotonic``).
    """

    kind: ClassVar[str] = "memory"

    def __init__(self, clock: Callable[[], float] | None = None):
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._buckets: dict[str, int] = {}  # micro-tokens
        self._breakers: dict[str, _Record] = {}

    def __repr__(self) -> str:
        return f"<MemoryStore buckets={len(self._buckets)} breakers={len(self._breakers)}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Another process cannot share this memory: it gets a store of its own.
        return (MemoryStore, ())

    # -- token buckets -------------------------------------------------------------------

    async def bucket_spend(self, key: str, cost: float, max_tokens: float,
                           threshold: float) -> tuple[bool, float]:
        check_bucket_args(cost, max_tokens, threshold)
        top, c, t = micro(max_tokens), micro(cost), micro(threshold)
        with self._lock:
            level = min(self._buckets.get(key, top), top)
            allowed = level > t
            if allowed:
                level = max(0, level - c)
            self._buckets[key] = level
        return allowed, level / MICRO

    async def bucket_credit(self, key: str, amount: float, max_tokens: float) -> float:
        check_bucket_args(0, max_tokens)
        top = micro(max_tokens)
        with self._lock:
            level = min(top, max(0, min(self._buckets.get(key, top), top) + micro(amount)))
            self._buckets[key] = level
        return level / MICRO

    async def bucket_level(self, key: str, max_tokens: float) -> float:
        top = micro(max_tokens)
        with self._lock:
            return min(self._buckets.get(key, top), top) / MICRO

    # -- circuit breakers ----------------------------------------------------------------

    def _record(self, key: str) -> _Record:
        rec = self._breakers.get(key)
        if rec is None:
            rec = self._breakers[key] = [0, 0, 0.0, 0, 0.0]
        return rec

    async def breaker_allow(self, key: str, policy: BreakerPolicy,
                            now: float | None = None) -> BreakerDecision:
        t = self._clock() if now is None else float(now)
        with self._lock:
            rec = self._record(key)
            _observe(rec, policy, t)
            if rec[0] == 2 and rec[3] < policy.half_open_max_calls:
                rec[3] += 1
                rec[4] = t
                return decide(key, rec, policy, t, probe=True)
            return decide(key, rec, policy, t)

    async def breaker_record(self, key: str, ok: bool, policy: BreakerPolicy,
                             now: float | None = None) -> BreakerDecision:
        t = self._clock() if now is None else float(now)
        with self._lock:
            rec = self._record(key)
            _observe(rec, policy, t)
            state = rec[0]
            if ok:
                if state == 2:
                    rec[0], rec[1], rec[3] = 0, 0, 0
                elif state == 0:
                    rec[1] = 0
            else:
                rec[1] += 1
                if (state == 0 and rec[1] >= policy.failure_threshold) or state == 2:
                    rec[0], rec[2], rec[3] = 1, t, 0
            return decide(key, rec, policy, t)

    async def breaker_state(self, key: str, policy: BreakerPolicy,
                            now: float | None = None) -> BreakerDecision:
        t = self._clock() if now is None else float(now)
        with self._lock:
            rec = list(self._breakers.get(key) or [0, 0, 0.0, 0, 0.0])  # a copy: a read
            _observe(rec, policy, t)
            return decide(key, rec, policy, t)

    async def clear(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._breakers.clear()

    def spec(self) -> dict[str, Any]:
        return {"kind": "memory"}
