"""How many requests does an outage cost? The retry budget, the breaker and fallback, measured.

``python benchmarks/amplification.py`` (``--quick``: small sizes, for the test suite) runs,
against the upstream-free fault proxy (``ChaosProxy(upstream_free=True)``, in this process,
its own thread) and a real ``redis-server`` (``retrylib.testing.RedisServer``):

1. **Amplification**: requests on the wire (the proxy's journal) ÷ calls, at 0 %, 10 %, 50 %
   and 100 % upstream failure, ``max_attempts=5``, without a budget and with
   ``RetryBudget(token_ratio=0.5)`` (and ``0.1``, gRPC A6's default, at 10 %), for
   **1 process** (``calls`` calls, the budget in a ``MemoryStore``) and **4 processes**
   × ``calls / 4`` calls sharing one budget in Redis (``RedisStore``). Each call sends an
   ``X-Chaos-Key`` of its own, whose plan is ``max_attempts`` tokens drawn from a seeded RNG
   (``503`` with probability *p*, else ``pass``): the same call index gets the same plan in
   every arm, so outcomes compare call by call. The clients are spawned worker processes
   (``run_batch``, ``concurrency`` lanes each; short jittered backoff).
2. **Throughput**: ``throughput_calls`` calls at once through retrylib's litellm route
   (budget + breaker on, healthy upstream; and with neither, as a control) against the same
   requests sent with ``litellm.acompletion`` directly, interleaved round by round in one
   worker process (the proxy in another).
3. **Memory per call in flight**: a fresh process per arm holds ``memory_calls`` calls on a
   ``latency:`` fault; the peak RSS growth over its warm baseline (sampled every 10 ms) ÷ the
   calls in flight, for retrylib (budget + breaker) and for direct ``litellm.acompletion``.
4. **Breaker and fallback**: a primary model goes down (its key answers 503) and comes back,
   while ``breaker_lanes`` lanes make calls back to back with a fallback model that answers.
   The breaker's store notes each of its decisions, so its state is known at every moment.
   Measured: whether every call during the outage succeeded (on the fallback), each call's
   latency against one cooldown, and the requests that reached the primary while its breaker
   was open (the journal's arrival times against the open intervals).
5. **Budget level over time**: phases of 0 %, 10 %, 50 %, 100 % and 0 % failure, the level
   after every attempt, for ``token_ratio`` 0.1 and 0.5.

The issue's done-when targets are computed from the measured numbers (``done_when``).
Results: a table on stdout and JSON in ``--out`` (``benchmarks/results/amplification.json``).
``notebooks/08_budget_breaker.ipynb`` runs the same functions and plots them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "amplification.json"
RATES = (0.0, 0.1, 0.5, 1.0)
RATIO = 0.5  # the recommended token_ratio (see the module docstring of retrylib.budget)
A6_RATIO = 0.1  # gRPC A6's default
#: A budget arm: ``(max_tokens, token_ratio)``, or ``None`` for no budget.
Arm = tuple[float, float] | None
TARGET_AMPLIFICATION = 1.2
MESSAGES = [{"role": "user", "content": "Reply OK."}]
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is (``FULL``: the committed run; ``QUICK``: the test's)."""

    calls: int = 1000  # calls per amplification cell (split over the processes)
    processes: tuple[int, ...] = (1, 4)
    max_attempts: int = 5
    concurrency: int = 50  # lanes per worker process
    throughput_calls: int = 1000
    throughput_rounds: int = 3
    memory_calls: int = 1000
    memory_repeats: int = 2
    hold: float = 2.0  # seconds the latency fault holds each call of the memory run
    cooldown: float = 2.0
    failure_threshold: int = 3
    breaker_lanes: int = 4
    timeline_calls: int = 200  # calls per phase of the budget-level run
    #: ``max_tokens`` of the bucket sized to the calls in flight: its spendable half (50)
    #: covers the failures of one wave of ``4 × concurrency`` calls at 10 % (20) with room.
    sized_tokens: float = 100.0

    def arms(self, rate: float) -> list[Arm]:
        """The budget arms of one failure rate: none, A6's size (10) with ``RATIO``, the
        sized bucket with ``RATIO``, and A6's default ``(10, 0.1)`` at 10 %."""
        return [None, (10.0, RATIO), (self.sized_tokens, RATIO)] + ([(10.0, A6_RATIO)] if rate == 0.1 else [])


FULL = Sizes()
QUICK = Sizes(calls=80, concurrency=10, throughput_calls=100, throughput_rounds=1,
              memory_calls=100, memory_repeats=1, hold=1.0, cooldown=0.6, breaker_lanes=3,
              timeline_calls=30, sized_tokens=20.0)


def label(arm: Arm) -> str:
    """``none`` or ``<max_tokens>/<token_ratio>``."""
    return "none" if arm is None else f"{arm[0]:g}/{arm[1]:g}"


def plan_for(seed: int, rate: float, index: int, attempts: int) -> list[str]:
    """The plan of call ``index`` at failure rate ``rate``: ``503`` with probability ``rate``
    per request, else ``pass`` (the same in every arm of that rate)."""
    rng = random.Random(f"{seed}:{rate}:{index}")
    return ["503" if rng.random() < rate else "pass" for _ in range(attempts)]


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _quiet() -> None:
    """litellm warns once per request when its pool is full; the benchmark fills it on purpose."""
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


# -- worker processes -------------------------------------------------------------------------

def serve() -> None:
    """A worker's main loop: one JSON ``[task, kwargs]`` per stdin line, one JSON reply per
    stdout line; EOF on stdin (the parent is gone) ends it."""
    _quiet()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a task prints may corrupt the replies
    for line in sys.stdin:
        name, kwargs = json.loads(line)
        try:
            reply = {"ok": True, "value": TASKS[name](**kwargs)}
        except BaseException:  # the parent re-raises it with this traceback
            reply = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class Workers:
    """``n`` worker processes (``python -c "...serve()"``), kept for the whole run; each has
    its own pipe, so task ``i`` runs on worker ``i``."""

    def __init__(self, n: int):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        code = "from benchmarks.amplification import serve; serve()"
        self.procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
                      for _ in range(n)]

    def run(self, tasks: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Task ``i`` on worker ``i``, all at once; their results in order.

        Raises:
            RuntimeError: a task raised (its traceback in the message) or a worker died.
        """
        for proc, task in zip(self.procs, tasks, strict=False):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(task) + "\n")
            proc.stdin.flush()
        out = []
        for proc in self.procs[:len(tasks)]:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a worker died (exit {proc.wait()})")
            got = json.loads(line)
            if not got["ok"]:
                raise RuntimeError(f"a worker task failed:\n{got['error']}")
            out.append(got["value"])
        return out

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def fresh(name: str, kwargs: dict[str, Any]) -> Any:
    """Run one task in a new worker process (a cold heap: for memory measurements)."""
    w = Workers(1)
    try:
        return w.run([(name, kwargs)])[0]
    finally:
        w.close()


# -- 1. amplification -------------------------------------------------------------------------

def share(url: str, keys: list[str], budget: dict[str, Any] | None, max_attempts: int,
          concurrency: int, seed: int, start_at: float) -> dict[str, Any]:
    """Worker task: run one share of a cell (``run_batch``), the budget rebuilt from its spec."""
    from retrylib import RetryConfig, make_call
    from retrylib.batch import run_batch
    from retrylib.budget import RetryBudget

    async def go() -> dict[str, Any]:
        gate = RetryBudget.from_spec(budget) if budget else None
        levels: list[float] = []
        config = RetryConfig(max_attempts=max_attempts, initial_delay=0.01, max_delay=0.08,
                             jitter="full", seed=seed,
                             hooks=(lambda d: levels.append(d.budget_level),) if gate else ())
        call = make_call("proxy/amp", api_base=url)
        items = [{"messages": MESSAGES, "extra_headers": {"X-Chaos-Key": k}} for k in keys]
        await asyncio.sleep(max(0.0, start_at - time.time()))  # the processes start together
        t = time.perf_counter()
        rows = await run_batch(items, call=call, config=config, budget=gate,
                               concurrency=concurrency, progress=False)
        seconds = time.perf_counter() - t
        if gate is not None:
            await gate.aclose()
        return {"outcomes": [r.outcome for r in rows], "attempts": [r.attempts for r in rows],
                "errors": [f"{r.error_type}: {r.error}" for r in rows if r.outcome == "error"][:3],
                "levels": levels, "seconds": seconds, "pid": os.getpid()}

    return asyncio.run(go())


def amplification_cell(proxy: Any, workers: Workers, redis_url: str, rate: float, arm: Arm,
                       processes: int, sizes: Sizes, seed: int) -> dict[str, Any]:
    """One cell of the table: ``sizes.calls`` calls at ``rate`` over ``processes`` workers,
    with the budget ``arm`` (in a ``MemoryStore`` for one process, else in Redis)."""
    from retrylib.budget import RetryBudget
    from retrylib.state import MemoryStore, RedisStore

    prefix = f"amp-{processes}p-{rate}-{label(arm)}-{uuid.uuid4().hex[:6]}"
    keys = [f"{prefix}-{i}" for i in range(sizes.calls)]
    for i, key in enumerate(keys):
        proxy.set_plan(plan_for(seed, rate, i, sizes.max_attempts), key=key)
    budget = None
    if arm is not None:
        # on_error="raise": a cell must never go on with a process-local bucket. 5 s socket
        # timeouts: on a shared 2-core machine under load, 1 s (the default) was passed.
        store = MemoryStore() if processes == 1 else RedisStore(redis_url, prefix=f"{prefix}:",
                                                                on_error="raise", socket_timeout=5.0)
        budget = RetryBudget(arm[0], arm[1], store=store).spec()
    start_at = time.time() + 0.3
    parts = workers.run([("share", {"url": proxy.url, "keys": keys[j::processes], "budget": budget,
                                    "max_attempts": sizes.max_attempts,
                                    "concurrency": sizes.concurrency, "seed": seed,
                                    "start_at": start_at}) for j in range(processes)])
    journal = [e for e in proxy.journal() if e["key"].startswith(prefix)]
    proxy.clear()
    outcomes = [""] * sizes.calls
    for j, part in enumerate(parts):
        for k, outcome in enumerate(part["outcomes"]):
            outcomes[j + k * processes] = outcome
    levels = [lv for p in parts for lv in p["levels"] if lv is not None]
    failed = sum(e["status"] == 503 for e in journal)
    return {"rate": rate, "processes": processes, "budget": label(arm),
            "max_tokens": None if arm is None else arm[0], "token_ratio": None if arm is None else arm[1],
            "store": None if arm is None else ("memory" if processes == 1 else "redis"),
            "calls": sizes.calls, "requests": len(journal),
            "requests_per_call": round(len(journal) / sizes.calls, 4),
            "attempts": sum(sum(p["attempts"]) for p in parts),
            "failed_requests": failed, "wire_failure_rate": round(failed / max(1, len(journal)), 4),
            "outcomes": dict(Counter(outcomes)), "ok_calls": outcomes.count("ok"),
            "level_min": min(levels, default=None), "level_max": max(levels, default=None),
            "level_last": levels[-1] if levels else None,
            "errors": [e for p in parts for e in p["errors"]][:3],
            "seconds": round(max(p["seconds"] for p in parts), 2),
            "workers": len({p["pid"] for p in parts}), "_outcomes": outcomes}


def amplification(proxy: Any, workers: Workers, redis_url: str, sizes: Sizes, seed: int,
                  rates: tuple[float, ...] = RATES, progress: Callable[[str], None] | None = print,
                  arms: Callable[[float], list[Arm]] | None = None) -> list[dict[str, Any]]:
    """Every cell: each rate × process count × budget arm (``arms(rate)``, default
    :meth:`Sizes.arms`; ``None`` must come first). Each row notes ``changed``: calls whose
    outcome differs from the same calls' without a budget."""
    rows = []
    for processes in sizes.processes:
        for rate in rates:
            base: list[str] | None = None
            for arm in (arms or sizes.arms)(rate):
                row = amplification_cell(proxy, workers, redis_url, rate, arm, processes, sizes, seed)
                outcomes = row.pop("_outcomes")
                base = outcomes if arm is None else base
                row["changed"] = sum(a != b for a, b in zip(outcomes, base or outcomes, strict=True))
                rows.append(row)
                if progress:
                    progress(f"  {processes}p  p={rate:<4} budget {row['budget']:8} {row['requests']:6} requests "
                             f"{row['requests_per_call']:6.3f}/call  ok {row['ok_calls']}/{row['calls']}  "
                             f"changed {row['changed']}  {row['seconds']:.1f}s")
    return rows


# -- 2. throughput and 3. memory --------------------------------------------------------------

def _arms(url: str) -> dict[str, Callable[[], Any]]:
    """``name -> () -> awaitable``: one call each way, to the same proxy."""
    import litellm

    from retrylib import RetryConfig, make_call, retry_with_validation
    from retrylib.breaker import CircuitBreaker
    from retrylib.budget import RetryBudget

    call = make_call("openai/tp", api_base=url)
    guarded = RetryConfig(max_attempts=5, budget=RetryBudget(10.0, RATIO),  # as measured
                          breaker=CircuitBreaker())
    plain = RetryConfig(max_attempts=5)
    return {
        "litellm.acompletion": lambda: litellm.acompletion(
            model="openai/tp", api_base=url, api_key="sk-local-no-key", messages=MESSAGES,
            num_retries=0, max_retries=0),
        "retrylib budget+breaker": lambda: retry_with_validation(call, MESSAGES, None, guarded),
        "retrylib plain": lambda: retry_with_validation(call, MESSAGES, None, plain),
    }


def throughput(url: str, calls: int, rounds: int) -> dict[str, Any]:
    """Worker task: ``calls`` calls at once per arm, arms interleaved (ABC, CBA, ...)."""
    async def go() -> dict[str, Any]:
        arms = _arms(url)
        for make in arms.values():  # warm up: imports, clients, connections
            await asyncio.gather(*(make() for _ in range(20)))
        names = list(arms)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                t = time.perf_counter()
                got = await asyncio.gather(*(arms[name]() for _ in range(calls)), return_exceptions=True)
                dt = time.perf_counter() - t
                errors = [o for o in got if isinstance(o, BaseException)]
                if errors:
                    raise RuntimeError(f"{name}: {len(errors)} of {calls} calls failed: {errors[0]!r}")
                samples[name].append(calls / dt)
        out: dict[str, Any] = {n: {"calls_per_s": round(statistics.median(s), 1),
                                   "samples": [round(x, 1) for x in s]} for n, s in samples.items()}
        direct = samples[names[0]]
        for n in names[1:]:  # paired by round: a busy neighbour slows both sides of a pair
            ratios = [a / b for a, b in zip(samples[n], direct, strict=True)]
            out[n]["ratio_to_direct"] = round(statistics.median(ratios), 3)
            out[n]["ratios"] = [round(x, 3) for x in ratios]
        return out

    return asyncio.run(go())


def memory(url: str, arm: str, calls: int, hold: float) -> dict[str, Any]:
    """Worker task (a fresh process): ``calls`` calls held ``hold`` s by a latency fault."""
    async def go() -> dict[str, Any]:
        import litellm

        from retrylib import RetryConfig, make_call, retry_with_validation
        from retrylib.breaker import CircuitBreaker
        from retrylib.budget import RetryBudget

        held = {"X-Chaos-Fault": f"latency:{hold}"}
        call = make_call("openai/mem", api_base=url, extra_headers=held)
        config = RetryConfig(max_attempts=5, budget=RetryBudget(10.0, RATIO),  # as measured
                             breaker=CircuitBreaker())

        def one() -> Any:
            if arm == "litellm.acompletion":
                return litellm.acompletion(model="openai/mem", api_base=url, api_key="sk-local-no-key",
                                           messages=MESSAGES, num_retries=0, max_retries=0,
                                           extra_headers=held)
            if arm == "retrylib route alone":  # the ModelCall, no retry loop around it
                return call(messages=MESSAGES)
            return retry_with_validation(call, MESSAGES, None, config)

        await asyncio.gather(*(one() for _ in range(50)))  # warm: clients and imports
        gc.collect()
        base = peak = _rss()
        tasks = [asyncio.ensure_future(one()) for _ in range(calls)]
        t = time.perf_counter()
        while not all(task.done() for task in tasks):
            peak = max(peak, _rss())
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - t
        failed = sum(task.exception() is not None for task in tasks)
        return {"arm": arm, "calls": calls, "failed": failed, "rss_base_mb": round(base / 2**20, 1),
                "rss_peak_mb": round(peak / 2**20, 1),
                "kb_per_call": round((peak - base) / 1024 / calls, 2), "seconds": round(seconds, 2)}

    return asyncio.run(go())


MEMORY_ARMS = ("retrylib budget+breaker", "retrylib route alone", "litellm.acompletion")


def memory_per_call(url: str, sizes: Sizes) -> dict[str, Any]:
    """Every arm of :data:`MEMORY_ARMS`, ``memory_repeats`` fresh processes each (arms
    alternating); the medians, and the loop's own share (retrylib minus its route alone)."""
    runs = [fresh("memory", {"url": url, "arm": arm, "calls": sizes.memory_calls, "hold": sizes.hold})
            for _ in range(sizes.memory_repeats) for arm in MEMORY_ARMS]
    out: dict[str, Any] = {"runs": runs, "calls": sizes.memory_calls, "hold": sizes.hold}
    for arm in MEMORY_ARMS:
        out[arm] = round(statistics.median(r["kb_per_call"] for r in runs if r["arm"] == arm), 2)
    out["loop_kb_per_call"] = round(out["retrylib budget+breaker"] - out["retrylib route alone"], 2)
    return out


TASKS: dict[str, Callable[..., Any]] = {"share": share, "throughput": throughput, "memory": memory}


# -- 4. breaker and fallback, 5. budget level over time ---------------------------------------

def _recording_store() -> Any:
    """A ``MemoryStore`` that also notes each breaker decision it makes: ``(monotonic time,
    key, op, allowed, state after)``: the breaker's exact timeline, for the evidence."""
    from retrylib.state import MemoryStore

    class Recording(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.log: list[tuple[float, str, str, bool, str]] = []

        async def breaker_allow(self, key: str, policy: Any, now: float | None = None) -> Any:
            d = await super().breaker_allow(key, policy, now)
            self.log.append((time.monotonic(), key, "allow", d.allowed, d.state))
            return d

        async def breaker_record(self, key: str, ok: bool, policy: Any, now: float | None = None) -> Any:
            d = await super().breaker_record(key, ok, policy, now)
            self.log.append((time.monotonic(), key, "ok" if ok else "fail", d.allowed, d.state))
            return d

    return Recording()


def _intervals(states: list[tuple[float, str]], name: str, end: float) -> list[tuple[float, float]]:
    """The ``[start, end)`` runs of ``name`` in a series of (time, state) changes."""
    out, start = [], None
    for t, s in states:
        if s == name and start is None:
            start = t
        elif s != name and start is not None:
            out.append((start, t))
            start = None
    if start is not None:
        out.append((start, end))
    return out


async def breaker_run(proxy: Any, sizes: Sizes, seed: int, margin: float = 0.1) -> dict[str, Any]:
    """A primary goes down for three cooldowns and comes back, under a steady stream of calls
    (``breaker_lanes`` lanes, back to back) that have a fallback model which answers.

    Returns:
        ``states`` (the primary's breaker: ``(seconds, state)`` after each of its decisions),
        ``calls`` (one dict per call), ``primary`` and ``backup`` (arrival seconds of each
        model's requests, from the journal), ``phases`` and ``evidence`` (:func:`breaker_evidence`).
    """
    from retrylib import FallbackModel, RetryConfig, RetryError, make_call, retry_with_validation
    from retrylib.breaker import CircuitBreaker
    from retrylib.budget import RetryBudget
    from retrylib.testing.faults import parse_plan

    cd = sizes.cooldown
    up, down, back = cd, 3 * cd, 2 * cd
    tag = uuid.uuid4().hex[:6]
    pkey, bkey = f"brk-primary-{tag}", f"brk-backup-{tag}"
    store = _recording_store()
    breaker = CircuitBreaker(failure_threshold=sizes.failure_threshold, cooldown=cd, store=store)
    config = RetryConfig(max_attempts=sizes.max_attempts, initial_delay=0.02, max_delay=0.1, seed=seed,
                         breaker=breaker, budget=RetryBudget(10.0, RATIO),  # as measured
                         fallback_models=[FallbackModel(model="proxy/backup", api_base=proxy.url,
                                                        kwargs={"extra_headers": {"X-Chaos-Key": bkey}})])
    call = make_call("proxy/primary", api_base=proxy.url, extra_headers={"X-Chaos-Key": pkey})
    dead = parse_plan(["503"] * 10_000)  # parsed now: the switch itself must not stall the loop
    t0 = time.monotonic()
    t_down, t_back, t_end = t0 + up, t0 + up + down, t0 + up + down + back
    calls: list[dict[str, Any]] = []

    async def lane() -> None:
        while time.monotonic() < t_end:
            start = time.monotonic()
            try:
                r = await retry_with_validation(call, MESSAGES, None, config)
                attempts, outcome = r.attempts, "ok"
            except RetryError as exc:
                attempts, outcome = exc.attempts, type(exc).__name__
            calls.append({"start": round(start - t0, 4), "end": round(time.monotonic() - t0, 4),
                          "outcome": outcome, "models": [a.model for a in attempts],
                          "states": [a.breaker_state for a in attempts]})
            await asyncio.sleep(0.02)

    async def outage() -> None:
        await asyncio.sleep(t_down - time.monotonic())
        proxy.set_plan(dead, key=pkey)
        await asyncio.sleep(t_back - time.monotonic())
        proxy.set_plan(None, key=pkey)

    await asyncio.gather(outage(), *(lane() for _ in range(sizes.breaker_lanes)))
    log = [(round(t - t0, 4), op, allowed, state) for t, key, op, allowed, state in store.log
           if key == "proxy/primary"]
    states = [(t, s) for t, _, _, s in log]
    primary = [round(e["monotonic"] - t0, 4) for e in proxy.journal(pkey)]
    backup = [round(e["monotonic"] - t0, 4) for e in proxy.journal(bkey)]
    proxy.clear(pkey)
    proxy.clear(bkey)
    phases = {"down": up, "back": up + down, "end": up + down + back, "cooldown": cd}
    allowed = sum(op == "allow" and ok for _, op, ok, _ in log)
    return {"states": _changes(states), "calls": calls, "primary": primary, "backup": backup,
            "phases": phases, "evidence": breaker_evidence(states, calls, primary, phases, margin, allowed)}


def breaker_evidence(states: list[tuple[float, str]], calls: list[dict[str, Any]],
                     primary: list[float], phases: dict[str, float], margin: float,
                     allowed: int) -> dict[str, Any]:
    """The breaker's claims, computed from one :func:`breaker_run`.

    An open interval runs from the decision that opened the breaker to the first decision
    after it that was not ``open`` (a half-open probe let through). A request that arrives
    within ``margin`` s of the opening was let through before it (in flight); one that
    arrives later inside the interval would be a request the open breaker let reach the
    dead primary. ``allowed`` (the breaker's granted decisions for the primary) must equal
    the primary's requests on the wire.
    """
    cd, down, back = phases["cooldown"], phases["down"], phases["back"]
    opened = _intervals(states, "open", phases["end"])
    inside = [t for t in primary for a, b in opened if a + margin <= t < b]
    edge = [t for t in primary for a, b in opened if a <= t < a + margin]
    during = [c for c in calls if down <= c["start"] and c["end"] <= back]
    on_backup = [c for c in during if c["outcome"] == "ok" and c["models"][-1] == "proxy/backup"]
    first_fb = min((c["end"] for c in calls if c["end"] > down and c["outcome"] == "ok"
                    and c["models"][-1] == "proxy/backup"), default=None)
    recovered = min((c["end"] for c in calls if c["start"] >= back and c["outcome"] == "ok"
                     and c["models"] == ["proxy/primary"]), default=None)
    closed_again = min((t for t, s in states if t >= back and s == "closed"), default=None)
    return {
        "calls": len(calls), "calls_during_outage": len(during),
        "outage_calls_ok": sum(c["outcome"] == "ok" for c in during),
        "outage_calls_on_fallback": len(on_backup),
        "outage_max_latency": round(max((c["end"] - c["start"] for c in during), default=0.0), 3),
        "first_fallback_success_after_down": None if first_fb is None else round(first_fb - down, 3),
        "open_intervals": [(round(a, 3), round(b, 3)) for a, b in opened],
        "primary_requests_total": len(primary),
        "primary_requests_during_outage": sum(down <= t < back for t in primary),
        "primary_requests_while_open": len(inside),
        "primary_requests_in_open_margin": len(edge), "margin": margin,
        "attempts_sent_while_open": sum(s == "open" for c in calls for s in c["states"]),
        "breaker_granted": allowed,
        "closed_again_after_back": None if closed_again is None else round(closed_again - back, 3),
        "half_open_probes": sum(1 for i, (_, st) in enumerate(states)
                                if st == "half_open" and (i == 0 or states[i - 1][1] != "half_open")),
        "primary_success_after_back": None if recovered is None else round(recovered - back, 3),
        "cooldown": cd,
    }


async def budget_timeline(proxy: Any, sizes: Sizes, seed: int,
                          arms: tuple[tuple[float, float], ...] | None = None,
                          rates: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0, 0.0)) -> dict[str, Any]:
    """Phases of ``timeline_calls`` calls at each failure rate in turn (8 lanes); the
    budget's level after every attempt (``(seconds, level)``), per budget arm (default:
    A6's ``(10, 0.1)``, ``(10, RATIO)``, ``(sized_tokens, RATIO)``), and each phase's outcomes."""
    from retrylib import RetryConfig, make_call
    from retrylib.batch import run_batch
    from retrylib.budget import RetryBudget

    arms = arms or ((10.0, A6_RATIO), (10.0, RATIO), (sizes.sized_tokens, RATIO))
    call = make_call("proxy/timeline", api_base=proxy.url)
    out: dict[str, Any] = {"rates": list(rates), "runs": []}
    for max_tokens, ratio in arms:
        budget = RetryBudget(max_tokens, ratio)
        t0, points = time.time(), list[tuple[float, float]]()

        def note(d: Any, t0: float = t0, points: list[tuple[float, float]] = points) -> None:
            points.append((round(d.timestamp + d.end - d.start - t0, 4), d.budget_level))

        config = RetryConfig(max_attempts=sizes.max_attempts, initial_delay=0.005, max_delay=0.02,
                             seed=seed, hooks=(note,))
        phases = []
        for k, rate in enumerate(rates):
            prefix = f"tl-{max_tokens:g}-{ratio}-{k}-{uuid.uuid4().hex[:6]}"
            for i in range(sizes.timeline_calls):
                proxy.set_plan(plan_for(seed + k, rate, i, sizes.max_attempts), key=f"{prefix}-{i}")
            start = time.time() - t0
            rows = await run_batch([{"messages": MESSAGES, "extra_headers": {"X-Chaos-Key": f"{prefix}-{i}"}}
                                    for i in range(sizes.timeline_calls)], call=call, config=config,
                                   budget=budget, concurrency=8, progress=False)
            phases.append({"rate": rate, "start": round(start, 3), "end": round(time.time() - t0, 3),
                           "outcomes": dict(Counter(r.outcome for r in rows)),
                           "requests": sum(e["key"].startswith(prefix) for e in proxy.journal())})
            proxy.clear()
        out["runs"].append({"budget": label((max_tokens, ratio)), "token_ratio": ratio,
                            "max_tokens": budget.max_tokens,
                            "threshold": budget.threshold, "points": points, "phases": phases})
    return out


# -- the run ----------------------------------------------------------------------------------

def done_when(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's done-when targets (and the run's own invariants), judged on ``result``:
    the amplification and 10 % targets once per budget arm with ``RATIO``; A6's default at
    10 % is reported (informational); the breaker's two claims."""
    rows = result["amplification"]

    def cell(rate: float, procs: int, budget: str) -> dict[str, Any]:
        return next(r for r in rows if r["rate"] == rate and r["processes"] == procs
                    and r["budget"] == budget)

    procs = sorted({r["processes"] for r in rows})
    arms = sorted({r["budget"] for r in rows if r["token_ratio"] == RATIO}, key=lambda b: float(b.split("/")[0]))
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        full = {p: cell(1.0, p, arm)["requests_per_call"] for p in procs}
        out[f"total_outage_amplification[{arm}]"] = {
            "passed": all(v <= TARGET_AMPLIFICATION for v in full.values()),
            "evidence": {f"{p}_processes": v for p, v in full.items()}, "target": TARGET_AMPLIFICATION}
        ten = {p: (cell(0.1, p, arm), cell(0.1, p, "none")) for p in procs}
        out[f"ten_percent_changes_no_outcome[{arm}]"] = {
            "passed": all(b["changed"] == 0 and b["ok_calls"] == n["ok_calls"] == b["calls"]
                          for b, n in ten.values()),
            "evidence": {f"{p}_processes": {"changed": b["changed"], "ok_with_budget": b["ok_calls"],
                                            "ok_without": n["ok_calls"], "calls": b["calls"]}
                         for p, (b, n) in ten.items()}}
    a6 = label((10.0, A6_RATIO))
    out[f"ten_percent_changes_no_outcome[{a6}] (A6 default, informational)"] = {
        "passed": all(cell(0.1, p, a6)["changed"] == 0 for p in procs), "informational": True,
        "evidence": {f"{p}_processes_changed": cell(0.1, p, a6)["changed"] for p in procs}}
    out["recommended"] = {"passed": True, "informational": True, "evidence": {
        "meets_both_targets": [a for a in arms if out[f"total_outage_amplification[{a}]"]["passed"]
                               and out[f"ten_percent_changes_no_outcome[{a}]"]["passed"]]}}
    bad = [r for r in rows if r["level_min"] is not None
           and not 0 <= r["level_min"] <= r["level_max"] <= r["max_tokens"]]
    out["levels_in_bucket"] = {"passed": not bad, "evidence": {"cells_out_of_bounds": len(bad)}}
    out["journal_equals_attempts"] = {"passed": all(r["requests"] == r["attempts"] for r in rows),
                                      "evidence": {"requests": sum(r["requests"] for r in rows),
                                                   "attempts": sum(r["attempts"] for r in rows)}}
    b = result.get("breaker", {}).get("evidence")
    if b:
        out["breaker_fallback_within_one_cooldown"] = {
            "passed": (b["outage_calls_ok"] == b["outage_calls_on_fallback"] == b["calls_during_outage"] > 0
                       and b["outage_max_latency"] < b["cooldown"]
                       and b["first_fallback_success_after_down"] is not None
                       and b["first_fallback_success_after_down"] < b["cooldown"]),
            "evidence": {k: b[k] for k in ("calls_during_outage", "outage_calls_ok", "outage_calls_on_fallback",
                                           "outage_max_latency", "first_fallback_success_after_down",
                                           "cooldown")}}
        out["no_request_to_dead_primary_while_open"] = {
            "passed": b["primary_requests_while_open"] == 0 and b["attempts_sent_while_open"] == 0
            and len(b["open_intervals"]) > 0 and b["breaker_granted"] == b["primary_requests_total"],
            "evidence": {k: b[k] for k in ("primary_requests_while_open", "primary_requests_in_open_margin",
                                           "margin", "attempts_sent_while_open", "open_intervals",
                                           "primary_requests_during_outage", "primary_requests_total",
                                           "breaker_granted", "half_open_probes")}}
    return out


def run(sizes: Sizes, seed: int, quick: bool, progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Start the proxy, Redis and the workers; run every measurement; the JSON-able result."""
    from retrylib.testing.chaos import ChaosProxy
    from retrylib.testing.redis import RedisServer

    _quiet()
    t = time.perf_counter()
    say = progress or (lambda _s: None)
    workers = Workers(max(sizes.processes))
    try:
        with ChaosProxy(upstream=None, upstream_free=True) as proxy, RedisServer() as redis:
            say("amplification (requests on the wire / calls):")
            rows = amplification(proxy, workers, redis.url, sizes, seed, progress=progress)
            say("throughput:")
            tp = workers.run([("throughput", {"url": proxy.url, "calls": sizes.throughput_calls,
                                              "rounds": sizes.throughput_rounds})])[0]
            say(f"  {json.dumps({k: v['calls_per_s'] for k, v in tp.items()})} calls/s")
            say("memory per call in flight:")
            mem = memory_per_call(proxy.url, sizes)
            say("  " + ", ".join(f"{arm} {mem[arm]} KB" for arm in MEMORY_ARMS))
            say("breaker and fallback; budget level over time:")
            brk = asyncio.run(breaker_run(proxy, sizes, seed))
            timeline = asyncio.run(budget_timeline(proxy, sizes, seed))
    finally:
        workers.close()
    result: dict[str, Any] = {
        "what": "requests per call under upstream failure, with and without a retry budget; "
                "throughput, memory, breaker; see benchmarks/amplification.py",
        "quick": quick, "seed": seed, "sizes": asdict(sizes), "recommended_token_ratio": RATIO,
        "budgets": "max_tokens/token_ratio; none: no budget",
        "amplification": rows,
        "throughput": {**tp, "ratio_guarded_to_direct": tp["retrylib budget+breaker"]["ratio_to_direct"],
                       "ratio_plain_to_direct": tp["retrylib plain"]["ratio_to_direct"],
                       "calls": sizes.throughput_calls, "rounds": sizes.throughput_rounds},
        "memory": mem, "breaker": compact_breaker(brk),
        "budget_timeline": timeline, "total_seconds": round(time.perf_counter() - t, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": {p: version(p) for p in ("litellm", "httpx", "aiohttp", "redis")},
    }
    result["done_when"] = done_when(result)
    return result


def compact_breaker(run: dict[str, Any]) -> dict[str, Any]:
    """:func:`breaker_run`'s result with one short row per call (for the JSON file)."""
    cols = ["start", "end", "outcome", "answered_by", "attempts"]
    rows = [[c["start"], c["end"], c["outcome"], c["models"][-1] if c["models"] else None,
             len(c["models"])] for c in run["calls"]]
    return {**run, "calls": rows, "calls_columns": cols}


def _changes(states: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """A (time, state) series cut to its changes (and its last entry)."""
    out = [s for i, s in enumerate(states) if i == 0 or s[1] != states[i - 1][1]]
    return out + states[-1:] if states and out[-1] != states[-1] else out


def table(rows: list[dict[str, Any]]) -> str:
    """The amplification cells as an aligned text table: requests/call (ok calls / calls)."""
    arms = list(dict.fromkeys(r["budget"] for r in rows))
    head = ["processes", "failure", *[f"budget {a}" for a in arms]]
    lines = [head]
    for procs in sorted({r["processes"] for r in rows}):
        for rate in sorted({r["rate"] for r in rows}):
            cells = []
            for arm in arms:
                r = next((x for x in rows if x["processes"] == procs and x["rate"] == rate
                          and x["budget"] == arm), None)
                cells.append("" if r is None else f"{r['requests_per_call']:.3f} ({r['ok_calls']}/{r['calls']} ok)")
            lines.append([str(procs), f"{rate:.0%}", *cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in lines)


def report(result: dict[str, Any]) -> str:
    """The table, the throughput ratio, memory, the breaker evidence and the verdicts."""
    tp, mem, b = result["throughput"], result["memory"], result["breaker"]["evidence"]
    lines = [table(result["amplification"]), "",
             f"throughput ({tp['calls']} calls at once, medians of {tp['rounds']} interleaved rounds): "
             + ", ".join(f"{k} {v['calls_per_s']}/s" for k, v in tp.items() if isinstance(v, dict))
             + f"; budget+breaker / direct = {tp['ratio_guarded_to_direct']} (median of the per-round "
             f"ratios), plain / direct = {tp['ratio_plain_to_direct']}",
             f"RSS per call in flight ({mem['calls']} calls held {mem['hold']:g} s): "
             + ", ".join(f"{arm} {mem[arm]} KB" for arm in MEMORY_ARMS)
             + f"; the loop's own share {mem['loop_kb_per_call']} KB",
             f"breaker: {json.dumps(b)}", ""]
    lines += [f"{'PASS' if v['passed'] else 'FAIL'} {k}: {json.dumps(v['evidence'])}"
              for k, v in result["done_when"].items()]
    lines.append(f"total: {result['total_seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (the test suite's run)")
    p.add_argument("--calls", type=int, default=None, help="calls per amplification cell")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=None, help=f"where the JSON goes (default {OUT.relative_to(ROOT)}; "
                                              "quick: nowhere unless given)")
    a = p.parse_args(argv)
    sizes = QUICK if a.quick else FULL
    if a.calls:
        sizes = replace(sizes, calls=a.calls)
    result = run(sizes, a.seed, a.quick)
    print(report(result))
    out = a.out or (None if a.quick else str(OUT))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
        print(f"written: {out}")
    return 0 if _met(result["done_when"]) else 1


def _met(verdict: dict[str, dict[str, Any]]) -> bool:
    """Some budget arm met both targets, and every invariant and breaker claim held."""
    arms = [k for k in verdict if k.startswith(("total_outage", "ten_percent"))] + ["recommended"]
    return bool(verdict["recommended"]["evidence"]["meets_both_targets"]) and all(
        v["passed"] for k, v in verdict.items() if k not in arms)


if __name__ == "__main__":
    raise SystemExit(main())
