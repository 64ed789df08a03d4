"""Backoff schedules: exponential growth, capped, with jitter; reproducible with a seed.

The jitter kinds are the ones compared in the AWS Architecture Blog's analysis
"Exponential Backoff and Jitter" (Marc Brooker, 2015). Jitter spreads the retries of many
clients apart so that they do not hit a recovering server in lock-step.

Seeds and keys
--------------
A ``seed`` makes a call's delays reproducible; it must not make *different* calls draw the
same delays, or the jitter is gone: 200 calls sharing ``seed=7`` would all retry at the same
instant. So the RNG of a call is seeded with the pair ``(seed, key)``:

- ``key`` is the call's own key. Give one (``Backoff(config, key="order-42")``;
  ``retry_with_validation(..., call_key="order-42")``) and the call draws the same delays
  every time, in any process: ``backoff_schedule(config, key="order-42")`` lists them.
- Without one, each :class:`Backoff` takes the next number of a process-wide counter as its
  key, so concurrent calls with one seed draw different delays. The key it took is
  :attr:`Backoff.key` (the retry loop records it); passing that key back reproduces the call.
- Without a seed the key is not used: every call draws from fresh OS entropy.

To reproduce one call exactly: run it with ``seed=S`` and ``call_key=K`` (or read the key it
was given), then ``backoff_schedule(RetryConfig(..., seed=S), key=K)`` is what it slept,
``Retry-After`` aside.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from retrylib.config import RetryConfig


def base_delay(config: RetryConfig, n: int) -> float:
    """The un-jittered delay before retry ``n`` (``n = 1`` is the wait before attempt 2).

    ``d_n = min(max_delay, initial_delay * backoff_factor ** (n - 1))``
    """
    if config.initial_delay == 0:
        return 0.0
    try:
        d = config.initial_delay * config.backoff_factor ** (n - 1)
    except OverflowError:  # 2.0 ** 10_000 does not fit in a float; the cap applies anyway.
        return config.max_delay
    return min(config.max_delay, d)


class Backoff:
    """The delays of one call, one per retry, drawn from a private RNG.

    Each call gets its own ``Backoff``, so concurrent calls share no state. For retry ``n``
    with ``d = base_delay(n)``:

    - ``none``:          ``d``
    - ``full``:          ``U(0, d)``
    - ``equal``:         ``d/2 + U(0, d/2)``
    - ``decorrelated``:  ``min(max_delay, U(initial_delay, 3 * prev))``, ``prev`` starting
      at ``initial_delay`` (it ignores ``backoff_factor``; growth comes from ``3 * prev``).

    Every delay lies in ``[0, max_delay]``.

    Args:
        config: the retry configuration (``jitter``, delays, ``seed``).
        key: the call's key, mixed with ``config.seed`` (see "Seeds and keys" above): a
            ``str`` or an ``int``. ``None``: the next number of a process-wide counter.
    """

    __slots__ = ("_config", "_key", "_n", "_prev", "_rng")
    _rng: random.Random | None

    def __init__(self, config: RetryConfig, *, key: str | int | None = None):
        self._config = config
        if config.seed is None:
            self._key = key
            # No seed: one process-wide RNG (seeding a new one costs ~10 µs a call); each draw
            # moves it on, so concurrent calls still draw different delays.
            self._rng = _UNSEEDED
        else:
            self._key = next(_KEYS) if key is None else key
            self._rng = None  # seeded on the first draw: most calls never retry
        self._n = 0
        self._prev = config.initial_delay

    @property
    def key(self) -> str | int | None:
        """The key mixed with the seed (``None`` without a seed and without a given key)."""
        return self._key

    def __iter__(self) -> Iterator[float]:
        return self

    def __next__(self) -> float:
        if self._rng is None:
            self._rng = random.Random(_seed_material(self._config.seed, self._key))  # type: ignore[arg-type]
        self._n += 1
        c = self._config
        d = base_delay(c, self._n)
        if c.jitter == "none":
            out = d
        elif c.jitter == "full":
            out = self._rng.uniform(0, d)
        elif c.jitter == "equal":
            out = d / 2 + self._rng.uniform(0, d / 2)
        else:  # decorrelated
            hi = max(c.initial_delay, 3 * self._prev)
            out = min(c.max_delay, self._rng.uniform(c.initial_delay, hi))
            self._prev = out
        # uniform() may land a hair outside its bounds through float rounding.
        return min(max(out, 0.0), c.max_delay)

    def __repr__(self) -> str:
        return (f"Backoff(jitter={self._config.jitter!r}, seed={self._config.seed!r}, "
                f"key={self._key!r}, n={self._n})")


_UNSEEDED = random.Random()

# Keys of calls that gave none. next() on a count is atomic under the GIL: threads are fine.
_KEYS = itertools.count()


def new_call_key() -> int:
    """The next key of this process's counter: what a call that gives none takes.

    Keys are drawn in one process per batch: ``run_batch_dask`` draws them in the driver, so
    calls that run in different worker processes with one seed never share a key (each
    worker's own counter would start at the same number, and their retries would line up).
    """
    return next(_KEYS)


def _seed_material(seed: int, key: str | int) -> str:
    # A str seed is hashed with SHA-512 by random.Random: the same in every process (no
    # PYTHONHASHSEED), and key 1 differs from key "1" through repr().
    return f"retrylib-backoff:{seed}:{key!r}"


def backoff_schedule(config: RetryConfig, retries: int | None = None, *,
                     key: str | int | None = None) -> list[float]:
    """The delays a call with key ``key`` uses, before attempts 2, 3, ..., in order.

    With ``config.seed`` set and the call's key (``retry_with_validation(...,
    call_key=key)``, or the key recorded for it), this is exactly what the call sleeps,
    unless a server's ``Retry-After`` asks for longer. Without a key, the schedule is that
    of a new key, as a call without one gets. Without a seed, every schedule is drawn afresh.

    Args:
        config: the retry configuration.
        retries: how many delays; by default ``config.max_attempts - 1``.
        key: the call's key (see "Seeds and keys" in the module docstring).

    Returns:
        A list of delays in seconds, each in ``[0, config.max_delay]``.
    """
    n = config.max_attempts - 1 if retries is None else retries
    b = Backoff(config, key=key)
    return [next(b) for _ in range(max(0, n))]
