"""Glue for ``notebooks/06_strategy_benchmark.ipynb``: parameters in, run settings out.

The notebook keeps only literals and calls; turning its parameters into the arguments of
:func:`~benchmarks.extraction.run.run_benchmark` (quick caps included) happens here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from benchmarks.extraction.run import QUICK_STRATEGIES, quick_budget
from benchmarks.extraction.strategies import Budget

QUICK_CASES = 4


def settings(*, model: str, api_base: str | None, quick: bool, seed: int, models: list[str],
             fallback: str | None, n_cases: int, gemma_cases: int, strategies: list[str],
             pilot_cases: int, **knobs: Any) -> dict[str, Any]:
    """The keyword arguments of ``run_benchmark`` for the notebook's parameters.

    Args:
        model, api_base: the runner's model under test; its server is reused for that row.
        quick: 4 cases, SmolLM2 only, 3 strategies, no fallback, a small budget.
        seed: every seed derives from it.
        models: the rows; fallback: the ladder's fallback model.
        n_cases: first N cases; gemma_cases: first N for the gemma3 row.
        strategies: names from ``STRATEGIES``; pilot_cases: instructor's mode pilot.
        **knobs: ``Budget`` fields (``max_tokens``, ``ladder``, ...).

    Returns:
        ``{"models", "strategies", "n_cases", "cases_per_model", "fallback", "budget",
        "reuse", "pilot_cases"}``.
    """
    name = model.split("/", 1)[-1]
    reuse = {name: api_base} if api_base and model.startswith("openai/") else {}
    if quick:
        return {"models": ["smollm2"], "strategies": list(QUICK_STRATEGIES),
                "n_cases": QUICK_CASES, "cases_per_model": {}, "fallback": None,
                "budget": quick_budget(seed=seed), "reuse": {k: v for k, v in reuse.items()
                                                             if k == "smollm2"},
                "pilot_cases": 0}
    return {"models": list(models), "strategies": list(strategies), "n_cases": n_cases,
            "cases_per_model": {"gemma3": gemma_cases}, "fallback": fallback,
            "budget": replace(Budget(), seed=seed, **knobs), "reuse": reuse,
            "pilot_cases": pilot_cases}


def ladders(strategies: list[str]) -> list[str]:
    """The retrylib ladder variants among ``strategies`` (judged by the done-when checks)."""
    return [s for s in strategies if s.startswith("ladder")]


# Each strategy with repair_json=True, and the same strategy without it.
REPAIR_PAIRS = {"single_repair": "single_shot", "feedback_repair": "feedback_last", "ladder_repair": "ladder"}


def repair_effect(records: pd.DataFrame) -> pd.DataFrame:
    """Per model and repaired strategy present beside its plain one: the cases both ran, how
    many the repair turned valid (``fixed``) and valid-to-invalid (``broken``), the same for
    correct, and both strategies' tokens."""
    rows = []
    for model in dict.fromkeys(records["model"]):
        mine = records[records["model"] == model]
        for repaired, plain in REPAIR_PAIRS.items():
            a = mine[mine["strategy"] == plain].set_index("case")
            b = mine[mine["strategy"] == repaired].set_index("case")
            both = a.index.intersection(b.index)
            if not len(both):
                continue
            a, b = a.loc[both], b.loc[both]
            rows.append({"model": model, "strategy": repaired, "against": plain, "cases": len(both),
                         "valid_without": int(a["valid"].sum()), "valid_with": int(b["valid"].sum()),
                         "fixed": int((~a["valid"] & b["valid"]).sum()), "broken": int((a["valid"] & ~b["valid"]).sum()),
                         "correct_fixed": int((~a["correct"] & b["correct"]).sum()),
                         "correct_broken": int((a["correct"] & ~b["correct"]).sum()),
                         "tokens_without": int((a["prompt_tokens"] + a["completion_tokens"]).sum()),
                         "tokens_with": int((b["prompt_tokens"] + b["completion_tokens"]).sum())})
    return pd.DataFrame(rows)
