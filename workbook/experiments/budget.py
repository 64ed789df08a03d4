"""Notebook 08 (budget and breaker): amplification, the breaker over an outage, the budget's level.

The measurements are those of ``benchmarks/amplification.py`` (the benchmark behind the
committed ``benchmarks/results/amplification.json``); this module turns the notebook's
parameters into its sizes, owns the servers it needs (:class:`Lab`: the upstream-free fault
proxy, a real ``redis-server``, the worker processes) and shapes what the benchmark returns
into frames for the tables and plots (``workbook/budget_plots.py``). No model is needed: the
proxy answers every request itself, so the runner's model server and proxy go unused.
"""

from __future__ import annotations

import atexit
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # `benchmarks` is a folder of the repo, not an installed package
    sys.path.insert(0, str(_ROOT))

from benchmarks import amplification as amp  # noqa: E402

#: The quick run's caps (the test suite's workbook run), by ``Sizes`` field.
QUICK_CAPS = {"calls": 80, "concurrency": 10, "timeline_calls": 30, "cooldown": 0.6,
              "sized_tokens": 20.0}
#: The ``Sizes`` fields the notebook uses (the rest size the benchmark's throughput and memory runs).
USED = ("calls", "processes", "concurrency", "max_attempts", "sized_tokens", "cooldown",
        "failure_threshold", "breaker_lanes", "timeline_calls")
STATE_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


def sizes(quick: bool, **knobs: Any) -> amp.Sizes:
    """The benchmark's sizes for the notebook's knobs (``calls``, ``processes``, ``concurrency``,
    ``max_attempts``, ``cooldown``, ``failure_threshold``, ``timeline_calls``, ``max_tokens``
    as ``sized_tokens``), with the quick caps applied when ``quick``."""
    if "max_tokens" in knobs:
        knobs["sized_tokens"] = float(knobs.pop("max_tokens"))
    if "processes" in knobs:
        knobs["processes"] = tuple(knobs["processes"])
    s = replace(amp.FULL, **knobs)
    if quick:
        s = replace(s, **{k: min(getattr(s, k), v) for k, v in QUICK_CAPS.items()})
    return s


def shown(s: amp.Sizes) -> dict[str, Any]:
    """The sizes the notebook uses, for its table (``sized_tokens`` shown as ``max_tokens``)."""
    return {("max_tokens" if k == "sized_tokens" else k): getattr(s, k) for k in USED}


def arms(token_ratio: float, max_tokens: float) -> Any:
    """``arms(rate)``: no budget, A6's bucket size (10) and the sized one (``max_tokens``),
    both with ``token_ratio``, and A6's own default (10, 0.1) at 10 %."""
    def at(rate: float) -> list[amp.Arm]:
        out: list[amp.Arm] = [None, (10.0, token_ratio)]
        if max_tokens != 10.0:
            out.append((max_tokens, token_ratio))
        if rate == 0.1 and token_ratio != amp.A6_RATIO:
            out.append((10.0, amp.A6_RATIO))
        return out

    return at


@dataclass
class Lab:
    """The servers of one notebook run: the fault proxy (in this process), a ``redis-server``
    and the worker processes that make the calls. ``close()`` stops them (also at exit)."""

    proxy: Any
    redis: Any
    workers: amp.Workers
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, processes: int) -> Lab:
        from retrylib.testing.chaos import ChaosProxy
        from retrylib.testing.redis import RedisServer

        lab = cls(ChaosProxy(upstream=None, upstream_free=True).start(), RedisServer().start(),
                  amp.Workers(processes))
        atexit.register(lab.close)
        return lab

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.workers.close()
            self.redis.stop()
            self.proxy.stop()


def amplification(lab: Lab, s: amp.Sizes, seed: int, token_ratio: float) -> pd.DataFrame:
    """Every cell (rate × processes × budget arm): one row each, as the benchmark's."""
    rows = amp.amplification(lab.proxy, lab.workers, lab.redis.url, s, seed, progress=None,
                             arms=arms(token_ratio, s.sized_tokens))
    return pd.DataFrame(rows)


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (processes, failure rate), one column per budget: ``requests/call (ok)``."""
    cell = frame.assign(failure=(frame.rate * 100).round().astype(int).astype(str) + " %",
                        shown=frame.requests_per_call.map("{:.3f}".format) + " ("
                        + frame.ok_calls.astype(str) + "/" + frame.calls.astype(str) + " ok)")
    out = cell.pivot_table(index=["processes", "failure"], columns="budget", values="shown",
                           aggfunc="first", sort=False).reset_index()
    out.columns.name = None
    return out.fillna("")


async def breaker(lab: Lab, s: amp.Sizes, seed: int) -> dict[str, Any]:
    """The outage run (:func:`benchmarks.amplification.breaker_run`) and its frames:
    ``states`` (seconds, state, level), ``calls``, ``requests`` (seconds, model)."""
    run = await amp.breaker_run(lab.proxy, s, seed)
    states = pd.DataFrame(run["states"], columns=["seconds", "state"])
    states["level"] = states.state.map(STATE_LEVEL)
    calls = pd.DataFrame(run["calls"])
    calls["answered_by"] = [m[-1] if m else None for m in calls.models]
    requests = pd.DataFrame([(t, "primary") for t in run["primary"]] + [(t, "fallback") for t in run["backup"]],
                            columns=["seconds", "model"])
    return {**run, "states": states, "calls": calls, "requests": requests}


async def timeline(lab: Lab, s: amp.Sizes, seed: int, token_ratio: float) -> dict[str, Any]:
    """The budget-level run for A6's default (10, 0.1) and (10 | max_tokens, ``token_ratio``):
    ``points`` (budget, seconds, level) and ``phases`` (budget, rate, start, end, outcomes)."""
    chosen = [(10.0, amp.A6_RATIO), (10.0, token_ratio), (s.sized_tokens, token_ratio)]
    run = await amp.budget_timeline(lab.proxy, s, seed, arms=tuple(dict.fromkeys(chosen)))
    points = pd.DataFrame([(r["budget"], t, lv) for r in run["runs"] for t, lv in r["points"]],
                          columns=["budget", "seconds", "level"])
    phases = pd.DataFrame([{"budget": r["budget"], "max_tokens": r["max_tokens"],
                            "threshold": r["threshold"], **p} for r in run["runs"] for p in r["phases"]])
    return {"points": points, "phases": phases, "runs": run["runs"]}


def level_at_end_of(tl: dict[str, Any], rate: float) -> pd.DataFrame:
    """Per budget: the level after the last attempt of the (last) phase at ``rate``."""
    rows = []
    for r in tl["runs"]:
        phase = [p for p in r["phases"] if p["rate"] == rate][-1]
        inside = [lv for t, lv in r["points"] if phase["start"] <= t <= phase["end"]]
        rows.append({"budget": r["budget"], "threshold": r["threshold"],
                     "level": inside[-1] if inside else None, "outcomes": phase["outcomes"]})
    return pd.DataFrame(rows)
