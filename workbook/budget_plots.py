"""The figures of notebook 08 (budget and breaker), from the frames of
:mod:`workbook.experiments.budget`. Each returns a matplotlib ``Figure`` (laid out and
detached from pyplot, as :mod:`workbook.plots` does); matplotlib is imported inside.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from workbook.plots import _done

STATES = ("closed", "half_open", "open")
MODEL_COLOURS = {"primary": "tab:red", "fallback": "tab:green"}


def plot_amplification(frame: pd.DataFrame, max_attempts: int, target: float = 1.2) -> Any:
    """Requests per call against the upstream failure rate, one panel per process count
    (several processes share the budget through Redis), one line per budget.

    Args:
        frame: the cells (``rate``, ``processes``, ``budget``, ``requests_per_call``).
        max_attempts: the calls' attempt cap (the worst case without a budget).
        target: the issue's bound at 100 % failure with a budget.
    """
    import matplotlib.pyplot as plt

    procs = sorted(set(frame["processes"]))
    fig, axes = plt.subplots(1, len(procs), figsize=(3.8 * len(procs), 3.8), sharey=True, squeeze=False)
    budgets = list(dict.fromkeys(frame["budget"]))
    colours = dict(zip(budgets, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, n in zip(axes[0], procs, strict=True):
        for budget in budgets:
            d = frame[(frame["processes"] == n) & (frame["budget"] == budget)].sort_values("rate")
            ax.plot(d["rate"] * 100, d["requests_per_call"], marker="o", ms=5, color=colours[budget],
                    label="no budget" if budget == "none" else f"budget {budget}")
        ax.axhline(max_attempts, color="grey", lw=0.8, ls=":", label=f"max_attempts = {max_attempts}")
        ax.axhline(target, color="black", lw=0.8, ls="-.", label=f"target at 100 %: {target}")
        ax.set(xlabel="upstream failure rate (%)", xticks=sorted(set(frame["rate"] * 100)),
               title=f"{n} process" + ("es, one Redis budget" if n > 1 else ", in-process budget"))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("requests on the wire / call")
    axes[0][-1].legend(fontsize="x-small", title="max_tokens/token_ratio", title_fontsize="x-small")
    fig.suptitle("Amplification: requests per call, with and without a retry budget")
    return _done(fig)


def plot_breaker(states: pd.DataFrame, requests: pd.DataFrame, phases: dict[str, float],
                 bin_s: float = 0.1) -> Any:
    """The primary's breaker over the run (top) and the requests each model received per
    ``bin_s`` seconds (bottom), the outage shaded.

    Args:
        states: ``seconds``, ``state`` after each breaker decision.
        requests: ``seconds``, ``model`` (``primary`` / ``fallback``) of every request.
        phases: ``down``, ``back``, ``end``, ``cooldown`` (seconds).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (top, low) = plt.subplots(2, 1, figsize=(7.0, 4.6), sharex=True,
                                   gridspec_kw={"height_ratios": [1, 1.4]})
    level = states["state"].map({s: i for i, s in enumerate(STATES)})
    top.step([*states["seconds"], phases["end"]], [*level, level.iloc[-1]], where="post",
             color="tab:purple")
    top.set(yticks=range(len(STATES)), yticklabels=STATES, ylabel="breaker", ylim=(-0.3, 2.7),
            title=f"A primary goes down and comes back (cooldown {phases['cooldown']:g} s)")
    edges = np.arange(0.0, phases["end"] + bin_s, bin_s)
    for model, d in requests.groupby("model"):
        counts, _ = np.histogram(d["seconds"], bins=edges)
        low.step(edges[:-1], counts, where="post", color=MODEL_COLOURS.get(str(model)), label=f"to the {model}")
    low.set(xlabel="seconds", ylabel=f"requests / {bin_s:g} s")
    low.legend(fontsize="small")
    for ax in (top, low):
        ax.axvspan(phases["down"], phases["back"], color="tab:red", alpha=0.08, lw=0)
        ax.grid(alpha=0.3)
    top.text(phases["down"], 2.35, " primary down", fontsize="small", color="tab:red")
    return _done(fig)


def plot_budget_level(points: pd.DataFrame, phases: pd.DataFrame) -> Any:
    """The budget's level after every attempt, one panel per budget, phases of failure rates
    shaded and labelled, the threshold dashed.

    Args:
        points: ``budget``, ``seconds``, ``level``.
        phases: ``budget``, ``rate``, ``start``, ``end``, ``threshold``, ``max_tokens``.
    """
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(points["budget"]))
    fig, axes = plt.subplots(len(budgets), 1, figsize=(7.0, 2.0 * len(budgets) + 0.6), squeeze=False)
    for ax, budget in zip(axes[:, 0], budgets, strict=True):
        d, ph = points[points["budget"] == budget], phases[phases["budget"] == budget]
        ax.plot(d["seconds"], d["level"], lw=0.9, color="tab:blue")
        ax.axhline(ph["threshold"].iloc[0], color="black", lw=0.8, ls="--", label="threshold")
        for _, p in ph.iterrows():
            ax.axvspan(p["start"], p["end"], color="tab:red", alpha=0.35 * p["rate"], lw=0)
            ax.text((p["start"] + p["end"]) / 2, ph["max_tokens"].iloc[0] * 1.02, f"{p['rate']:.0%}",
                    ha="center", va="bottom", fontsize="x-small")
        ax.set(ylim=(0, ph["max_tokens"].iloc[0] * 1.15), ylabel="tokens",
               title=f"budget {budget} (max_tokens/token_ratio)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="x-small", loc="lower left")
    axes[-1, 0].set_xlabel("seconds (phases of upstream failure rate, shaded)")
    return _done(fig)
