"""Thousands of calls in flight: does retrylib keep every call, and what does it cost?

``python benchmarks/load.py`` (``--quick``: 200 calls, for the test suite) runs, against the
upstream-free fault proxy (``retrylib chaos --upstream-free``) **in a process of its own**,
so that client and server do not share one event loop or one GIL:

- for each route (``litellm``: ``make_call("openai/m", api_base=...)``; ``proxy``:
  ``make_call("proxy/m", api_base=...)``) and each size (1,000 and 10,000 calls at once):

  - **direct**: the same requests sent with the same client (``ModelCall``, no retry loop,
    no validation): the floor;
  - **clean**: ``retry_with_validation`` with a validator, no fault;
  - **faults**: ``retry_with_validation`` where 30 % of the calls get one fault first (503,
    500, 429 with Retry-After, a reset, a malformed, truncated or empty body), drawn with a
    seed, then pass;

- the proxy route again on aiohttp's transport (``RETRYLIB_PROXY_TRANSPORT=aiohttp``), and
  a sweep of the proxy route's pool size (direct calls, 2,000 at once).

Each measurement runs in a fresh worker process (imports, clients and the heap start
cold alike; the worker warms its clients up with a few calls first), all calls launched at
once. Per measurement: calls per second, requests per second, RSS per call in flight (the
peak resident-set growth over the warm baseline, sampled every 10 ms, divided by the calls
in flight), the CPU seconds of client and proxy, and the accounting:

- **lost**: calls that had not ended when the wait limit passed;
- **ended twice**: calls whose ``finally`` ran more than once;
- **duplicated / missing**: calls whose requests in the proxy's journal (by ``X-Chaos-Key``)
  are more / fewer than the attempts their record holds; and the totals, journal against
  attempts.

Targets (issue 16): 0 lost, 0 ended twice, journal == attempts; clean throughput >= 0.95x
direct; <= 50 KB RSS per call in flight. Results: a table on stdout and JSON in ``--out``
(``benchmarks/results/load.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "load.json"
#: The faults a faulted call gets once before it passes (each costs one extra attempt).
FAULTS = ("503", "500", "429:retry-after=0.05", "reset", "malformed", "truncated", "empty")
TARGETS = {"lost": 0, "ended_twice": 0, "throughput_ratio": 0.95, "rss_kb_per_call": 50.0}
_PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the worker: one measurement, in its own process ------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def plans(n: int, faults: float, seed: int, prefix: str) -> dict[str, list[str]]:
    """``{key: plan}`` of the faulted calls (the others have no plan: they pass)."""
    rng = random.Random(seed)
    return {f"{prefix}-{i}": [rng.choice(FAULTS), "pass"] for i in range(n) if rng.random() < faults}


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One batch of ``spec["n"]`` calls at once; see the module docstring for what is counted."""
    from retrylib import RetryConfig, RetryError, make_call, retry_with_validation
    from retrylib import validators as V
    from retrylib.testing.chaos import ChaosClient

    n, arm, prefix = spec["n"], spec["arm"], spec["prefix"]
    proxy = ChaosClient(spec["url"], timeout=120)
    call = make_call("openai/m" if spec["route"] == "litellm" else "proxy/m", api_base=spec["url"],
                     max_tokens=8)
    validators = [V.RegexMatch(r"^OK$", mode="fullmatch")]
    config = RetryConfig(max_attempts=3, initial_delay=0.02, max_delay=0.1, seed=spec["seed"],
                         attempt_timeout=spec["attempt_timeout"])

    def prompt(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Reply OK. (call {i})"}]

    # Warm up the clients (imports, SSL context, connections), then start from a clean journal.
    await asyncio.gather(*(call(messages=prompt(-1), extra_headers={"X-Chaos-Key": f"{prefix}-warm"})
                           for _ in range(min(spec["warmup"], n))))
    proxy.clear()
    faulted = plans(n, spec["faults"], spec["seed"], prefix)
    if faulted:
        proxy.set_plans(faulted)
    ends, attempts, outcomes = [0] * n, [0] * n, [""] * n

    async def one(i: int) -> None:
        headers = {"X-Chaos-Key": f"{prefix}-{i}"}
        try:
            if arm == "direct":
                await call(messages=prompt(i), extra_headers=headers)
                attempts[i], outcomes[i] = 1, "ok"
            else:
                result = await retry_with_validation(call, prompt(i), validators, config,
                                                     extra_headers=headers)
                attempts[i], outcomes[i] = len(result.attempts), "ok"
        except RetryError as exc:
            attempts[i], outcomes[i] = len(exc.attempts), type(exc).__name__
        except Exception as exc:  # a direct call that failed: one request, its error named
            attempts[i], outcomes[i] = 1, type(exc).__name__
        finally:
            ends[i] += 1

    gc.collect()
    base = peak = _rss()
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)

    sampler = asyncio.create_task(sample())
    cpu0 = os.times()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=spec["wait_limit"])
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    stop.set()
    await sampler
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    journal = proxy.journal()
    per_key = Counter(e["key"] for e in journal)
    sent = [per_key.get(f"{prefix}-{i}", 0) for i in range(n)]
    done = [i for i in range(n) if ends[i]]
    return {
        **{k: spec[k] for k in ("route", "arm", "n", "faults", "transport", "pool_size")},
        "seconds": round(seconds, 3), "calls_per_s": round(n / seconds, 1),
        "requests": len(journal), "requests_per_s": round(len(journal) / seconds, 1),
        "lost": len(pending), "ended_twice": sum(e > 1 for e in ends),
        "attempts": sum(attempts), "journal": sum(sent), "journal_other_keys": len(journal) - sum(sent),
        "duplicated": sum(sent[i] > attempts[i] for i in done),
        "missing": sum(sent[i] < attempts[i] for i in done),
        "faulted_calls": len(faulted), "outcomes": dict(Counter(outcomes[i] for i in done)),
        "rss_base_mb": round(base / 2**20, 1), "rss_peak_mb": round(peak / 2**20, 1),
        "rss_kb_per_call": round((peak - base) / 1024 / n, 2),
        "client_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 2),
    }


def worker_main(spec_json: str) -> int:
    result = asyncio.run(measure(json.loads(spec_json)))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the parent: the proxy process, the workers, the table ------------------------------------

@contextlib.contextmanager
def proxy_process(backlog: int = 4096) -> Iterator[tuple[str, int]]:
    """``retrylib chaos --upstream-free`` in its own process: yields (url, pid)."""
    proc = subprocess.Popen([sys.executable, "-m", "retrylib.cli", "chaos", "--upstream-free",
                             "--port", "0", "--backlog", str(backlog)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("chaos proxy: "):
            raise RuntimeError(f"the chaos proxy did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        yield line.split()[2], proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def run_worker(spec: dict[str, Any], proxy_pid: int) -> dict[str, Any]:
    """Run one measurement in a fresh process; add the proxy's CPU seconds during it."""
    import psutil

    transport = "httpx" if spec["transport"] == "litellm" else spec["transport"]
    env = {**os.environ, "RETRYLIB_PROXY_TRANSPORT": transport,
           "RETRYLIB_PROXY_POOL_SIZE": str(spec["pool_size"]), "PYTHONPATH": str(ROOT)}
    server = psutil.Process(proxy_pid)
    before = server.cpu_times()
    load_before = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-m", "benchmarks.load", "--worker", json.dumps(spec)],
                         capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=spec["wait_limit"] + 300)
    after = server.cpu_times()
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({out.returncode}): {out.stderr[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["proxy_cpu_s"] = round((after.user + after.system) - (before.user + before.system), 2)
    # The machine's 1-minute load average around the run: other work on a shared machine
    # slows every arm alike, but it shows why two runs of one arm differ.
    result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def plan_specs(sizes: list[int], routes: list[str], quick: bool, seed: int) -> list[dict[str, Any]]:
    """Every measurement of a run, in order: per (route, size) direct, clean, faults, and the
    direct / clean pair again (ABBA: direct, clean, faults, clean, direct) to halve drift."""
    specs = []
    common = {"seed": seed, "attempt_timeout": 300.0, "warmup": 50 if quick else 200,
              "wait_limit": 600.0, "pool_size": 100}
    for route in routes:
        transports = ["litellm"] if route == "litellm" else ["httpx", "aiohttp"]
        for transport in transports:
            for n in sizes:
                # ABBA where it is cheap; 10,000 calls once each (the run must stay ~10 min).
                order = (["direct", "clean", "faults"] if quick or n > 2000
                         else ["direct", "clean", "faults", "clean", "direct"])
                for k, arm in enumerate(order):
                    specs.append({**common, "route": route, "transport": transport, "n": n,
                                  "arm": "direct" if arm == "direct" else "retrylib",
                                  "faults": 0.3 if arm == "faults" else 0.0,
                                  "prefix": f"{route}-{transport}-{n}-{arm}-{k}"})
    if not quick:  # the proxy route's pool size, chosen by this
        for size in (50, 100, 200, 500):
            specs.append({**common, "route": "proxy", "transport": "httpx", "n": 2000, "arm": "direct",
                          "faults": 0.0, "pool_size": size, "prefix": f"pool-{size}", "sweep": True})
    return specs


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (route, transport, size): direct vs clean throughput, faults' accounting."""
    out = []
    keys = sorted({(r["route"], r["transport"], r["n"]) for r in rows if not r.get("sweep")},
                  key=lambda k: (k[0], k[1], k[2]))
    for route, transport, n in keys:
        mine = [r for r in rows if (r["route"], r["transport"], r["n"]) == (route, transport, n)
                and not r.get("sweep")]
        direct = [r for r in mine if r["arm"] == "direct"]
        clean = [r for r in mine if r["arm"] == "retrylib" and r["faults"] == 0]
        faults = [r for r in mine if r["faults"] > 0]
        d = sum(r["calls_per_s"] for r in direct) / len(direct)
        c = sum(r["calls_per_s"] for r in clean) / len(clean)
        retry_rows = clean + faults
        out.append({
            "route": route, "transport": transport, "n": n,
            "direct_calls_per_s": round(d, 1), "clean_calls_per_s": round(c, 1),
            "throughput_ratio": round(c / d, 3),
            "faults_calls_per_s": round(sum(r["calls_per_s"] for r in faults) / len(faults), 1),
            "rss_kb_per_call_clean": max(r["rss_kb_per_call"] for r in clean),
            "rss_kb_per_call_faults": max(r["rss_kb_per_call"] for r in faults),
            "rss_kb_per_call_direct": max(r["rss_kb_per_call"] for r in direct),
            "lost": sum(r["lost"] for r in retry_rows + direct),
            "ended_twice": sum(r["ended_twice"] for r in retry_rows + direct),
            "duplicated": sum(r["duplicated"] for r in retry_rows),
            "missing": sum(r["missing"] for r in retry_rows),
            "journal_equals_attempts": all(r["journal"] == r["attempts"] and not r["journal_other_keys"]
                                           for r in retry_rows),
            "faults_journal": sum(r["journal"] for r in faults),
            "faults_attempts": sum(r["attempts"] for r in faults),
            "faults_outcomes": faults[0]["outcomes"],
            "all_ok": all(set(r["outcomes"]) == {"ok"} for r in retry_rows + direct),
        })
    return out


def verdict(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target, met or not, over every (route, transport, size) line."""
    def line(s: dict[str, Any]) -> str:
        return f"{s['route']}/{s['transport']}/{s['n']}"

    return {
        "zero_lost": all(s["lost"] == 0 for s in summary),
        "zero_ended_twice": all(s["ended_twice"] == 0 for s in summary),
        "journal_equals_attempts": all(s["journal_equals_attempts"] and not s["duplicated"]
                                       and not s["missing"] for s in summary),
        "throughput_ratio_ok": {line(s): s["throughput_ratio"] >= TARGETS["throughput_ratio"]
                                for s in summary},
        "rss_ok": {line(s): max(s["rss_kb_per_call_clean"], s["rss_kb_per_call_faults"])
                   <= TARGETS["rss_kb_per_call"] for s in summary},
    }


def run(sizes: list[int], routes: list[str], quick: bool, seed: int,
        progress: bool = True) -> dict[str, Any]:
    """Start the proxy, run every measurement, and return the JSON-able result."""
    specs = plan_specs(sizes, routes, quick, seed)
    rows = []
    t = time.perf_counter()
    with proxy_process() as (url, pid):
        for spec in specs:
            row = run_worker({**spec, "url": url}, pid)
            row["sweep"] = bool(spec.get("sweep"))
            rows.append(row)
            if progress:
                print(f"  {row['route']:7} {row['transport']:7} n={row['n']:<6} {row['arm']:8} "
                      f"faults={row['faults']:.1f} pool={row['pool_size']:<4} {row['calls_per_s']:8.1f} calls/s  "
                      f"{row['rss_kb_per_call']:6.2f} KB/call  lost={row['lost']} twice={row['ended_twice']} "
                      f"journal={row['journal']} attempts={row['attempts']}", flush=True)
    summary = summarize(rows)
    return {
        "what": "concurrent calls through retry_with_validation against the upstream-free "
                "fault proxy in its own process; see benchmarks/load.py",
        "quick": quick, "sizes": sizes, "routes": routes, "seed": seed, "fault_rate": 0.3,
        "faults": list(FAULTS), "targets": TARGETS, "summary": summary,
        "pool_sweep": [{"pool_size": r["pool_size"], "calls_per_s": r["calls_per_s"],
                        "client_cpu_s": r["client_cpu_s"], "proxy_cpu_s": r["proxy_cpu_s"]}
                       for r in rows if r["sweep"]],
        "verdict": verdict(summary), "runs": rows, "total_seconds": round(time.perf_counter() - t, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": {p: version(p) for p in ("httpx", "httpcore", "aiohttp", "litellm")},
    }


def report(result: dict[str, Any]) -> str:
    """The summary as an aligned text table, then the verdict."""
    cols = ["route", "transport", "n", "direct_calls_per_s", "clean_calls_per_s", "throughput_ratio",
            "faults_calls_per_s", "rss_kb_per_call_clean", "rss_kb_per_call_faults", "lost",
            "ended_twice", "duplicated", "missing", "journal_equals_attempts"]
    rows = [cols] + [[str(s[c]) for c in cols] for s in result["summary"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if result["pool_sweep"]:
        lines.append("proxy route pool size (direct, 2,000 at once): " + ", ".join(
            f"{p['pool_size']}: {p['calls_per_s']} calls/s" for p in result["pool_sweep"]))
    lines.append(f"verdict: {json.dumps(result['verdict'])}")
    lines.append(f"total: {result['total_seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 calls per measurement, one of each")
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default 1000,10000; quick: 200)")
    p.add_argument("--routes", default="litellm,proxy")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=None, help=f"where the JSON goes (default {OUT.relative_to(ROOT)}; "
                                              "quick: nowhere unless given)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        return worker_main(a.worker)
    sizes = [int(x) for x in (a.sizes or ("200" if a.quick else "1000,10000")).split(",")]
    result = run(sizes, a.routes.split(","), a.quick, a.seed)
    print(report(result))
    out = a.out or (None if a.quick else str(OUT))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
