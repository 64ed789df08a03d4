"""Backoff schedules: exponential growth, capped, with jitter; reproducible with a seed.

The jitter kinds are the ones compared in the AWS Architecture Blog's analysis
"Exponential Backoff and Jitter" (Marc Brooker, 2015). Jitter spreads the retries of many
clients apart so that they do not hit a recovering server in lock-step.
"""

from __future__ import annotations

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
    """

    __slots__ = ("_config", "_n", "_prev", "_rng")

    def __init__(self, config: RetryConfig):
        self._config = config
        self._rng = random.Random(config.seed)
        self._n = 0
        self._prev = config.initial_delay

    def __iter__(self) -> Iterator[float]:
        return self

    def __next__(self) -> float:
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
        return f"Backoff(jitter={self._config.jitter!r}, seed={self._config.seed!r}, n={self._n})"


def backoff_schedule(config: RetryConfig, retries: int | None = None) -> list[float]:
    """The delays the retry loop will use, before attempts 2, 3, ..., in order.

    With ``config.seed`` set this is exactly what ``retry_with_validation`` sleeps (unless a
    server's ``Retry-After`` asks for longer). Without a seed, each call draws its own.

    Args:
        config: the retry configuration.
        retries: how many delays; by default ``config.max_attempts - 1``.

    Returns:
        A list of delays in seconds, each in ``[0, config.max_delay]``.
    """
    n = config.max_attempts - 1 if retries is None else retries
    b = Backoff(config)
    return [next(b) for _ in range(max(0, n))]
