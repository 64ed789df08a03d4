"""The benchmark's two plots: success against tokens spent, and against attempts made.

One panel per model. Each strategy is a labelled pair of points at the same x: a filled
circle for valid %, a hollow square for correct %, joined by a line so the gap between
"parses" and "is right" is visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def _success_vs(summary: pd.DataFrame, x: str, xlabel: str, log_x: bool) -> Any:
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = summary[summary["model"] == model]
        seen: dict[tuple[float, float], int] = {}  # strategies at the same point: stack labels
        for _, r in rows.iterrows():
            at = (round(float(r[x]), 3), round(float(r["valid_pct"]), 1))
            i = seen[at] = seen.get(at, -1) + 1
            ax.plot([r[x], r[x]], [r["correct_pct"], r["valid_pct"]], color="0.8", zorder=1)
            ax.scatter(r[x], r["valid_pct"], s=45, zorder=2)
            ax.scatter(r[x], r["correct_pct"], s=45, marker="s", facecolors="none",
                       edgecolors="k", zorder=2)
            ax.annotate(r["strategy"], (r[x], r["valid_pct"]), textcoords="offset points",
                        xytext=(5, 4 - 9 * i), fontsize=8)
        if log_x and (rows[x] > 0).all() and rows[x].max() > 5 * rows[x].min():
            ax.set_xscale("log")
        ax.set_ylim(-5, 105)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("% of cases")
        ax.set_title(f"{model}: ● valid   □ correct")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def success_vs_tokens(summary: pd.DataFrame) -> Any:
    """Valid % and correct % against the total tokens (prompt + completion) of all cases."""
    return _success_vs(summary, "tokens", "tokens spent over all cases (log)", True)


def success_vs_attempts(summary: pd.DataFrame) -> Any:
    """Valid % and correct % against the mean number of model calls per case."""
    return _success_vs(summary, "mean_attempts", "mean attempts per case", False)


def pattern_split(by_kind: pd.DataFrame) -> Any:
    """Valid % per strategy on the pattern cases beside the other cases, one panel per model.

    Args:
        by_kind: one row per (``model``, ``strategy``, ``pattern``) with ``valid_pct``.
    """
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(by_kind["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = by_kind[by_kind["model"] == model]
        names = list(dict.fromkeys(rows["strategy"]))
        for offset, flag, label, colour in ((-0.2, False, "other cases", "tab:gray"),
                                            (0.2, True, "pattern / format cases", "tab:blue")):
            part = rows[rows["pattern"] == flag].set_index("strategy")
            ax.bar([i + offset for i in range(len(names))],
                   [float(part["valid_pct"].get(n, 0.0)) for n in names], width=0.38,
                   label=label, color=colour)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("valid %")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_plots(summary: pd.DataFrame, folder: str | Path, stem: str = "extraction") -> list[Path]:
    """Write both plots as PNG into ``folder``; returns the paths."""
    import matplotlib.pyplot as plt

    out = []
    for name, fn in (("tokens", success_vs_tokens), ("attempts", success_vs_attempts)):
        fig = fn(summary)
        path = Path(folder) / f"{stem}_success_vs_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
