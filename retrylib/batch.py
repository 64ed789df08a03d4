"""Many calls at once: bounded concurrency, a progress bar, and one row per call.

:func:`run_batch` runs ``retry_with_validation`` for each item of ``calls``, at most
``concurrency`` at a time, and returns one frozen :class:`BatchRow` per item, in order. A
call's exception never ends the batch: it becomes the row's ``outcome``::

    rows = await run_batch(
        [{"messages": [{"role": "user", "content": p}]} for p in prompts],
        call=make_call("openai/gpt-4o-mini"), validators=[V.JsonObject()],
        config=RetryConfig(max_attempts=4), concurrency=32,
    )
    batch_summary(rows)["requests_per_call"], rows_frame(rows)

An item is a dict of ``retry_with_validation`` arguments, or a list of messages (short for
``{"messages": item}``); keyword arguments of ``run_batch`` (``call=``, ``validators=``,
``config=``, ``budget=``, ``breaker=``, ...) are shared by every item, and an item's own keys
win. Sharing one :class:`~retrylib.budget.RetryBudget` or
:class:`~retrylib.breaker.CircuitBreaker` makes every call of the batch draw on it.

:func:`run_batch_dask` runs the same on a Dask cluster (``[dask]`` extra): the items go to
the workers in chunks, each chunk is one task that runs :func:`run_batch`, and a budget or
breaker (given here or in the config) travels as its *spec* (they pickle that way): each
chunk rebuilds it against the same Redis, so every worker respects one budget and one
breaker.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from retrylib.errors import (
    BudgetExhaustedError,
    CallCapExceededError,
    CircuitOpenError,
    ConfigError,
    HumanReviewNeededError,
    NonRetryableError,
    RetryError,
    RetryExhaustedError,
    StateStoreUnavailableError,
)

if TYPE_CHECKING:
    import pandas as pd

# Most specific first: the outcome is that of the first class the error is an instance of.
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (BudgetExhaustedError, "budget"), (CallCapExceededError, "cap"),
    (CircuitOpenError, "circuit_open"), (HumanReviewNeededError, "human"),
    (NonRetryableError, "non_retryable"), (RetryExhaustedError, "exhausted"),
    (StateStoreUnavailableError, "state_store"), (RetryError, "failed"),
)
Item = tuple[int, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class BatchRow:
    """What became of one call of a batch.

    Attributes:
        index: the item's position in ``calls``.
        outcome: ``ok``; ``exhausted`` (attempts, deadline or Retry-After patience ran out),
            ``human`` (the human stage), ``non_retryable``, ``budget`` (the retry budget
            refused an extra request), ``cap`` (the call's token/cost cap), ``circuit_open``,
            ``state_store`` (the budget's or breaker's Redis did not answer, with
            ``on_error="raise"``), ``failed`` (another ``RetryError``); ``error``: an
            exception that is not a ``RetryError`` (a ``ConfigError``, a bug in a validator,
            a lost Dask worker).
        reason: the error's ``reason`` code (``max_attempts``, ``deadline``, ...), or ``None``.
        attempts: the attempts the call made.
        api_calls: every request it sent, its validators' (``LLMJudge``) included.
        tokens_in, tokens_out, cost: its use, its validators' calls (``LLMJudge``, nested
            ones too) included.
        stage_reached: the last escalation stage reached.
        error_type: the exception's class name, or ``None``.
        error: the exception's message (at most 300 characters), or ``None``.
        latency: seconds from the call's start to its end.
        timestamp: wall-clock time of the call's start (comparable across workers).
        content: the accepted answer (``ok`` only).
        parsed: the parsed value, when a validator parsed one.
        warnings: soft checks the accepted answer failed.
        worker: ``host:pid`` of the process that ran the call.
    """

    index: int
    outcome: str
    reason: str | None
    attempts: int
    api_calls: int
    tokens_in: int
    tokens_out: int
    cost: float
    stage_reached: str | None
    error_type: str | None
    error: str | None
    latency: float
    timestamp: float
    content: str | None = None
    parsed: Any = None
    warnings: int = 0
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _outcome(exc: BaseException) -> str:
    for cls, name in _OUTCOMES:
        if isinstance(exc, cls):
            return name
    return "error"


def _row(index: int, outcome: Any, t0: float, wall: float, worker: str) -> BatchRow:
    latency = time.monotonic() - t0
    metrics: Mapping[str, Any] = getattr(outcome, "metrics", None) or {}
    attempts = getattr(outcome, "attempts", None) or []
    common: dict[str, Any] = dict(
        index=index, attempts=len(attempts),
        api_calls=int(metrics.get("total_api_calls", len(attempts))),
        tokens_in=int(metrics.get("tokens_in", 0)) + int(metrics.get("validator_tokens_in", 0)),
        tokens_out=int(metrics.get("tokens_out", 0)) + int(metrics.get("validator_tokens_out", 0)),
        cost=float(metrics.get("cost", 0.0) or 0.0) + float(metrics.get("validator_cost", 0.0) or 0.0),
        stage_reached=metrics.get("stage_reached"),
        latency=latency, timestamp=wall, worker=worker)
    if isinstance(outcome, BaseException):
        reason = getattr(outcome, "reason", None)
        return BatchRow(outcome=_outcome(outcome), reason=reason if isinstance(reason, str) else None,
                        error_type=type(outcome).__name__, error=str(outcome)[:300], **common)
    return BatchRow(outcome="ok", reason=None, error_type=None, error=None,
                    content=outcome.content, parsed=outcome.parsed,
                    warnings=len(outcome.warnings), **common)


def _own(calls: Iterable[Any]) -> list[Item]:
    """Each item as ``(index, its own kwargs)``."""
    out: list[Item] = []
    for i, item in enumerate(calls):
        if isinstance(item, Mapping):
            out.append((i, dict(item)))
        elif isinstance(item, list | tuple) and all(isinstance(m, Mapping) for m in item):
            out.append((i, {"messages": list(item)}))
        else:
            raise ConfigError(f"calls[{i}] must be a dict of retry_with_validation arguments or "
                              f"a list of messages, got {type(item).__name__}")
    return out


def keyed(own: list[Item]) -> list[Item]:
    """The items, each with a ``call_key`` drawn here (one it gives is kept): run where the
    batch is split, so that worker processes sharing a ``seed`` do not retry in lockstep."""
    from retrylib.backoff import new_call_key

    return [(i, kw if "call_key" in kw else {**kw, "call_key": new_call_key()}) for i, kw in own]


def prepare(calls: Iterable[Any], shared: Mapping[str, Any]) -> list[Item]:
    """Each item as ``(index, retry_with_validation kwargs)``, checked before any call.

    ``budget=`` and ``breaker=`` (shared or an item's own) are not call kwargs: they go into
    the item's ``RetryConfig`` (``config.budget`` / ``config.breaker``; given here, they win
    over the config's own). Items that share a config and gates share one config object.

    Raises:
        ConfigError: an item that is neither a dict nor a list of messages, a call with no
            ``call`` or no ``messages`` (named by its index), or a bad ``config``.
    """
    return merge(_own(calls), shared)


def merge(own: Sequence[Item], shared: Mapping[str, Any]) -> list[Item]:
    """Each ``(index, own kwargs)`` with the shared kwargs under it, checked (see :func:`prepare`)."""
    items = [(i, {**shared, **kw}) for i, kw in own]
    configs: dict[tuple[int, int, int], Any] = {}
    for i, kw in items:
        missing = [k for k in ("call", "messages") if kw.get(k) is None]
        if missing:
            raise ConfigError(f"calls[{i}] has no {' and no '.join(missing)} (give it in the item "
                              f"or as a shared keyword of run_batch)")
        if "budget" in kw or "breaker" in kw:
            kw["config"] = _gated(kw, configs)
    return items


def _gated(kw: dict[str, Any], seen: dict[tuple[int, int, int], Any]) -> Any:
    """The item's config with the ``budget=`` / ``breaker=`` it was given (popped from ``kw``),
    built once per (config, budget, breaker) so that a batch's calls share one config."""
    from retrylib.config import RetryConfig

    config, budget, breaker = kw.get("config"), kw.pop("budget", None), kw.pop("breaker", None)
    key = (id(config), id(budget), id(breaker))
    if key not in seen:
        base = (config if isinstance(config, RetryConfig) else RetryConfig() if config is None
                else RetryConfig.model_validate(config))
        changes = {k: v for k, v in (("budget", budget), ("breaker", breaker)) if v is not None}
        seen[key] = (base.replace(**changes) if changes else base, config, budget, breaker)
    return seen[key][0]


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    try:
        tqdm = importlib.import_module("tqdm")
    except ModuleNotFoundError:  # [workbook] brings it; without it the batch runs barless
        logger.debug("run_batch: tqdm is not installed, no progress bar")
        return None
    return tqdm.tqdm(total=total, desc=desc, unit="call", dynamic_ncols=True)


async def run_items(items: Sequence[Item], concurrency: int, bar: Any = None) -> list[BatchRow]:
    """Run prepared items, at most ``concurrency`` at once; one row per item, in order."""
    from retrylib.manager import retry_with_validation

    rows: list[BatchRow | None] = [None] * len(items)
    queue = iter(enumerate(items))
    counts: Counter[str] = Counter()
    worker = _worker_id()

    async def lane() -> None:
        # A fixed set of lanes pulling from one iterator: memory stays bounded by
        # ``concurrency``, not by the number of items.
        for slot, (index, kw) in queue:
            t0, wall = time.monotonic(), time.time()
            try:
                outcome: Any = await retry_with_validation(**kw)
            except Exception as exc:  # a call's failure is its row, never the batch's end
                outcome = exc
            row = rows[slot] = _row(index, outcome, t0, wall, worker)
            counts[row.outcome] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(dict(counts), refresh=False)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, len(items)) or 1)))
    return [r for r in rows if r is not None]


def _check_concurrency(concurrency: Any) -> int:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    return concurrency


async def run_batch(calls: Iterable[Any], *, concurrency: int = 16, progress: bool = True,
                    desc: str = "calls", **shared: Any) -> list[BatchRow]:
    """Run many ``retry_with_validation`` calls with bounded concurrency.

    Args:
        calls: dicts of ``retry_with_validation`` arguments, or lists of messages.
        concurrency: calls in flight at most (``asyncio`` tasks in this loop).
        progress: show a tqdm bar (when tqdm is installed: ``[workbook]``), with the count
            of each outcome.
        desc: the bar's label.
        **shared: arguments every call gets (``call``, ``validators``, ``config``,
            ``budget``, ``breaker``, call kwargs...); an item's own keys win.

    Returns:
        One :class:`BatchRow` per item, in the order of ``calls``.

    Raises:
        ConfigError: a malformed item or a bad ``concurrency`` (before any call is made).
    """
    concurrency = _check_concurrency(concurrency)
    items = prepare(calls, shared)
    bar = _bar(progress, len(items), desc)
    try:
        return await run_items(items, concurrency, bar)
    finally:
        if bar is not None:
            bar.close()


def run_batch_sync(calls: Iterable[Any], **kwargs: Any) -> list[BatchRow]:
    """The sync wrapper of :func:`run_batch`, for scripts (works inside Jupyter too)."""
    from retrylib.sync import run_sync

    return run_sync(run_batch(calls, **kwargs))


def batch_summary(rows: Sequence[BatchRow]) -> dict[str, Any]:
    """Counts and totals of a batch: ``calls``, ``outcomes`` (a dict), ``api_calls``,
    ``requests_per_call`` (the amplification), tokens, cost, and latency percentiles."""
    latencies = sorted(r.latency for r in rows)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)] if latencies else 0.0

    api = sum(r.api_calls for r in rows)
    return {"calls": len(rows), "outcomes": dict(Counter(r.outcome for r in rows)),
            "api_calls": api, "requests_per_call": api / len(rows) if rows else 0.0,
            "tokens_in": sum(r.tokens_in for r in rows), "tokens_out": sum(r.tokens_out for r in rows),
            "cost": sum(r.cost for r in rows), "latency_p50": pct(0.5), "latency_p95": pct(0.95),
            "workers": len({r.worker for r in rows})}


def rows_frame(rows: Sequence[BatchRow]) -> pd.DataFrame:
    """A DataFrame with one row per call.

    Raises:
        MissingExtraError: pandas is not installed (``pip install 'retrylib[workbook]'``).
    """
    from retrylib._extras import require

    pandas = require("pandas", "rows_frame()")
    return pandas.DataFrame([r.to_dict() for r in rows])


# -- Dask ---------------------------------------------------------------------------------------


def run_batch_dask(calls: Iterable[Any], *, client: Any = None, chunk_size: int | None = None,
                   concurrency: int = 16, progress: bool = True, desc: str = "calls",
                   **shared: Any) -> list[BatchRow]:
    """:func:`run_batch` on a Dask cluster (``[dask]`` extra); blocks until every row is in.

    The items are split into chunks (``chunk_size``; default: four per worker); each chunk
    runs on a worker as one :func:`run_batch` of ``concurrency`` lanes, in its own event
    loop. The shared keywords are sent once per chunk. A budget or a breaker (``budget=``,
    ``breaker=``, or in ``config``) pickles as its spec and is rebuilt for each chunk: on a
    :class:`~retrylib.state.RedisStore` every chunk on every worker then shares its buckets
    and breakers. A ``MemoryStore`` pickles as a new, empty store, so each *chunk* would
    have its own (not even one per worker): a warning says so. A chunk whose worker is lost
    gives ``error`` rows.

    Example::

        from distributed import Client, LocalCluster

        store = RedisStore("redis://10.0.0.5:6379/0")  # every worker reaches it
        config = RetryConfig(max_attempts=5, budget=RetryBudget(store=store),
                             breaker=CircuitBreaker(store=store))
        with Client(LocalCluster(n_workers=4)) as client:
            rows = run_batch_dask(calls, client=client, call=make_call("openai/gpt-4o-mini"),
                                  config=config, concurrency=32)

    Args:
        calls, concurrency, progress, desc, **shared: as for :func:`run_batch`; everything
            must pickle (cloudpickle: a ``ModelCall``, validators, a budget, a breaker do).
        client: a ``dask.distributed.Client`` or a scheduler address; ``None``: the
            default client (the last one made).
        chunk_size: items per task.

    Raises:
        ConfigError: a malformed item, or no client.
        MissingExtraError: ``dask.distributed`` is missing (``pip install 'retrylib[dask]'``).
    """
    from retrylib._extras import require

    distributed = require("distributed", "run_batch_dask()")
    concurrency = _check_concurrency(concurrency)
    prepare(calls := list(calls), shared)  # every item is checked here, before any task
    own = keyed(_own(calls))
    owned = False
    if isinstance(client, str):
        client, owned = distributed.Client(client), True
    elif client is None:
        try:
            client = distributed.get_client()
        except ValueError:
            raise ConfigError("run_batch_dask needs client= (a dask.distributed.Client or a "
                              "scheduler address): no default client exists") from None
    _warn_local_state(shared)
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ConfigError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    size = chunk_size or max(1, math.ceil(len(own) / (4 * workers)))
    chunks = [own[i:i + size] for i in range(0, len(own), size)]
    bar = _bar(progress, len(own), desc)
    rows: list[BatchRow] = []
    try:
        futures = {client.submit(_run_chunk, chunk, shared, concurrency, pure=False): chunk
                   for chunk in chunks}
        for future in distributed.as_completed(futures):
            try:
                got = future.result()
            except Exception as exc:  # the worker died or the task failed: its calls are lost
                got = [_row(i, exc, time.monotonic(), time.time(), "lost") for i, _ in futures[future]]
            rows.extend(got)
            if bar is not None:
                bar.update(len(got))
    finally:
        if bar is not None:
            bar.close()
        if owned:
            client.close()
    return sorted(rows, key=lambda r: r.index)


def _warn_local_state(shared: Mapping[str, Any]) -> None:
    """Warn about a shared budget or breaker (a keyword, or in ``config=``) on a MemoryStore."""
    from retrylib.state import MemoryStore

    config = shared.get("config")
    gates = [(f"{name}=", value) for name, value in shared.items()]
    gates += [(f"config.{name}", getattr(config, name, None)) for name in ("budget", "breaker")]
    for name, value in gates:
        if isinstance(getattr(value, "store", None), MemoryStore):
            logger.warning("run_batch_dask: {} keeps its state in a MemoryStore, so each chunk "
                           "of the batch (one Dask task) has its own; give it a RedisStore to "
                           "share it", name)


def _run_chunk(chunk: list[Item], shared: dict[str, Any], concurrency: int) -> list[BatchRow]:
    """One Dask task: a chunk of calls in a fresh event loop (runs on the worker)."""
    async def go() -> list[BatchRow]:
        try:
            return await run_items(merge(chunk, shared), concurrency)
        finally:
            await _close_for_this_loop(shared)

    return asyncio.run(go())


async def _close_for_this_loop(shared: Mapping[str, Any]) -> None:
    """Close what the chunk's loop opened: Redis connections, the proxy route's HTTP pool."""
    from retrylib.breaker import CircuitBreaker
    from retrylib.budget import RetryBudget

    config = shared.get("config")
    gates = [*shared.values(), getattr(config, "budget", None), getattr(config, "breaker", None)]
    for value in gates:
        if isinstance(value, RetryBudget | CircuitBreaker):
            await value.aclose()
    from retrylib.pool import close_loop_clients

    await close_loop_clients()


__all__ = ["BatchRow", "batch_summary", "merge", "prepare", "rows_frame", "run_batch",
           "run_batch_dask", "run_batch_sync", "run_items"]
