"""The one small interface behind the retry budget and the circuit breaker.

A :class:`StateStore` holds two kinds of record, each under its own key, and changes each
in one atomic step, so that N workers sharing a store (asyncio tasks, threads, processes on
several machines) can never over-spend a bucket or let more probes through than allowed:

**Token buckets** (the retry budget). A bucket that was never touched is full. Levels are
kept exactly, as whole micro-tokens (``round(tokens * 1e6)``), so that every backend gives
the same answer to the same sequence (floats summed in different orders would not)::

    bucket_spend(key, cost, max_tokens, threshold) -> (allowed, level)
        if level > threshold: level = max(0, level - cost); allowed
        else: refused, level unchanged
    bucket_credit(key, amount, max_tokens) -> level      level = clamp(level + amount, 0, max)
    bucket_level(key, max_tokens) -> level               a read

**Circuit breakers**: ``closed`` → ``open`` → ``half_open`` → ``closed`` (or back to ``open``).
Each operation takes the :class:`BreakerPolicy` and the time ``now``:

- *observe* (the first step of every operation): an ``open`` breaker whose cooldown has
  passed is ``half_open`` with no probe out; probes whose results never came (their
  workers died) are forgotten once no probe was granted for a whole ``cooldown``, so a
  breaker cannot stay stuck in ``half_open``.
- ``breaker_allow``: ``closed`` lets the request through; ``open`` refuses it (``retry_in``:
  seconds left of the cooldown); ``half_open`` lets it through as a probe while fewer than
  ``half_open_max_calls`` probes are out, else refuses it.
- ``breaker_record(ok)``: a success closes a ``half_open`` breaker and resets the failure
  count of a ``closed`` one; a failure counts in ``closed`` (the ``failure_threshold``-th
  consecutive one opens it) and re-opens a ``half_open`` one. An ``open`` breaker ignores
  results (late answers to requests sent before it opened) apart from counting failures.
- ``breaker_state``: what ``breaker_allow`` would say now, without taking a probe.

Time: ``now=None`` means the store's own clock (:class:`~retrylib.state.MemoryStore`:
``time.monotonic()``; :class:`~retrylib.state.RedisStore`: the Redis server's ``TIME``, one
clock for every worker on every machine). A caller that passes ``now`` must pass times from
one clock to every worker sharing the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

from retrylib.errors import CircuitOpenError, ConfigError

BreakerStateName = Literal["closed", "open", "half_open"]
#: The breaker states, by the small integer the stores keep.
STATES: tuple[BreakerStateName, ...] = ("closed", "open", "half_open")
MICRO = 1_000_000  # micro-tokens per token

KeyRule = Literal["model", "route"] | str | Callable[..., str]


def micro(tokens: float) -> int:
    """Tokens as whole micro-tokens (the stores' exact unit)."""
    return round(float(tokens) * MICRO)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The numbers a breaker operation needs (see :class:`~retrylib.breaker.CircuitBreaker`)."""

    failure_threshold: int = 5
    cooldown: float = 30.0
    half_open_max_calls: int = 1


@dataclass(frozen=True, slots=True)
class BreakerDecision:
    """A breaker's answer: its state, and whether a request may go now.

    Attributes:
        key: the breaker's key (the model).
        state: ``closed``, ``open`` or ``half_open`` (after the operation).
        allowed: the request may be sent (for ``breaker_state`` and ``breaker_record``:
            whether one would be let through now).
        retry_in: seconds until an ``open`` breaker lets a probe through (in a full
            ``half_open`` one: until the oldest probe's lease ends); ``0.0`` when allowed.
        failures: consecutive transport failures counted.
        probe: this allowed request is a half-open probe (its result decides the state).
    """

    key: str
    state: BreakerStateName
    allowed: bool
    retry_in: float = 0.0
    failures: int = 0
    probe: bool = False

    def error(self, *, attempts: list[Any] | None = None,
              last_error: dict[str, Any] | None = None) -> CircuitOpenError:
        """The :class:`~retrylib.errors.CircuitOpenError` that ends a call this refused."""
        return CircuitOpenError(self.key, self.state, self.retry_in, self.failures,
                                attempts=attempts, last_error=last_error)


def decide(key: str, rec: list[Any], policy: BreakerPolicy, now: float,
           probe: bool = False) -> BreakerDecision:
    """The decision a breaker record ``[state, failures, opened_at, probes, probe_at]`` gives
    at ``now`` (after the operation's step; ``probe``: this request took a probe slot)."""
    state = STATES[int(rec[0])]
    failures = int(rec[1])
    if state == "closed":
        return BreakerDecision(key, state, True, 0.0, failures, probe)
    if state == "open":
        return BreakerDecision(key, state, False, max(0.0, rec[2] + policy.cooldown - now), failures)
    if probe or rec[3] < policy.half_open_max_calls:
        return BreakerDecision(key, state, True, 0.0, failures, probe)
    return BreakerDecision(key, state, False, max(0.0, rec[4] + policy.cooldown - now), failures)


class StateStore(ABC):
    """Atomic token buckets and circuit breakers, shared by everyone holding the same store.

    Implementations: :class:`~retrylib.state.MemoryStore` (in-process, the default) and
    :class:`~retrylib.state.RedisStore` (many processes, many machines). See the module
    docstring for the exact semantics every backend implements.
    """

    kind: ClassVar[str] = "abstract"

    @abstractmethod
    async def bucket_spend(self, key: str, cost: float, max_tokens: float,
                           threshold: float) -> tuple[bool, float]:
        """Take ``cost`` tokens if the level is above ``threshold``; return (allowed, level)."""

    @abstractmethod
    async def bucket_credit(self, key: str, amount: float, max_tokens: float) -> float:
        """Add ``amount`` tokens (negative: take them), clamped to [0, max_tokens]; the level."""

    @abstractmethod
    async def bucket_level(self, key: str, max_tokens: float) -> float:
        """The bucket's level (``max_tokens`` when it was never touched)."""

    @abstractmethod
    async def breaker_allow(self, key: str, policy: BreakerPolicy,
                            now: float | None = None) -> BreakerDecision:
        """May a request go to ``key`` now? Takes a probe slot in ``half_open``."""

    @abstractmethod
    async def breaker_record(self, key: str, ok: bool, policy: BreakerPolicy,
                             now: float | None = None) -> BreakerDecision:
        """Count one result (``ok``: the server answered) and return the state after it."""

    @abstractmethod
    async def breaker_state(self, key: str, policy: BreakerPolicy,
                            now: float | None = None) -> BreakerDecision:
        """The state now, and whether a request would be allowed (nothing changes)."""

    @abstractmethod
    async def clear(self) -> None:
        """Forget every bucket and breaker of this store (Redis: those under its prefix)."""

    async def aclose(self) -> None:  # noqa: B027  (a no-op unless the store holds sockets)
        """Release the store's connections for the running event loop (nothing by default)."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """Plain, picklable data that :func:`retrylib.state.from_spec` rebuilds the store from.

        It holds no socket: a Dask worker (or any other process) rebuilds its own store
        against the same server. Stores pickle as their spec.
        """


def check_bucket_args(cost: float, max_tokens: float, threshold: float | None = None) -> None:
    """A :class:`ConfigError` for a negative cost or a bucket size that is not positive."""
    if not max_tokens > 0:
        raise ConfigError(f"a bucket's max_tokens must be > 0, got {max_tokens!r}")
    if not cost >= 0:
        raise ConfigError(f"a bucket spend's cost must be >= 0, got {cost!r}")
    if threshold is not None and not 0 <= threshold < max_tokens:
        raise ConfigError(f"a bucket's threshold must be in [0, max_tokens), got {threshold!r} "
                          f"(max_tokens {max_tokens!r})")


def route_of(model: str | None, api_base: str | None) -> str:
    """The route a request takes: its ``api_base`` (scheme, host and port, lower-cased) when
    it has one, else the provider prefix of a litellm model string (``openai`` of
    ``openai/gpt-4o``), else ``"default"``."""
    if api_base:
        u = urlparse(api_base)
        if u.hostname:
            port = f":{u.port}" if u.port else ""
            return f"{u.scheme}://{u.hostname.lower()}{port}"
        return api_base
    if model and "/" in model:
        return model.split("/", 1)[0]
    return model or "default"


def resolve_key(rule: KeyRule, model: str | None, api_base: str | None = None) -> str:
    """The state key for a request: ``"model"`` (the model string), ``"route"`` (see
    :func:`route_of`), a callable ``rule(model, api_base) -> str``, or any other string as
    a fixed name (every request shares it).

    Raises:
        ConfigError: a callable returned something that is not a non-empty string.
    """
    if rule == "model":
        return model or "default"
    if rule == "route":
        return route_of(model, api_base)
    if callable(rule):
        key = rule(model, api_base)
        if not isinstance(key, str) or not key:
            raise ConfigError(f"the key function {rule!r} must return a non-empty string, "
                              f"got {key!r} for model {model!r}")
        return key
    return rule


def check_key_rule(rule: Any) -> KeyRule:
    """``rule`` when it is a valid key rule, else a :class:`ConfigError` naming it."""
    if callable(rule) or (isinstance(rule, str) and rule):
        return rule
    raise ConfigError(f"key must be 'model', 'route', a non-empty name or a callable "
                      f"(model, api_base) -> str, got {rule!r}")
