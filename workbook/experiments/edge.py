"""Notebook 04 (edge cases): faults on the wire, bad configurations, extreme settings, load.

Every scenario runs through the fault proxy with its own ``X-Chaos-Key``, so its journal
says exactly which requests arrived and which fault each one got. Each function returns
rows that say what happened (the attempt log) and how the call recovered or ended.

Arguments shared by the functions: ``env`` is the notebook's
:class:`~workbook.experiments.Session`; ``max_tokens`` bounds the model's answers.
A scenario row has ``scenario``, ``route``, ``plan``, ``outcome``, ``attempts``,
``requests`` (journaled for its key), ``recovered_on``, ``first_outcome``,
``first_retryable``, ``what_happened`` (the attempt log), ``faults_on_wire`` and ``seconds``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pandas as pd

from retrylib import validators as V
from retrylib.client import make_call
from retrylib.config import RetryConfig
from retrylib.declarative import llm_call
from retrylib.testing.chaos import ChaosProxy, parse_plan
from retrylib.testing.local import free_port
from workbook.experiments.integration import _run, _user, attempt_log

RUN = uuid.uuid4().hex[:6]  # keys unique to this kernel: a shared proxy may serve other runs
#: The sample sizes ``quick=True`` caps.
QUICK_CAPS = {"concurrent_calls": 50, "load_calls": 200}
NETWORK_FAULTS = ("reset", "malformed", "empty", "truncated", "wrong_shape", "hang")
ROUTES = {"chaos": "litellm", "proxy": "plain HTTP"}


def sample_sizes(quick: bool, **sizes: int) -> dict[str, int]:
    """The sample sizes to use: as given, or capped by :data:`QUICK_CAPS` in quick mode."""
    return {k: min(v, QUICK_CAPS.get(k, v)) if quick else v for k, v in sizes.items()}


def _row(scenario: str, route: str, plan: str, run: dict[str, Any], journal: list[dict[str, Any]],
         **extra: Any) -> dict[str, Any]:
    atts = run["attempts"]
    ok = [a.number for a in atts if a.outcome == "ok"]
    first = atts[0] if atts else None
    return {"scenario": scenario, "route": route, "plan": plan, "outcome": run["outcome"],
            "attempts": len(atts), "requests": len(journal), "recovered_on": ok[0] if ok else pd.NA,
            "first_outcome": first.outcome if first else None,
            "first_retryable": first.retryable if first else None,
            "what_happened": attempt_log(atts),
            "faults_on_wire": ",".join(str(e["fault"]) for e in journal),
            "seconds": round(run["wall"], 3), **extra}


async def network_faults(env: Any, hang_timeout: float, max_tokens: int) -> pd.DataFrame:
    """Each network fault once, then a normal request, on both routes.

    ``hang`` needs ``attempt_timeout``; that timeout also bounds the recovery attempt, and a
    loaded machine's model may need longer, so its recovery is a scripted ``reply:``.

    Args:
        hang_timeout: the ``attempt_timeout`` of the hang scenario, in seconds.

    Returns:
        One scenario row per (fault, route), then :func:`refused`'s rows.
    """
    rows = []
    for fault in NETWORK_FAULTS:
        for via, route in ROUTES.items():
            key = f"04-{RUN}-{fault}-{via}"
            plan = f"{fault},reply:recovered" if fault == "hang" else f"{fault},pass"
            env.chaos.clear(key)
            env.chaos.set_plan(plan, key)
            config = RetryConfig(max_attempts=3, initial_delay=0.05, jitter="none",
                                 attempt_timeout=hang_timeout if fault == "hang" else 300)
            run = await _run(env.call(via, max_tokens=max_tokens, temperature=0), _user("Say hello."),
                             validators=[V.ResponseNotEmpty()], config=config,
                             extra_headers={"X-Chaos-Key": key})
            rows.append(_row(fault, route, plan, run, env.chaos.journal(key)))
    rows += await refused(env, max_tokens)
    return pd.DataFrame(rows)


async def refused(env: Any, max_tokens: int, up_after: float = 0.3) -> list[dict[str, Any]]:
    """A closed port: once for good (the call must end), once until a server comes up there.

    The second time a proxy to the model starts on the port ``up_after`` seconds after the
    first attempt, while the call sleeps its 1 s backoff; the journal of that proxy shows
    which attempts reached it.

    Args:
        up_after: seconds after the call starts when the late server comes up.

    Returns:
        Four scenario rows (two per route); the first kind adds ``last_reason``, the
        classifier's reason for the last failure.
    """
    rows = []
    for via, route in ROUTES.items():
        prefix = "openai" if via == "chaos" else "proxy"
        dead = f"http://127.0.0.1:{free_port()}/v1"
        run = await _run(make_call(f"{prefix}/{env.proxy_model}", api_base=dead, max_tokens=max_tokens),
                         _user("Say hello."), config=RetryConfig(max_attempts=3, initial_delay=0.05))
        reason = (run["error"].last_error or {}).get("reason") if run["error"] else None
        rows.append(_row("refused", route, "nothing listens on the port (a free loopback port)", run, [],
                         last_reason=reason))
        port = free_port()
        late = ChaosProxy(upstream=env.api_base, port=port)

        async def bring_up(proxy: ChaosProxy = late) -> None:
            await asyncio.sleep(up_after)
            await asyncio.to_thread(proxy.start)

        riser = asyncio.create_task(bring_up())
        try:
            run = await _run(make_call(f"{prefix}/{env.proxy_model}", api_base=f"http://127.0.0.1:{port}/v1",
                                       max_tokens=max_tokens), _user("Say hello."),
                             config=RetryConfig(max_attempts=3, initial_delay=1.0, jitter="none",
                                                attempt_timeout=300))
            await riser
            rows.append(_row("refused, then the server comes up", route,
                             f"a proxy starts on port {port} after {up_after}s", run, late.journal()))
        finally:
            await asyncio.to_thread(late.stop)
    return rows


def config_cases() -> list[tuple[str, Callable[[], Any], tuple[str, ...]]]:
    """(case, what to build, the words the error must name)."""
    from workbook.params import check_params

    return [
        ("max_attempts=0", lambda: RetryConfig(max_attempts=0), ("max_attempts",)),
        ("initial_delay=-1", lambda: RetryConfig(initial_delay=-1), ("initial_delay",)),
        ("backoff_factor=0.5", lambda: RetryConfig(backoff_factor=0.5), ("backoff_factor",)),
        ("jitter='sideways'", lambda: RetryConfig(jitter="sideways"), ("jitter",)),
        ("initial_delay > max_delay", lambda: RetryConfig(initial_delay=5, max_delay=1),
         ("initial_delay", "max_delay")),
        ("attempt_timeout=0", lambda: RetryConfig(attempt_timeout=0), ("attempt_timeout",)),
        ("a typo: max_attempt=3", lambda: RetryConfig(max_attempt=3), ("max_attempt",)),
        ("thresholds out of order (tool 3, human 2)",
         lambda: RetryConfig(max_attempts=5, max_attempts_before_tool_use=3,
                             max_attempts_before_human=2, debug_tool_name="dbg"), ("tool", "human")),
        ("two stages on one threshold (constrained 2, tool 2)",
         lambda: RetryConfig(max_attempts=5, max_attempts_before_constrained=2,
                             max_attempts_before_tool_use=2, debug_tool_name="dbg"), ("constrained", "tool")),
        ("human after more failures than attempts",
         lambda: RetryConfig(max_attempts=3, max_attempts_before_human=5), ("max_attempts_before_human",)),
        ("tool stage without a tool", lambda: RetryConfig(max_attempts=4, max_attempts_before_tool_use=2),
         ("debug_tool_name",)),
        ("unknown validator type", lambda: V.build_validator("json_objekt"), ("json_objekt",)),
        ("unknown validator param", lambda: V.build_validator({"type": "regex", "params": {"patern": "x"}}),
         ("patern",)),
        ("PythonCode test that is not Python", lambda: V.PythonCode("f", ["assert f( =="]), ("test",)),
        ("unknown chaos fault", lambda: parse_plan("503,explode"), ("explode",)),
        ("notebook parameter seed=-1", lambda: check_params(seed=-1), ("seed",)),
    ]


async def invalid_configs(env: Any) -> pd.DataFrame:
    """Each bad configuration: the error raised and whether it names the field; last, a bad
    declarative ``llm_call`` config pointed at the proxy, which must send no request.

    Returns:
        One row per case: ``case``, ``raised`` (class name or ``None``), ``names`` (the words
        the message must hold), ``names_it``, ``message`` and ``requests`` (the last case).
    """
    rows: list[dict[str, Any]] = []
    for case, build, words in config_cases():
        try:
            build()
            raised, msg = None, ""
        except Exception as exc:  # the check is on the type: anything but ConfigError fails
            raised, msg = type(exc).__name__, str(exc)
        rows.append({"case": case, "raised": raised, "names": ", ".join(words),
                     "names_it": all(w in msg for w in words), "message": msg[:200], "requests": None})
    key = f"04-{RUN}-bad-llm-call"
    env.chaos.clear(key)
    try:
        await llm_call({"model": f"openai/{env.proxy_model}", "api_base": env.chaos.url,
                        "extra_headers": {"X-Chaos-Key": key}, "messages": _user("hi"),
                        "retry_config": {"max_attempts": 0}})
        raised, msg = None, ""
    except Exception as exc:
        raised, msg = type(exc).__name__, str(exc)
    rows.append({"case": "llm_call with retry_config.max_attempts=0", "raised": raised,
                 "names": "max_attempts", "names_it": "max_attempts" in msg, "message": msg[:200],
                 "requests": len(env.chaos.journal(key))})
    return pd.DataFrame(rows)


async def _scripted(env: Any, scenario: str, plan: str | list[str], config: RetryConfig,
                    via: str = "chaos", max_tokens: int = 16, **extra: Any) -> dict[str, Any]:
    key = f"04-{RUN}-" + re.sub(r"\W+", "-", scenario)
    env.chaos.clear(key)
    env.chaos.set_plan(plan, key)
    run = await _run(env.call(via, max_tokens=max_tokens, temperature=0), _user("Say hello."),
                     validators=[V.ResponseNotEmpty()], config=config, extra_headers={"X-Chaos-Key": key})
    journal = env.chaos.journal(key)
    shown = plan if isinstance(plan, str) else f"{len(plan)} tokens: {','.join(plan[:3])},...,{plan[-1]}"
    row = _row(scenario, ROUTES[via], shown, run, journal, **extra)
    row["slept"] = [round(a.slept, 4) for a in run["attempts"]]
    row["scheduled"] = [round(a.scheduled_delay, 4) for a in run["attempts"]]
    row["gaps"] = [round(b["monotonic"] - a["monotonic"], 4) for a, b in itertools.pairwise(journal)]
    row["reason"] = getattr(run["error"], "reason", None)
    return row


async def retry_extremes(env: Any, large_faults: int, large_attempts: int, max_delay: float,
                         max_tokens: int) -> pd.DataFrame:
    """No retries, very many retries with no delay, a capped delay, and a ``Retry-After``
    longer than the caller's patience.

    Args:
        large_faults, large_attempts: the faults before the pass, and ``max_attempts``, of
            the many-retries scenario.
        max_delay: the cap of the delay-cap scenario.

    Returns:
        Five scenario rows, in that order, with ``scheduled``, ``slept``, ``gaps`` (seconds
        between the requests' arrivals) and ``reason`` added.
    """
    faults = ["503", "500", "502", "429", "reset", "malformed"]
    big = [faults[i % len(faults)] for i in range(large_faults)] + ["pass"]
    rows = [
        await _scripted(env, "max_attempts=1, fault", "503", RetryConfig(max_attempts=1), max_tokens=max_tokens),
        await _scripted(env, "max_attempts=1, no fault", "pass", RetryConfig(max_attempts=1, attempt_timeout=300),
                        max_tokens=max_tokens),
        await _scripted(env, f"max_attempts={large_attempts}, {large_faults} faults, initial_delay=0", big,
                        RetryConfig(max_attempts=large_attempts, initial_delay=0, max_delay=0,
                                    attempt_timeout=300), max_tokens=max_tokens),
        await _scripted(env, f"delay cap: factor 10, max_delay={max_delay}", "503,503,503,503,pass",
                        RetryConfig(max_attempts=5, initial_delay=max_delay / 4, backoff_factor=10,
                                    max_delay=max_delay, jitter="none", attempt_timeout=300),
                        max_tokens=max_tokens, max_delay=max_delay),
        await _scripted(env, "Retry-After 5 s, max_retry_after=1", "429:retry-after=5",
                        RetryConfig(max_attempts=3, max_retry_after=1), max_tokens=max_tokens),
    ]
    return pd.DataFrame(rows)


# -- many calls at once ------------------------------------------------------------------------

#: Plan template -> (expected outcome, expected attempts). ``{i}`` is the call's number.
CONCURRENT_PLANS = {
    "pass": ("ok", 1), "503,pass": ("ok", 2), "429:retry-after=0.05,pass": ("ok", 2),
    "reset,pass": ("ok", 2), "malformed,pass": ("ok", 2), "empty,pass": ("ok", 2),
    "truncated,pass": ("ok", 2), "500,502,pass": ("ok", 3), "reply:bad-{i},pass": ("ok", 2),
    "hang,pass": ("ok", 2), "400": ("NonRetryableError", 1), "503,503,503,503": ("RetryExhaustedError", 4),
}


async def concurrent(n: int, seed: int, attempt_timeout: float, wait_limit: float = 120.0) -> dict[str, Any]:
    """``n`` calls at once against an upstream-free proxy, each with its own key and plan.

    Upstream-free: the proxy answers ``pass`` with ``OK`` itself, so this measures retrylib,
    the clients and the proxy under load, not a model. Half the calls use the litellm route,
    half the plain-HTTP route. Every answer must be exactly ``OK``.

    Args:
        n: how many calls; seed: draws the plans; attempt_timeout: per attempt (the hang
            plan waits this long); wait_limit: after this, unfinished calls count as lost.

    Returns:
        ``calls``: one row per call with its plan, expected and actual outcome and attempts,
        the requests its key received, how many times it ended, and whether its requests
        mentioned another call's content; plus ``lost`` (calls that never ended within
        ``wait_limit``), ``seconds``, ``n``, ``requests_total`` and ``t0`` (the first
        request's arrival, on the ``time.monotonic`` clock of the journal).
    """
    rng = random.Random(seed)
    templates = [list(CONCURRENT_PLANS)[i % len(CONCURRENT_PLANS)] for i in range(n)]
    rng.shuffle(templates)
    ends = [0] * n
    config = RetryConfig(max_attempts=4, initial_delay=0.02, max_delay=0.1, seed=seed,
                         attempt_timeout=attempt_timeout)
    with ChaosProxy(upstream=None, upstream_free=True, fixed_content="OK") as proxy:
        calls = {via: make_call(f"{'openai' if via == 'chaos' else 'proxy'}/chaos", api_base=proxy.url)
                 for via in ROUTES}

        async def one(i: int) -> dict[str, Any]:
            proxy.set_plan(templates[i].format(i=i), f"c{i}")
            try:
                return await _run(calls["chaos" if i % 2 == 0 else "proxy"], _user(f"Reply OK ({i})."),
                                  validators=[V.RegexMatch(r"^OK$", mode="fullmatch")], config=config,
                                  extra_headers={"X-Chaos-Key": f"c{i}"})
            finally:
                ends[i] += 1

        t = time.perf_counter()
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=wait_limit)
        seconds = time.perf_counter() - t
        for task in pending:
            task.cancel()
        journal = proxy.journal()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for e in journal:
        by_key.setdefault(e["key"], []).append(e)
    rows = []
    for i, task in enumerate(tasks):
        run = task.result() if task in done and not task.exception() else None
        mine = by_key.get(f"c{i}", [])
        markers = set(re.findall(r"bad-\d+", json.dumps([e["body"] for e in mine])))
        exp_outcome, exp_attempts = CONCURRENT_PLANS[templates[i]]
        rows.append({"call": i, "route": ROUTES["chaos" if i % 2 == 0 else "proxy"], "plan": templates[i],
                     "expected_outcome": exp_outcome, "outcome": run["outcome"] if run else "lost",
                     "expected_attempts": exp_attempts, "attempts": len(run["attempts"]) if run else None,
                     "requests": len(mine), "ended": ends[i],
                     "foreign_content": bool(markers - {f"bad-{i}"}),
                     "arrivals": [e["monotonic"] for e in mine], "faults": [e["fault"] for e in mine],
                     "what_happened": attempt_log(run["attempts"]) if run else ""})
    return {"calls": pd.DataFrame(rows), "lost": len(pending), "seconds": seconds, "n": n,
            "requests_total": len(journal), "t0": min((e["monotonic"] for e in journal), default=0.0)}


def recovery_table(*frames: pd.DataFrame) -> pd.DataFrame:
    """Every scenario in one table: what happened, and how it recovered or ended."""
    rows = []
    for df in frames:
        for r in df.to_dict("records"):
            done = r.get("recovered_on")
            how = ("succeeded on attempt 1 (nothing to recover from)" if pd.notna(done) and done == 1
                   else f"recovered on attempt {int(done)}" if pd.notna(done)
                   else f"ended: {r['outcome']}" + (f" ({r['reason']})" if r.get("reason") else ""))
            rows.append({"scenario": r["scenario"], "route": r["route"], "plan": r["plan"],
                         "what happened": r["what_happened"][:160], "how it recovered / ended": how,
                         "attempts": r["attempts"], "requests on the wire": r["requests"]})
    return pd.DataFrame(rows)


# -- thousands of calls in flight (benchmarks/load.py) -----------------------------------------

#: The committed full run of ``benchmarks/load.py`` (1,000 and 10,000 calls per measurement).
LOAD_RESULTS = "benchmarks/results/load.json"


def _load_module() -> Any:
    """``benchmarks/load.py`` of this repository (a folder of the repo, not an installed package)."""
    import importlib
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.load")


def load_benchmark(calls: int, seed: int, routes: tuple[str, ...] = ("litellm", "proxy")) -> dict[str, Any]:
    """``benchmarks/load.py`` at the notebook's scale: ``calls`` at once, per route (and, on
    the proxy route, per transport), direct / clean / 30 % faults, one measurement each.

    The proxy runs in a process of its own and each measurement in a fresh worker process,
    as in the full benchmark (see its docstring), so the figures are comparable with
    :data:`LOAD_RESULTS`, whose 10,000-call run this function does not repeat (~10 min).

    Args:
        calls: calls at once in each measurement.
        seed: draws which calls get a fault, and which one.
        routes: ``litellm``, ``proxy``.

    Returns:
        The benchmark's result: ``summary`` (one row per route and transport: throughput
        direct / clean / faults, their ratio, RSS per call in flight, lost, ended twice,
        duplicated, missing, journal == attempts), ``runs`` (every measurement), ``targets``.
    """
    return _load_module().run([calls], list(routes), quick=True, seed=seed, progress=False)


def saved_load_results(path: str | None = None) -> dict[str, Any] | None:
    """The committed full run (:data:`LOAD_RESULTS`), or ``None`` when there is none."""
    from pathlib import Path

    file = Path(path) if path else Path(__file__).resolve().parents[2] / LOAD_RESULTS
    return json.loads(file.read_text()) if file.is_file() else None


def load_table(result: dict[str, Any]) -> pd.DataFrame:
    """The benchmark's summary as a table a reader can take in: one row per route."""
    cols = {"route": "route", "transport": "transport", "n": "calls at once",
            "direct_calls_per_s": "direct calls/s", "clean_calls_per_s": "retrylib calls/s",
            "throughput_ratio": "ratio", "faults_calls_per_s": "30% faults calls/s",
            "rss_kb_per_call_clean": "KB/call (clean)", "rss_kb_per_call_faults": "KB/call (faults)",
            "lost": "lost", "ended_twice": "ended twice", "duplicated": "duplicated",
            "missing": "missing", "journal_equals_attempts": "journal = attempts"}
    return pd.DataFrame(result["summary"])[list(cols)].rename(columns=cols)
