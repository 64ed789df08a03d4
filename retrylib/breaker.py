"""A circuit breaker per model: closed → open → half-open, shared through a state store.

::

             failure_threshold consecutive               cooldown passed:
             transport failures                          the next request is a probe
    closed ─────────────────────────────> open ──────────────────────────────> half_open
      ▲                                    ▲                                      │
      │          a probe fails             └──────────────────────────────────────┤
      └───────────────────────────────────────────────────────────────────────────┘
                 a probe succeeds (the server answered)

- **closed**: every request goes. A transport failure counts; a success resets the count.
  Only *transport* failures count (5xx, 429, timeouts, refused or reset connections:
  :func:`attempt_ok`): an answer that fails validation, or a 4xx the server sent on purpose,
  shows that the server is up.
- **open**: no request goes for ``cooldown`` seconds. The retry loop moves to the next
  fallback model at once, or ends the call with
  :class:`~retrylib.errors.CircuitOpenError` (``decision.error(attempts=...)``) when none
  is left.
- **half_open**: up to ``half_open_max_calls`` probes go; the first result decides. A probe
  that never reports (its worker died) is forgotten after one more ``cooldown``.

Polly's order is the reference for the loop: total deadline → retry → breaker → attempt
timeout, so the breaker is asked before *each* attempt (:meth:`CircuitBreaker.allow`), and
told each attempt's result (:meth:`CircuitBreaker.record`).

Time: ``clock=None`` uses the store's clock (in-process: ``time.monotonic``; Redis: the
server's ``TIME``, one clock for every worker on every machine). A ``clock`` callable
(monotonic seconds) drives time instead, so tests step through a cooldown without sleeping;
with Redis, every worker must then use the same clock (``time.time`` on synchronised hosts).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from retrylib.errors import ConfigError
from retrylib.state.base import (
    BreakerDecision,
    BreakerPolicy,
    KeyRule,
    StateStore,
    check_key_rule,
    resolve_key,
)

__all__ = ["BreakerDecision", "CircuitBreaker", "attempt_ok"]


def attempt_ok(attempt: Any) -> bool:
    """What an attempt tells the breaker: ``False`` for a transport failure that retrying
    could fix (the server is down or overloaded), ``True`` otherwise (it answered: a valid or
    invalid answer, or a deliberate non-retryable error such as 400 or 401)."""
    return not (attempt.outcome == "transport_error" and attempt.retryable is not False)


class CircuitBreaker:
    """Per-model circuit breakers (see the module docstring).

    Args:
        failure_threshold: consecutive transport failures that open a breaker (≥ 1).
        cooldown: seconds (``float`` or ``timedelta``) an open breaker refuses requests.
        half_open_max_calls: probes let through at once in half-open (≥ 1).
        key: ``"model"`` (the default), ``"route"``, a fixed name or ``key(model, api_base)``.
        store: where the breakers live; ``None``: a process-local ``MemoryStore``.
        clock: monotonic seconds for the breaker's times; ``None``: the store's clock.

    Raises:
        ConfigError: a bad argument (named).
    """

    def __init__(self, failure_threshold: int = 5, cooldown: float | timedelta = 30.0,
                 half_open_max_calls: int = 1, *, key: KeyRule = "model",
                 store: StateStore | None = None, clock: Callable[[], float] | None = None):
        if isinstance(cooldown, timedelta):
            cooldown = cooldown.total_seconds()
        for name, value in (("failure_threshold", failure_threshold),
                            ("half_open_max_calls", half_open_max_calls)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
                raise ConfigError(f"CircuitBreaker {name} must be an integer >= 1, got {value!r}")
        if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) \
                or not 0 < cooldown < 1e9:
            raise ConfigError(f"CircuitBreaker cooldown must be > 0 seconds (float or timedelta), "
                              f"got {cooldown!r}")
        if clock is not None and not callable(clock):
            raise ConfigError(f"CircuitBreaker clock must be a callable returning seconds, got {clock!r}")
        from retrylib.state import MemoryStore

        self.policy = BreakerPolicy(int(failure_threshold), float(cooldown), int(half_open_max_calls))
        self.key = check_key_rule(key)
        self.store: StateStore = MemoryStore() if store is None else store
        self.clock = clock

    @property
    def failure_threshold(self) -> int:
        return self.policy.failure_threshold

    @property
    def cooldown(self) -> float:
        return self.policy.cooldown

    @property
    def half_open_max_calls(self) -> int:
        return self.policy.half_open_max_calls

    def __repr__(self) -> str:
        p = self.policy
        return (f"CircuitBreaker(failure_threshold={p.failure_threshold}, cooldown={p.cooldown:g}, "
                f"half_open_max_calls={p.half_open_max_calls}, key={self.key!r}, "
                f"store={self.store!r})")

    def key_for(self, model: str | None = None, api_base: str | None = None) -> str:
        """The breaker a request to ``model`` (at ``api_base``) goes through."""
        return resolve_key(self.key, model, api_base)

    def _now(self) -> float | None:
        return None if self.clock is None else float(self.clock())

    async def allow(self, model: str | None = None, *, api_base: str | None = None) -> BreakerDecision:
        """May a request go to ``model`` now? In half-open, an allowed request is a probe
        (``decision.probe``), and its :meth:`record` decides the state.

        Raises:
            StateStoreError: the store is unreachable and was told ``on_error="raise"``.
        """
        return await self.store.breaker_allow(self.key_for(model, api_base), self.policy, self._now())

    async def record(self, model: str | None = None, ok: bool = True, *,
                     api_base: str | None = None) -> BreakerDecision:
        """Count one attempt's result: ``ok=False`` for a transport failure (:func:`attempt_ok`).

        Returns:
            The state after it (``state == "open"``: this failure opened it, or it was open).
        """
        return await self.store.breaker_record(self.key_for(model, api_base), bool(ok),
                                               self.policy, self._now())

    async def state(self, model: str | None = None, *, api_base: str | None = None) -> BreakerDecision:
        """The breaker's state now, and whether it would let a request through (no probe taken)."""
        return await self.store.breaker_state(self.key_for(model, api_base), self.policy, self._now())

    async def aclose(self) -> None:
        """Release the store's connections for the running event loop."""
        await self.store.aclose()

    def spec(self) -> dict[str, Any]:
        """Plain data :meth:`from_spec` rebuilds this breaker from (in another process)."""
        p = self.policy
        return {"kind": "circuit_breaker", "failure_threshold": p.failure_threshold,
                "cooldown": p.cooldown, "half_open_max_calls": p.half_open_max_calls,
                "key": self.key, "clock": self.clock, "store": self.store.spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CircuitBreaker:
        """The breaker :meth:`spec` describes, against a store rebuilt from its spec."""
        from retrylib.state import from_spec

        kw = {k: v for k, v in spec.items() if k not in ("kind", "store")}
        return cls(store=from_spec(spec.get("store")), **kw)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_breaker_from_spec, (self.spec(),))


def _breaker_from_spec(spec: dict[str, Any]) -> CircuitBreaker:
    return CircuitBreaker.from_spec(spec)
