"""Test mode: no backoff sleeps (and optionally fewer attempts) for a user's own test suite.

The model is stamina's ``set_testing``: process-wide, switched on by a test fixture, and
restored by the context manager it returns::

    from retrylib.testing import set_testing

    with set_testing(True):            # every retry happens at once
        result = await retry_with_validation(call, messages, validators, config)

    set_testing(True, attempts=2)      # also at most 2 attempts per call, whatever the config

In test mode the loop computes every delay as it always does (``Attempt.scheduled_delay`` and
``Attempt.retry_after`` are recorded, the deadline and ``max_retry_after`` rules still
apply) and only skips the sleep, so ``Attempt.slept`` is 0.
"""

from __future__ import annotations

from types import TracebackType

from retrylib._testmode import MODE
from retrylib._testmode import Mode as _Mode
from retrylib.errors import ConfigError


class _Restore:
    """Returned by :func:`set_testing`; as a context manager, it restores the old mode."""

    __slots__ = ("_old",)

    def __init__(self, old: _Mode):
        self._old = old

    def __enter__(self) -> _Restore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        MODE.testing, MODE.attempts = self._old.testing, self._old.attempts

    def __repr__(self) -> str:
        return f"set_testing({MODE.testing}, attempts={MODE.attempts}) (restores {self._old})"


def set_testing(testing: bool, *, attempts: int | None = None) -> _Restore:
    """Switch test mode on or off, for the whole process.

    Args:
        testing: ``True``: the retry loop does not sleep between attempts.
        attempts: with ``testing``, at most this many attempts per call (``None``: the
            config's ``max_attempts``).

    Returns:
        A context manager that restores the previous mode on exit (ignore it to keep the mode).

    Raises:
        ConfigError: ``attempts`` is not a positive integer.
    """
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)
                                 or attempts < 1):
        raise ConfigError(f"set_testing: attempts must be a positive integer or None, got {attempts!r}")
    old = _Mode(MODE.testing, MODE.attempts)
    MODE.testing = bool(testing)
    MODE.attempts = attempts if testing else None
    return _Restore(old)


def is_testing() -> bool:
    """Whether test mode is on."""
    return MODE.testing
