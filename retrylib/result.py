"""What a call leaves behind: one :class:`Attempt` per call made, and the :class:`RetryResult`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

Outcome = Literal["ok", "validation_failed", "transport_error"]


@dataclass(slots=True)
class Attempt:
    """One call to the model and its verdict: a record, to be read, not changed.

    Not frozen on purpose: a frozen dataclass sets each of its 27 fields through
    ``object.__setattr__``, which made building one 3.0 µs instead of 0.7 µs, the largest
    single cost of an attempt (``benchmarks/overhead.py``). ``RetryResult`` and the errors
    hold their own lists of attempts, so appending to one list cannot alter another.

    Times are seconds since the retry call started (``time.monotonic`` based), so attempts
    line up on one axis; ``timestamp`` is the wall-clock start.

    Attributes:
        number: 1-based.
        start, end: when the call was made and answered.
        scheduled_delay: the delay the backoff schedule planned before this attempt.
        retry_after: what the server asked for after the previous attempt, if anything.
        slept: the delay actually slept before this attempt (measured).
        outcome: ``ok``, ``validation_failed`` or ``transport_error``.
        error_type, status_code, error_message: the transport error, if any.
        retryable: the classification of that error.
        validation_errors: what the validators said.
        text: the extracted answer (``None`` when there was none).
        tokens_in, tokens_out, cost, cache_hit: what the response reported.
        finish_reason: why the model stopped (``stop``, ``length``: cut at ``max_tokens``, ...).
        stage: ``normal``, ``constrained``, ``fallback``, ``tool`` (see ``RetryConfig``).
        tool_suggested: the messages sent carried the debug-tool suggestion.
        mcp_config_sent: the call kwargs carried ``mcp_config``.
        constrained: the call asked for schema-constrained output.
        model: the model this attempt asked for (when known).
        note: anything the loop decided on the way (a stage skipped, and why).
        messages_sent: how many messages the attempt sent.
        rss_bytes: the process's resident set size after the attempt (0 unless an
            ``RssHook`` is installed: ``retrylib.hooks``).
        timestamp: wall-clock time of ``start``.
        budget_level: the retry budget's level for this call's key after the attempt, when
            a budget is configured.
        breaker_state: the model's circuit breaker before the attempt (``closed``, ``open``,
            ``half_open``), when a breaker is configured.
        tool_calls: the tool stage's executed tool calls: dicts of ``name``, ``arguments``,
            ``result``, ``is_error``, ``duration``, ``round``.
        requests: the requests the attempt sent: 1, or with the tool stage's rounds each
            tool round and the final request (their tokens and cost are all in
            ``tokens_in``, ``tokens_out`` and ``cost``); 0 for a reviewer's answer.
    """

    number: int
    start: float
    end: float
    outcome: Outcome
    stage: str = "normal"
    scheduled_delay: float = 0.0
    retry_after: float | None = None
    slept: float = 0.0
    error_type: str | None = None
    status_code: int | None = None
    error_message: str | None = None
    retryable: bool | None = None
    validation_errors: tuple[str, ...] = ()
    text: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    cache_hit: bool = False
    finish_reason: str | None = None
    tool_suggested: bool = False
    mcp_config_sent: bool = False
    constrained: bool = False
    model: str | None = None
    note: str | None = None
    messages_sent: int = 0
    rss_bytes: int = 0
    timestamp: float = 0.0
    budget_level: float | None = None
    breaker_state: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    requests: int = 1

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration"] = self.duration
        d["validation_errors"] = list(self.validation_errors)
        d["tool_calls"] = [dict(t) for t in self.tool_calls]
        return d


@dataclass(slots=True)
class RetryResult:
    """A call that produced valid output.

    Attributes:
        content: the validated text.
        response: the raw response it came in.
        parsed: the JSON object or pydantic instance, when a validator parsed one.
        attempts: every attempt, in order; the last one is ``ok`` unless ``warnings`` is set.
        warnings: empty when every check passed. Otherwise the attempts ran out and the
            answer returned is one that failed only ``Soft`` checks; these are its errors.
        accepted_attempt: the number of the attempt whose answer this is.
        metrics: ``api_calls`` (attempts), ``requests`` (the requests they sent: more
            than ``api_calls`` when the tool stage ran tool rounds), ``total_seconds``,
            ``sleep_seconds``, ``tokens_in``, ``tokens_out``, ``cost``, ``cache_hits``,
            ``stage_reached``, ``validation_failures``, ``transport_errors``,
            ``validator_api_calls``, ``validator_tokens_in``, ``validator_tokens_out``,
            ``validator_cost`` (the calls validators made, nested ones included),
            ``total_api_calls`` (``requests`` plus ``validator_api_calls``),
            ``accepted_with_warnings`` (an answer that failed only ``Soft`` checks), plus
            what the hooks add: ``process_traced_peak_bytes`` with ``trace_memory``
            (process-wide: see ``retrylib.hooks.MemoryHook``), ``rss_peak_bytes`` with an
            ``RssHook``.
    """

    content: str
    response: Any
    parsed: Any = None
    attempts: list[Attempt] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    accepted_attempt: int | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per attempt."""
        return attempts_frame(self.attempts)

    def __repr__(self) -> str:
        text = self.content if len(self.content) <= 60 else self.content[:57] + "..."
        return (
            f"RetryResult(content={text!r}, attempts={len(self.attempts)}, "
            f"stage_reached={self.metrics.get('stage_reached')!r}"
            + (f", warnings={len(self.warnings)})" if self.warnings else ")")
        )


def attempts_frame(attempts: list[Attempt]) -> pd.DataFrame:
    """A DataFrame with one row per attempt (also used for failed calls' attempts).

    Raises:
        MissingExtraError: pandas is not installed (``pip install 'retrylib[workbook]'``).
    """
    from retrylib._extras import require

    pd = require("pandas", "RetryResult.to_frame()")

    return pd.DataFrame([a.to_dict() for a in attempts])


def summarize(attempts: list[Attempt], subresults: list[Any], stage_reached: str) -> dict[str, Any]:
    """The metrics dict of a call, from its attempts and the calls its validators made."""
    slept = cost = 0.0
    tin = tout = hits = invalid = transport = tools = sent = 0
    for a in attempts:  # one pass: this runs once per call, on the hot path
        slept += a.slept
        sent += a.requests
        tin += a.tokens_in
        tout += a.tokens_out
        cost += a.cost
        hits += a.cache_hit
        if a.outcome == "validation_failed":
            invalid += 1
        elif a.outcome == "transport_error":
            transport += 1
        if a.tool_calls:
            tools += len(a.tool_calls)
    n = len(attempts)
    m: dict[str, Any] = {
        "api_calls": n,
        "requests": sent,
        "total_seconds": (attempts[-1].end if attempts else 0.0),
        "sleep_seconds": slept,
        "tokens_in": tin,
        "tokens_out": tout,
        "cost": cost,
        "cache_hits": hits,
        "stage_reached": stage_reached,
        "validation_failures": invalid,
        "transport_errors": transport,
        "validator_api_calls": 0,
        "validator_tokens_in": 0,
        "validator_tokens_out": 0,
        "validator_cost": 0.0,
        "tool_calls": tools,
    }
    if subresults:
        m["validator_api_calls"] = sum(r.metrics.get("total_api_calls", 0) for r in subresults)
        m["validator_tokens_in"] = sum(_nested(r, "tokens_in") for r in subresults)
        m["validator_tokens_out"] = sum(_nested(r, "tokens_out") for r in subresults)
        m["validator_cost"] = sum(_nested_cost(r) for r in subresults)
    m["total_api_calls"] = sent + m["validator_api_calls"]
    m["cache_hit_rate"] = hits / n if n else 0.0
    return m


def _nested(result: Any, key: str) -> int:
    """A sub-call's own tokens plus those of the validators inside it."""
    return int(result.metrics.get(key, 0)) + int(result.metrics.get(f"validator_{key}", 0))


def _nested_cost(result: Any) -> float:
    """A sub-call's own cost plus that of the validators inside it."""
    m = result.metrics
    return float(m.get("cost", 0.0) or 0.0) + float(m.get("validator_cost", 0.0) or 0.0)
