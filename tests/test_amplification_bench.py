"""benchmarks/amplification.py runs (``--quick``) and what it reports holds together: the
journal counts match the attempts, a total outage costs exactly the bucket's spendable tokens
beyond one request per call (one process or four on one Redis), the breaker let no request
reach the dead primary while open. No timing is asserted: the benchmark measures speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from retrylib import RetryConfig
from retrylib.batch import run_batch
from retrylib.budget import RetryBudget
from retrylib.testing import ScriptedCall, http_error, set_testing

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import amplification  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run of the benchmark, its JSON read back."""
    out = tmp_path_factory.mktemp("amp") / "amplification.json"
    amplification.main(["--quick", "--out", str(out)])
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_cell_counts_what_went_over_the_wire(quick):
    """Each cell: journal == attempts; 0 % costs one request a call; without a budget a total
    outage costs max_attempts a call; levels stay in [0, max_tokens]."""
    rows, n = quick["amplification"], quick["sizes"]["max_attempts"]
    assert {r["processes"] for r in rows} == {1, 4} and {r["rate"] for r in rows} == {0.0, 0.1, 0.5, 1.0}
    assert all(r["workers"] == r["processes"] for r in rows)
    for r in rows:
        assert r["requests"] == r["attempts"], r
        if r["level_min"] is not None:
            assert 0 <= r["level_min"] <= r["level_max"] <= r["max_tokens"], r
        if r["rate"] == 0.0:
            assert r["requests"] == r["calls"] == r["ok_calls"] and r["changed"] == 0, r
        if r["rate"] == 1.0 and r["budget"] == "none":
            assert r["requests"] == n * r["calls"] and r["outcomes"] == {"exhausted": r["calls"]}, r


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_total_outage_spends_exactly_the_spendable_tokens(quick):
    """100 % failure with a budget: requests == calls + (max_tokens - threshold), in one
    process and in four sharing one Redis bucket (never more: no over-spend)."""
    outage = [r for r in quick["amplification"] if r["rate"] == 1.0 and r["budget"] != "none"]
    assert {r["store"] for r in outage} == {"memory", "redis"}
    for r in outage:
        assert r["requests"] == r["calls"] + r["max_tokens"] / 2, r
        assert r["ok_calls"] == 0 and r["outcomes"].get("budget", 0) >= r["calls"] - r["max_tokens"] / 2
    verdict = quick["done_when"]
    assert verdict["total_outage_amplification[10/0.5]"]["passed"]
    assert all(isinstance(v["passed"], bool) for v in verdict.values())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_breaker_spares_the_dead_primary_and_the_fallback_answers(quick):
    """While the breaker is open no request reaches the primary; every request it got was one
    the breaker let through; every call during the outage succeeded on the fallback."""
    b = quick["breaker"]["evidence"]
    assert b["open_intervals"] and b["half_open_probes"] >= 1
    assert b["primary_requests_while_open"] == 0 and b["attempts_sent_while_open"] == 0
    assert b["breaker_granted"] == b["primary_requests_total"]
    assert b["calls_during_outage"] > 0
    assert b["outage_calls_ok"] == b["outage_calls_on_fallback"] == b["calls_during_outage"]
    assert b["closed_again_after_back"] is not None and b["primary_success_after_back"] is not None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_throughput_memory_and_the_level_timeline_are_measured(quick):
    """Every throughput arm and memory arm ran with no failed call; the level timeline stays
    in the bucket, rests at the threshold after the total outage, and recovers after it."""
    tp = quick["throughput"]
    assert all(tp[arm]["calls_per_s"] > 0 for arm in ("litellm.acompletion", "retrylib budget+breaker",
                                                      "retrylib plain"))
    mem = quick["memory"]
    assert {r["arm"] for r in mem["runs"]} == set(amplification.MEMORY_ARMS)
    assert all(r["failed"] == 0 and r["rss_peak_mb"] >= r["rss_base_mb"] for r in mem["runs"])
    for run in quick["budget_timeline"]["runs"]:
        top, thr = run["max_tokens"], run["threshold"]
        assert all(0 <= level <= top for _, level in run["points"])
        phases = run["phases"]
        assert [p["rate"] for p in phases] == [0.0, 0.1, 0.5, 1.0, 0.0]
        outage, after = phases[3], phases[4]
        assert "ok" not in outage["outcomes"] and after["outcomes"] == {"ok": quick["sizes"]["timeline_calls"]}
        rest = [level for t, level in run["points"] if outage["start"] <= t <= outage["end"]][-1]
        assert thr - 1 < rest <= thr, (rest, thr)


async def test_run_batch_puts_budget_and_breaker_into_the_config():
    """``run_batch(budget=...)`` makes every call draw on that budget (a retry costs a
    token), and the budget never reaches the route as a request kwarg."""
    budget = RetryBudget(max_tokens=4, token_ratio=0.1)
    call = ScriptedCall([http_error(503), "ok", "ok"], model="m")
    with set_testing(True):
        rows = await run_batch([[{"role": "user", "content": "x"}]] * 2, call=call,
                               config=RetryConfig(max_attempts=3), budget=budget, progress=False,
                               concurrency=1)
    assert [r.outcome for r in rows] == ["ok", "ok"]
    assert all("budget" not in q.kwargs and "breaker" not in q.kwargs for q in call.requests)
    assert await budget.level("m") == pytest.approx(4 - 1 + 0.1 + 0.1)
