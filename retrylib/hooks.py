"""What is measured is a hook: logging, RSS readings, memory tracing, OpenTelemetry.

A hook is an object with any of these methods (or a plain callable, taken as
``attempt_ended``):

- ``call_started(call: CallInfo)``: before the first attempt;
- ``annotate(attempt: Attempt)``: the attempt's record while it is still being written
  (``RssHook`` puts the RSS reading in it);
- ``attempt_ended(details: AttemptDetails)``: a frozen, slotted copy of the attempt record
  (stamina's ``RetryDetails`` model), with the call's id and failure count;
- ``call_ended(call: CallInfo, outcome: RetryResult | BaseException)``: after the call; may
  return a dict that is merged into the call's metrics.

Hooks come from ``RetryConfig(hooks=...)``, from ``debug_mode`` (:class:`LogHook`) and
``trace_memory`` (:class:`MemoryHook`), and from :func:`install` (process-wide, as
stamina's ``set_on_retry_hooks``; the workbook installs :class:`RssHook` this way). A call
with no hook pays for none: the loop checks one tuple. A hook that raises is logged and
ignored; it never ends the call.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from retrylib.result import Attempt

_ids = itertools.count(1)
_installed: tuple[Any, ...] = ()


def install(*hooks: Any) -> tuple[Any, ...]:
    """Install process-wide hooks (replacing earlier ones); returns the previous ones."""
    global _installed
    old, _installed = _installed, tuple(hooks)
    return old


def installed() -> tuple[Any, ...]:
    return _installed


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One call, as hooks see it.

    Attributes:
        call_id: unique in the process, increasing.
        model: the model the call's route names, when known.
        max_attempts: the call's attempt cap.
        started: wall-clock start (``time.time()``).
    """

    call_id: int
    model: str | None
    max_attempts: int
    started: float

    @classmethod
    def new(cls, model: str | None, max_attempts: int) -> CallInfo:
        return cls(next(_ids), model, max_attempts, time.time())


@dataclass(frozen=True, slots=True)
class AttemptDetails:
    """A frozen copy of one attempt's record, for hooks (see ``retrylib.result.Attempt``).

    Beside the attempt's fields: ``call_id`` (the :class:`CallInfo` it belongs to),
    ``failures`` (answers of the call that failed validation *before* this attempt) and
    ``tool_calls`` (how many tool calls ran in it).
    """

    call_id: int
    number: int
    failures: int
    stage: str
    outcome: str
    start: float
    end: float
    timestamp: float
    scheduled_delay: float
    slept: float
    retry_after: float | None
    error_type: str | None
    status_code: int | None
    retryable: bool | None
    validation_errors: tuple[str, ...]
    tokens_in: int
    tokens_out: int
    cost: float
    finish_reason: str | None
    model: str | None
    note: str | None
    budget_level: float | None
    breaker_state: str | None
    tool_calls: int

    @classmethod
    def of(cls, call: CallInfo, a: Attempt, failures: int) -> AttemptDetails:
        return cls(call.call_id, a.number, failures, a.stage, a.outcome, a.start, a.end,
                   a.timestamp, a.scheduled_delay, a.slept, a.retry_after, a.error_type,
                   a.status_code, a.retryable, tuple(a.validation_errors), a.tokens_in,
                   a.tokens_out, a.cost, a.finish_reason, a.model, a.note, a.budget_level,
                   a.breaker_state, len(a.tool_calls))


def safely(hook: Any, method: str, *args: Any) -> Any:
    """Call ``hook.method(*args)`` if it has one; a failing hook is logged, never raised."""
    fn = getattr(hook, method, None)
    if fn is None and method == "attempt_ended" and callable(hook):
        fn = hook
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception as exc:
        logger.warning("hook {!r}.{} failed: {}: {}", hook, method, type(exc).__name__, exc)
        return None


class LogHook:
    """Log each attempt (delay, error, stage) and the call's end at DEBUG: ``debug_mode``."""

    def attempt_ended(self, d: AttemptDetails) -> None:
        logger.debug(
            "attempt {} [{}] {} slept={:.3f}s{}{}", d.number, d.stage, d.outcome, d.slept,
            f" error={d.error_type}({d.status_code})" if d.error_type else "",
            f" validation={list(d.validation_errors)[:3]}" if d.validation_errors else "",
        )

    def call_ended(self, call: CallInfo, outcome: Any) -> None:
        attempts = getattr(outcome, "attempts", None) or []
        logger.debug("call ended after {} attempts: {} (call {})", len(attempts),
                     type(outcome).__name__, call.call_id)

    def __repr__(self) -> str:
        return "LogHook()"


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class RssHook:
    """Put the process's resident set size in each attempt (``rss_bytes``) and its peak in
    the metrics (``rss_peak_bytes``).

    A kept ``/proc/self/statm`` descriptor read with ``pread`` costs ~1 µs (psutil ~11 µs);
    reopened after a fork. Without ``/proc`` (macOS): psutil if installed, else the peak
    RSS from ``getrusage``.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._pid = -1

    def read(self) -> int:
        pid = os.getpid()
        try:
            if self._pid != pid:
                self._fd, self._pid = os.open("/proc/self/statm", os.O_RDONLY), pid
            return int(os.pread(self._fd, 64, 0).split()[1]) * _PAGE  # type: ignore[arg-type]
        except (OSError, ValueError, IndexError):
            return _rss_without_proc()

    def annotate(self, attempt: Attempt) -> None:
        attempt.rss_bytes = self.read()

    def call_ended(self, call: CallInfo, outcome: Any) -> dict[str, Any]:
        attempts = getattr(outcome, "attempts", None) or []
        return {"rss_peak_bytes": max((a.rss_bytes for a in attempts), default=0)}

    def __repr__(self) -> str:
        return "RssHook()"


def _rss_without_proc() -> int:
    try:
        import psutil
    except ImportError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return int(peak if sys.platform == "darwin" else peak * 1024)
    return int(psutil.Process().memory_info().rss)


class MemoryHook:
    """tracemalloc's peak, in the metrics as ``process_traced_peak_bytes``: ``trace_memory``.

    tracemalloc is process-wide, and so is this figure: it is the peak of Python's heap
    while the call ran, *including every other call running at the same time*. It is exact
    for a call that runs alone. The hook starts tracing with the first traced call (unless
    something else already traces), resets the peak when a traced call starts with no other
    traced call running, and stops tracing when the last traced call it started ends, so
    overlapping calls never stop tracing for each other.
    """

    _lock = threading.Lock()
    _active = 0
    _ours = False

    def call_started(self, call: CallInfo) -> None:
        cls = type(self)
        with cls._lock:
            if cls._active == 0:
                if not tracemalloc.is_tracing():
                    tracemalloc.start()
                    cls._ours = True
                else:
                    tracemalloc.reset_peak()
            cls._active += 1

    def call_ended(self, call: CallInfo, outcome: Any) -> dict[str, Any]:
        cls = type(self)
        with cls._lock:
            peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
            cls._active = max(0, cls._active - 1)
            if cls._active == 0 and cls._ours:
                tracemalloc.stop()
                cls._ours = False
        return {"process_traced_peak_bytes": peak}

    def __repr__(self) -> str:
        return "MemoryHook()"


LOG_HOOK, MEMORY_HOOK = LogHook(), MemoryHook()
