"""The figure of notebook 02's tool-stage section, from the frames of
:mod:`workbook.experiments.tool_stage` and the committed ``benchmarks/tool_stage.py`` run.
Returns a matplotlib ``Figure`` (laid out and detached from pyplot, as :mod:`workbook.plots`
does); matplotlib is imported inside.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from workbook.plots import _done


def plot_tool_stage(rows: pd.DataFrame, saved: dict[str, Any] | None = None) -> Any:
    """Left: this run, one bar group per call (scripted and real-model tasks): tool calls made
    on the tool stage, how many ran in the MCP server, how many results reached a later
    request, and whether the answer after them passed. Right (when ``saved`` is given): the
    committed benchmark, per model: failing first answers, fixed by a plain re-ask, fixed
    by the tool stage, cases where the model called the tool.

    Args:
        rows: ``attempt_rows`` frames of every call, concatenated (``task``, ``stage``,
            ``tool``, ``ran``, ``result_in_next_request``, ``passed``).
        saved: ``benchmarks/results/tool_stage.json`` as loaded, or ``None``.
    """
    import matplotlib.pyplot as plt

    panels = 2 if saved else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    tool = rows[rows["stage"] == "tool"]
    tasks = list(dict.fromkeys(rows["task"]))
    made = [int(tool[tool.task == t]["tool"].notna().sum()) for t in tasks]
    ran = [int(tool[tool.task == t]["ran"].fillna(False).astype(bool).sum()) for t in tasks]
    sent = [int(tool[tool.task == t]["result_in_next_request"].fillna(False).astype(bool).sum()) for t in tasks]
    passed = [bool(tool[tool.task == t]["passed"].any()) for t in tasks]
    x = range(len(tasks))
    for offset, values, label, colour in ((-0.27, made, "tool calls made", "tab:blue"),
                                          (0.0, ran, "ran in the MCP server", "tab:green"),
                                          (0.27, sent, "result in a later request", "tab:purple")):
        ax.bar([i + offset for i in x], values, width=0.25, label=label, color=colour)
    top = max([*made, 1])
    for i, ok in zip(x, passed, strict=True):
        ax.text(i, top * 1.08, "passed" if ok else "failed", ha="center",
                color="tab:green" if ok else "tab:red", fontsize=9)
    ax.set_xticks(list(x), [t.replace(" (scripted)", "\n(scripted)") for t in tasks], fontsize=8)
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("on the tool stage")
    ax.set_title("this run: answer after the tool results")
    ax.legend(fontsize=7, loc="upper right")
    if saved:
        ax = axes[0][1]
        models = [r["model"] for r in saved["results"]]
        s = [r["summary"] for r in saved["results"]]
        bars = (("failing first answers", [v["first_fail"] for v in s], "tab:gray"),
                ("fixed by a re-ask", [v["reask_fixed"] for v in s], "tab:orange"),
                ("fixed by the tool stage", [v["tool"]["fixed"] for v in s], "tab:green"),
                ("cases with a tool call", [v["tool"]["cases_with_a_tool_call"] for v in s], "tab:blue"))
        for k, (label, values, colour) in enumerate(bars):
            ax.bar([i + (k - 1.5) * 0.2 for i in range(len(models))], values, width=0.19,
                   label=label, color=colour)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel("code tasks")
        ax.set_title(f"committed benchmark ({saved.get('when', '?')[:10]})")
        ax.legend(fontsize=7)
    return _done(fig)
