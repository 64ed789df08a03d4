"""The process-wide test-mode switch the retry loop reads (set it with
:func:`retrylib.testing.set_testing`). It lives here, in the core, so that ``import retrylib``
does not load :mod:`retrylib.testing`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Mode:
    """``testing``: skip backoff sleeps; ``attempts``: at most this many attempts per call."""

    testing: bool = False
    attempts: int | None = None


MODE = Mode()
