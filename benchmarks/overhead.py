"""How much does retrylib's retry loop cost, next to tenacity, stamina and a bare loop?

Two measurements, side by side in one run (``python benchmarks/overhead.py``):

1. **The loop's own cost per attempt, no I/O.** Every implementation retries the same
   in-process async function, which fails ``k - 1`` times and then answers ``"ok"``:

   - ``transport``: the failures are ``ConnectionError`` (a retryable transport error);
   - ``validation``: the failures are the answer ``"bad"``, judged by a trivial validator
     (retrylib re-asks with feedback; tenacity retries on the result; stamina on an
     exception raised from the check; the bare loop tests the string).

   No backoff anywhere (delays 0). The figure is wall time / attempts, the median of
   ``--repeats`` samples of ``--calls`` calls each, implementations interleaved so that a
   busy neighbour on a shared machine hurts them all alike.
2. **The loop around one real call.** ``retry_with_validation`` around the embedded
   SmolLM2 (litellm route) versus the same ``litellm.acompletion`` request made directly,
   interleaved in ABBA order, ``--real-repeats`` pairs. The overhead is given two ways: the
   median paired wall-time difference (noisy: the model's own jitter is in it), and the
   loop time measured inside the process (outer time minus the time spent in the call).

When retrylib misses its per-attempt target, the script profiles it (cProfile) and times
the per-attempt pieces one by one, so the report says where the time goes.

Results: a table on stdout and JSON in ``--out`` (``benchmarks/results/overhead.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
import timeit
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stamina
import tenacity

from retrylib import RetryConfig, retry_with_validation
from retrylib.validators.base import ValidationResult

ROOT = Path(__file__).resolve().parents[1]
TARGET_US = 8.0  # issue 11's goal for retrylib, per attempt, with no hooks installed
MESSAGES = [{"role": "user", "content": "Say ok."}]


class Flaky:
    """An async "model" that fails ``k - 1`` times, then answers ``"ok"``; counts its calls."""

    def __init__(self, k: int, mode: str):
        self.k, self.mode, self.n = k, mode, 0

    async def __call__(self, messages: Any = None, **kw: Any) -> str:
        self.n += 1
        if self.n % self.k:
            if self.mode == "transport":
                raise ConnectionError("connection reset by peer")
            return "bad"
        return "ok"


class IsOk:
    """The trivial validator: the answer must be ``"ok"``."""

    name = "is_ok"

    async def validate(self, text: str, context: Any) -> ValidationResult:
        return ValidationResult.ok(text) if text == "ok" else ValidationResult.fail("expected 'ok'")


class Rejected(Exception):
    """Raised by the stamina variant when the answer fails the check."""


def implementations(k: int, mode: str) -> dict[str, Any]:
    """One ``async run(flaky)`` per implementation; each makes exactly ``k`` attempts."""
    config = RetryConfig(max_attempts=k, initial_delay=0, max_delay=0, jitter="none")
    validators = [IsOk()] if mode == "validation" else None
    on = ConnectionError if mode == "transport" else Rejected
    stamina.instrumentation.set_on_retry_hooks([])  # no logging/metrics hooks: loop cost only

    async def run_retrylib(f: Flaky) -> Any:
        return (await retry_with_validation(f, MESSAGES, validators, config)).content

    async def run_tenacity(f: Flaky) -> Any:
        # The decorator form copies the retrying object per call, as idiomatic code does.
        retry = (tenacity.retry_if_exception_type(ConnectionError) if mode == "transport"
                 else tenacity.retry_if_result(lambda r: r != "ok"))

        @tenacity.retry(stop=tenacity.stop_after_attempt(k), wait=tenacity.wait_none(),
                        retry=retry, reraise=True)
        async def once() -> Any:
            return await f(messages=MESSAGES)

        return await once()

    async def run_stamina(f: Flaky) -> Any:
        async for attempt in stamina.retry_context(on=on, attempts=k, timeout=None,
                                                   wait_initial=0, wait_max=0, wait_jitter=0):
            with attempt:
                r = await f(messages=MESSAGES)
                if r != "ok":
                    raise Rejected(r)
        return r

    async def run_bare(f: Flaky) -> Any:
        for _ in range(k):
            try:
                r = await f(messages=MESSAGES)
            except ConnectionError:
                continue
            if r == "ok":
                return r
        raise RuntimeError("bare loop ran out of attempts")

    return {"retrylib": run_retrylib, "tenacity": run_tenacity, "stamina": run_stamina,
            "bare": run_bare}


async def loop_overhead(k: int, calls: int, repeats: int) -> list[dict[str, Any]]:
    """Median microseconds per attempt for every implementation and scenario.

    Args:
        k: attempts per call (``k - 1`` failures, then success).
        calls: calls per sample.
        repeats: samples per implementation (the median is reported).

    Returns:
        One row per (scenario, implementation): ``us_per_attempt`` (median), ``us_min``,
        ``us_samples``, ``attempts`` (checked to equal ``calls * k`` per sample).
    """
    rows = []
    for mode in ("transport", "validation"):
        impls = implementations(k, mode)
        samples: dict[str, list[float]] = {name: [] for name in impls}
        for run in impls.values():  # warm-up: imports, caches, first-call costs
            await run(Flaky(k, mode))
        for _ in range(repeats):
            for name, run in impls.items():
                f = Flaky(k, mode)
                t = time.perf_counter()
                for _ in range(calls):
                    await run(f)
                dt = time.perf_counter() - t
                if f.n != calls * k:
                    raise AssertionError(f"{name} made {f.n} attempts, expected {calls * k}")
                samples[name].append(dt / f.n * 1e6)
        for name, s in samples.items():
            rows.append({"scenario": mode, "impl": name, "us_per_attempt": statistics.median(s),
                         "us_min": min(s), "us_samples": s, "attempts_per_call": k})
    bare = {r["scenario"]: r["us_per_attempt"] for r in rows if r["impl"] == "bare"}
    for r in rows:
        r["x_bare"] = r["us_per_attempt"] / bare[r["scenario"]]
    return rows


def component_costs(number: int = 20_000) -> dict[str, float]:
    """Microseconds per call of the pieces retrylib's loop runs once per attempt."""
    import resource

    import psutil

    from retrylib.classify import classify, error_facts
    from retrylib.decision import INVALID, Outcome, State, decide
    from retrylib.feedback import Exchange, build_messages
    from retrylib.manager import _policy
    from retrylib.result import Attempt

    proc = psutil.Process(os.getpid())
    statm = os.open("/proc/self/statm", os.O_RDONLY) if os.path.exists("/proc/self/statm") else None
    exc = ConnectionError("connection reset by peer")
    cfg = RetryConfig(max_attempts=10, max_attempts_before_constrained=2)
    policy, state, invalid = _policy(cfg, 1), State(2, 1, 0), Outcome(INVALID)
    hist = [Exchange("bad", "Your previous answer did not pass validation.")] * 3
    verdict = classify(exc)
    fields = dict(number=1, start=0.0, end=0.1, outcome="transport_error", stage="normal",
                  scheduled_delay=0.0, slept=0.0, retry_after=None, tool_suggested=False,
                  mcp_config_sent=False, constrained=False, model=None, messages_sent=1,
                  timestamp=1.0, error_type="ConnectionError", status_code=None,
                  error_message="connection reset", retryable=True, note=None, rss_bytes=1)
    frozen = dataclasses.make_dataclass(  # what a frozen Attempt cost (it was frozen until 0f25c2f)
        "FrozenAttempt", [(f.name, Any, dataclasses.field(default=f.default))
                          if f.default is not dataclasses.MISSING else (f.name, Any)
                          for f in dataclasses.fields(Attempt)], slots=True, frozen=True)
    pieces = {
        "RSS via psutil Process.memory_info()": lambda: proc.memory_info().rss,
        "RSS alternative: resource.getrusage ru_maxrss (peak)": lambda: resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss,
        "copy.deepcopy(messages) (2 messages)": lambda: copy.deepcopy(MESSAGES),
        "alternative: [dict(m) for m in messages]": lambda: [dict(m) for m in MESSAGES],
        "build_messages (2 msgs + 3 failures, full)": lambda: build_messages(MESSAGES, hist, "full"),
        "classify(ConnectionError)": lambda: classify(exc),
        "error_facts (verdict given)": lambda: error_facts(exc, verdict),
        "Attempt(...) construction (slots dataclass, 20 kwargs)": lambda: Attempt(**fields),
        "for comparison: the same fields, frozen dataclass": lambda: frozen(**fields),
        "decide (an invalid answer, 2-stage ladder)": lambda: decide(state, invalid, policy),
        "time.time + 2x time.monotonic": lambda: (time.time(), time.monotonic(), time.monotonic()),
    }
    if statm is not None:  # an fd kept open: one pread per attempt instead of open/read/close
        pieces["RSS via os.pread on a kept /proc/self/statm fd"] = lambda: os.pread(statm, 64, 0)
    try:
        return {name: min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6
                for name, fn in pieces.items()}
    finally:
        if statm is not None:
            os.close(statm)


def profile_retrylib(k: int, calls: int, mode: str = "transport", top: int = 18) -> dict[str, Any]:
    """cProfile of retrylib's loop: the functions with the most own time, and a share per piece."""
    run = implementations(k, mode)["retrylib"]

    async def many() -> None:
        f = Flaky(k, mode)
        for _ in range(calls):
            await run(f)

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(many())
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(((v[2], v[3], f"{Path(fn[0]).name}:{fn[1]}({fn[2]})")
                   for fn, v in stats.stats.items()), reverse=True)  # type: ignore[attr-defined]
    own = [{"function": name, "own_s": tt, "cum_s": ct, "own_share": tt / total}
           for tt, ct, name in rows[:top]]
    # Cumulative time of the pieces named in the report, as a share of the profiled total;
    # keyed by (file, function) so that a rename in retrylib shows up as a missing row.
    # The loop is manager._run (one attempt, one decision); an attempt's steps are in loop.py.
    wanted = {("manager.py", "_run"): "manager._run (cumulative: the whole loop)",
              ("loop.py", "attempt"): "_Loop.attempt (cumulative: one attempt)",
              ("loop.py", "record"): "_Loop.record (the attempt's record, hooks)",
              ("hooks.py", "read"): "RssHook.read (only with the hook installed)",
              ("decision.py", "decide"): "decide", ("loop.py", "apply"): "_Loop.apply",
              ("loop.py", "transport_failure"): "_Loop.transport_failure",
              ("copy.py", "deepcopy"): "copy.deepcopy", ("classify.py", "classify"): "classify",
              ("classify.py", "error_facts"): "error_facts", ("loop.py", "request"): "_Loop.request",
              ("feedback.py", "build_messages"): "build_messages",
              ("feedback.py", "feedback_text"): "feedback_text",
              ("manager.py", "_finish"): "_finish (metrics, once per call)",
              ("result.py", "summarize"): "summarize (once per call)",
              ("loop.py", "check"): "_Loop.check (validation)", ("combine.py", "validate"): "AllOf.validate",
              ("backoff.py", "__init__"): "Backoff() (seeds an RNG, once per call)"}
    cum: dict[str, float] = {}
    for fn, v in stats.stats.items():  # type: ignore[attr-defined]
        label = wanted.get((Path(fn[0]).name, fn[2]))
        if label:
            cum[label] = max(cum.get(label, 0.0), v[3])
        if (Path(fn[0]).name, fn[2]) == ("manager.py", "_run"):
            cum["manager._run own time (its body: the while, the clocks)"] = v[2]
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return {"mode": mode, "profiled_seconds": total, "top_own_time": own,
            "cumulative_share": {k2: v / total for k2, v in sorted(cum.items(), key=lambda x: -x[1])},
            "not_seen": sorted(set(wanted.values()) - set(cum)),  # a rename shows up here
            "text": buf.getvalue()}


async def real_call_overhead(api_base: str, model: str, repeats: int,
                             max_tokens: int = 16) -> dict[str, Any]:
    """``retry_with_validation`` around one real call versus the direct litellm call.

    Args:
        api_base: the embedded server's ``/v1`` URL.
        model: the litellm model string (``openai/smollm2``).
        repeats: pairs of calls (ABBA order).
        max_tokens: the reply length cap; temperature 0 keeps replies identical.

    Returns:
        Medians of both arms, the paired difference (median, quartiles) as % of the direct
        call, and the in-process loop time (outer minus time spent inside the call).
    """
    import litellm

    from retrylib.client import make_call

    req = dict(model=model, api_base=api_base, max_tokens=max_tokens, temperature=0, seed=1)
    call = make_call(**req)
    # The direct arm sends exactly what make_call's route sends (retrylib.client.acompletion).
    direct_kw = dict(req, api_key="sk-local-no-key", timeout=600.0, num_retries=0, max_retries=0)
    config = RetryConfig(max_attempts=3, initial_delay=0.1, seed=1)
    inner: list[float] = []

    async def timed(messages: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return await call(messages=messages, **kw)
        finally:
            inner.append(time.perf_counter() - t)

    async def arm_direct() -> float:
        t = time.perf_counter()
        await litellm.acompletion(messages=copy.deepcopy(MESSAGES), **direct_kw)
        return time.perf_counter() - t

    async def arm_retry() -> tuple[float, int]:
        t = time.perf_counter()
        r = await retry_with_validation(timed, MESSAGES, None, config)
        return time.perf_counter() - t, len(r.attempts)

    await arm_direct()
    await arm_retry()  # warm-up: connection pools, the server's prompt cache
    inner.clear()
    direct, retry, loop_s, attempts = [], [], [], []
    for i in range(repeats):
        order = ("d", "r") if i % 2 == 0 else ("r", "d")
        for arm in order:
            if arm == "d":
                direct.append(await arm_direct())
            else:
                n0 = len(inner)
                dt, n = await arm_retry()
                retry.append(dt)
                attempts.append(n)
                loop_s.append(dt - sum(inner[n0:]))
    diffs = [r - d for r, d in zip(retry, direct, strict=True)]
    md = statistics.median(direct)
    q = statistics.quantiles(diffs, n=4) if len(diffs) >= 2 else [diffs[0]] * 3
    return {
        "repeats": repeats, "max_tokens": max_tokens, "model": model,
        "direct_median_ms": md * 1e3, "retry_median_ms": statistics.median(retry) * 1e3,
        "direct_iqr_ms": _iqr(direct) * 1e3, "retry_iqr_ms": _iqr(retry) * 1e3,
        "paired_diff_median_ms": statistics.median(diffs) * 1e3,
        "paired_diff_q1_ms": q[0] * 1e3, "paired_diff_q3_ms": q[2] * 1e3,
        "overhead_pct_paired": statistics.median(diffs) / md * 100,
        "overhead_pct_paired_q1": q[0] / md * 100, "overhead_pct_paired_q3": q[2] * 100 / md,
        "loop_median_us": statistics.median(loop_s) * 1e6, "loop_max_us": max(loop_s) * 1e6,
        "overhead_pct_inprocess": statistics.median(loop_s) / md * 100,
        "attempts_per_call": sorted(set(attempts)),
    }


def _iqr(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The per-attempt table as fixed-width text."""
    out = [f"{'scenario':<11} {'impl':<9} {'µs/attempt':>11} {'min µs':>8} {'x bare':>7}"]
    for r in rows:
        out.append(f"{r['scenario']:<11} {r['impl']:<9} {r['us_per_attempt']:>11.1f} "
                   f"{r['us_min']:>8.1f} {r['x_bare']:>7.1f}")
    return "\n".join(out)


def run(attempts: int = 10, calls: int = 300, repeats: int = 7, real_repeats: int = 30,
        api_base: str | None = None, real: bool = True, profile: bool | None = None,
        max_tokens: int = 16) -> dict[str, Any]:
    """Run every measurement and return the results dict (see the module docstring).

    Args:
        attempts: attempts per call in the loop benchmark.
        calls: calls per sample.
        repeats: samples per implementation.
        real_repeats: pairs of real calls (0 or ``real=False`` skips that part).
        api_base: a running embedded server to use; ``None`` starts SmolLM2 for the run.
        real: measure the real-call overhead.
        profile: profile retrylib; ``None`` means "only when it misses the target".
        max_tokens: reply cap of the real calls.
    """
    rows = asyncio.run(loop_overhead(attempts, calls, repeats))
    ours = {r["scenario"]: r["us_per_attempt"] for r in rows if r["impl"] == "retrylib"}
    result: dict[str, Any] = {
        "target_us_per_attempt": TARGET_US, "loop": rows,
        "retrylib_meets_target": {s: v <= TARGET_US for s, v in ours.items()},
        "versions": {p: version(p) for p in ("tenacity", "stamina", "litellm", "retrylib")},
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "sizes": {"attempts": attempts, "calls": calls, "repeats": repeats},
    }
    if profile or (profile is None and not all(result["retrylib_meets_target"].values())):
        result["components_us"] = component_costs()
        result["profile"] = {m: profile_retrylib(attempts, max(calls, 50), m)
                             for m in ("transport", "validation")}
    if real and real_repeats > 0:
        if api_base:
            result["real_call"] = asyncio.run(real_call_overhead(
                api_base, "openai/smollm2", real_repeats, max_tokens))
        else:
            from retrylib.testing.local import LocalModelServer

            with LocalModelServer("smollm2", n_ctx=2048) as srv:
                result["real_call"] = asyncio.run(real_call_overhead(
                    srv.api_base, srv.litellm_model, real_repeats, max_tokens))
    return result


def report(result: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    lines = ["Loop overhead per attempt (no I/O; median of samples)", format_table(result["loop"]),
             f"retrylib target: <= {TARGET_US} µs/attempt -> {result['retrylib_meets_target']}"]
    if "components_us" in result:
        lines.append("\nPer-attempt pieces of retrylib's loop (µs per call, timeit min):")
        lines += [f"  {v:7.2f}  {k}" for k, v in result["components_us"].items()]
        for mode, p in result.get("profile", {}).items():
            lines.append(f"\ncProfile, {mode}: cumulative share of the profiled time")
            lines += [f"  {v:6.1%}  {k}" for k, v in p["cumulative_share"].items()]
            if p.get("not_seen"):
                lines.append("  not in the profile: " + ", ".join(p["not_seen"]))
    rc = result.get("real_call")
    if rc:
        lines.append(
            f"\nOne real call ({rc['model']}, {rc['repeats']} ABBA pairs, max_tokens={rc['max_tokens']}):"
            f"\n  direct median {rc['direct_median_ms']:.1f} ms (IQR {rc['direct_iqr_ms']:.1f}),"
            f" retry_with_validation median {rc['retry_median_ms']:.1f} ms (IQR {rc['retry_iqr_ms']:.1f})"
            f"\n  paired difference median {rc['paired_diff_median_ms']:+.2f} ms = "
            f"{rc['overhead_pct_paired']:+.2f}% (quartiles {rc['overhead_pct_paired_q1']:+.2f}% .. "
            f"{rc['overhead_pct_paired_q3']:+.2f}%)"
            f"\n  loop time inside the process: median {rc['loop_median_us']:.0f} µs = "
            f"{rc['overhead_pct_inprocess']:.3f}% of the direct call")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attempts", type=int, default=10, help="attempts per call (k)")
    p.add_argument("--calls", type=int, default=300, help="calls per sample")
    p.add_argument("--repeats", type=int, default=7, help="samples per implementation")
    p.add_argument("--real-repeats", type=int, default=30, help="pairs of real calls")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--api-base", default=None, help="a running embedded server (else one is started)")
    p.add_argument("--no-real", action="store_true", help="skip the real-call measurement")
    p.add_argument("--profile", action="store_true", help="always profile retrylib")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    a = p.parse_args(argv)
    result = run(a.attempts, a.calls, a.repeats, a.real_repeats, a.api_base, not a.no_real,
                 True if a.profile else None, a.max_tokens)
    print(report(result))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
