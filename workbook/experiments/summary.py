"""The final summary: a completion matrix built from what the other notebooks measured.

It reads, for every verification task of :data:`workbook.runner.NOTEBOOKS`:

- ``<results_dir>/<task>.results.json`` (written by :meth:`CheckRecorder.save`);
- how its notebook ran: ``<results_dir>/workbook_run.json`` (the runner's record), or else
  the papermill metadata of ``<runs_dir>/<stem>.ipynb`` (a notebook run earlier, alone).

A check is COMPLETE only when its computed ``passed`` is true *and* its notebook ran without
error *and* its results file was written by that run. Everything else is INCOMPLETE, with the
reason, and stays in the table: a missing notebook or results file becomes a row of its own.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbook.redact import display_path, is_loopback
from workbook.runner import NOTEBOOKS, RUN_FILE, NotebookSpec
from workbook.tables import markdown_table

__all__ = ["COMPLETE", "INCOMPLETE", "NO_CHECKS", "TASKS", "completion", "completion_matrix",
           "environment_info", "limitations", "load_results", "load_run", "markdown_table",
           "matrix_mismatches", "plot_completion", "runs_frame", "task_failure", "task_runs"]

TASKS: tuple[NotebookSpec, ...] = tuple(s for s in NOTEBOOKS if s.task != "final_summary")
COMPLETE, INCOMPLETE = "COMPLETE", "INCOMPLETE"
NO_CHECKS = "(no checks recorded)"


def load_run(results_dir: str | Path) -> dict[str, Any] | None:
    """The runner's ``workbook_run.json``, or ``None`` when the workbook runner did not run."""
    path = Path(results_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _papermill_run(path: Path) -> dict[str, Any] | None:
    """A run entry from an executed notebook's papermill metadata (``None``: no such file)."""
    import nbformat

    if not path.is_file():
        return None
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    error = None
    for cell in nb.cells:  # the first error output is the one papermill stopped at
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and error is None:
                error = {"ename": out.get("ename"), "evalue": out.get("evalue"),
                         "cell": cell.get("execution_count")}
    start = meta.get("start_time")
    status = "failed" if meta.get("exception") or error else (
        "ok" if meta.get("end_time") else "running")
    return {"status": status, "error": error, "seconds": meta.get("duration") or 0.0,
            "started_at": start,
            "started_ts": datetime.fromisoformat(start).timestamp() if start else None,
            "source": f"papermill metadata of {path.name}"}


def task_runs(results_dir: str | Path, runs_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """How each task's notebook last ran: ``{task: {status, error, seconds, started_ts, ...}}``.

    ``status`` is ``ok``, ``failed``, ``missing`` (no notebook file), ``running`` or
    ``not run``. The runner's record wins; papermill metadata covers notebooks that ran in an
    earlier workbook run (``--only`` runs).

    Args:
        results_dir: where the results files and ``workbook_run.json`` are.
        runs_dir: where the executed notebooks are (default ``<results_dir>/runs``).
    """
    runs = Path(runs_dir) if runs_dir else Path(results_dir) / "runs"
    record = load_run(results_dir) or {}
    by_stem = {e["stem"]: e for e in record.get("notebooks", [])}
    out = {}
    for spec in TASKS:
        entry = by_stem.get(spec.stem)
        if entry is not None:
            out[spec.task] = {**entry, "source": RUN_FILE}
        else:
            out[spec.task] = _papermill_run(runs / f"{spec.stem}.ipynb") or {
                "status": "not run", "error": None, "seconds": 0.0, "started_ts": None,
                "started_at": None, "source": "no run record"}
    return out


def load_results(results_dir: str | Path) -> dict[str, tuple[dict[str, Any] | None, float | None]]:
    """``{task: (results, mtime)}``; ``(None, None)`` when the file is missing or unreadable."""
    out: dict[str, tuple[dict[str, Any] | None, float | None]] = {}
    for spec in TASKS:
        path = Path(results_dir) / f"{spec.task}.results.json"
        try:
            out[spec.task] = (json.loads(path.read_text()), path.stat().st_mtime)
        except (OSError, ValueError):
            out[spec.task] = (None, None)
    return out


def task_failure(task: str, run: dict[str, Any], results: dict[str, Any] | None,
                 mtime: float | None) -> str | None:
    """Why none of a task's checks can count as COMPLETE, or ``None`` when they can."""
    err = run.get("error") or {}
    if run["status"] == "missing":
        return "notebook file missing"
    if run["status"] == "failed":
        return f"notebook failed: {err.get('ename')}: {str(err.get('evalue'))[:300]}"
    if run["status"] != "ok":
        return f"notebook {run['status']} ({run.get('source')})"
    if results is None:
        return f"no results file {task}.results.json"
    if run.get("started_ts") and mtime is not None and mtime < run["started_ts"]:
        return (f"stale results: the file was written {_iso(mtime)}, before its notebook's run "
                f"started {_iso(run['started_ts'])}")
    if not results.get("checks"):
        return "the results file holds no checks"
    return None


def completion_matrix(results_dir: str | Path, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per check of every task: task, sub-task (the section), check, status, evidence, failure.

    Returns:
        The matrix. ``status`` is ``COMPLETE`` only when the check passed, its notebook ran
        without error and its results file is from that run. A task without checks (or
        without a results file) has one INCOMPLETE row, ``check == NO_CHECKS``.
    """
    runs, results = task_runs(results_dir, runs_dir), load_results(results_dir)
    rows = []
    for spec in TASKS:
        data, mtime = results[spec.task]
        why = task_failure(spec.task, runs[spec.task], data, mtime)
        checks = (data or {}).get("checks") or []
        for c in checks:
            ok = why is None and c.get("passed") is True
            rows.append({"task": spec.task, "sub-task": c.get("section", ""), "check": c.get("name"),
                         "status": COMPLETE if ok else INCOMPLETE,
                         "evidence": json.dumps(c.get("evidence", {}), default=str),
                         "failure": "" if ok else (why or c.get("details") or "check failed")})
        if not checks:
            rows.append({"task": spec.task, "sub-task": "", "check": NO_CHECKS, "status": INCOMPLETE,
                         "evidence": "{}", "failure": why or "no checks"})
    return pd.DataFrame(rows, columns=["task", "sub-task", "check", "status", "evidence", "failure"])


def completion(matrix: pd.DataFrame) -> pd.DataFrame:
    """Completion per task and overall: ``task, complete, total, percent`` (last row ``ALL``)."""
    g = matrix.assign(done=matrix["status"].eq(COMPLETE)).groupby("task", sort=False)["done"]
    per = pd.DataFrame({"complete": g.sum().astype(int), "total": g.size()}).reset_index()
    per.loc[len(per)] = ["ALL", int(per["complete"].sum()), int(per["total"].sum())]
    per["percent"] = (100.0 * per["complete"] / per["total"]).round(1)
    return per


def runs_frame(runs: dict[str, dict[str, Any]], results_dir: str | Path) -> pd.DataFrame:
    """One row per task: how its notebook ran, and the state of its results file."""
    results = load_results(results_dir)
    rows = []
    for spec in TASKS:
        r, (data, mtime) = runs[spec.task], results[spec.task]
        err = r.get("error") or {}
        rows.append({"task": spec.task, "notebook": f"{spec.stem}.ipynb", "status": r["status"],
                     "seconds": round(float(r.get("seconds") or 0.0), 1),
                     "checks passed": f"{data['passed']}/{data['total']}" if data else "-",
                     "error": f"{err.get('ename')}: {str(err.get('evalue'))[:160]}" if err else "",
                     "problem": task_failure(spec.task, r, data, mtime) or ""})
    return pd.DataFrame(rows)


def plot_completion(per_task: pd.DataFrame) -> Any:
    """Stacked horizontal bars per task: the share of checks COMPLETE (green) and INCOMPLETE
    (red), labelled ``complete/total``, so a task at 0 % still shows as a red bar."""
    import matplotlib.pyplot as plt

    df = per_task[per_task["task"] != "ALL"]
    fig, ax = plt.subplots(figsize=(7.5, 1.3 + 0.45 * len(df)))
    ax.barh(df["task"], df["percent"], color="tab:green", label=COMPLETE)
    ax.barh(df["task"], 100 - df["percent"], left=df["percent"], color="tab:red", alpha=0.45,
            label=INCOMPLETE)
    for y, (done, total) in enumerate(zip(df["complete"], df["total"], strict=True)):
        ax.text(101, y, f"{done}/{total}", va="center")
    ax.set_xlim(0, 112)
    ax.invert_yaxis()
    overall = per_task.loc[per_task["task"] == "ALL", "percent"].iloc[0]
    ax.set(xlabel="share of the task's checks (%)", title=f"Completion per task (overall {overall:.1f}%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def limitations(matrix: pd.DataFrame, record: dict[str, Any] | None, quick: bool,
                model: str) -> list[str]:
    """What a reader must know before trusting the numbers: quick mode, the model used, and
    every INCOMPLETE row and why (one line per task when a whole task is blocked)."""
    out = []
    if quick:
        out.append("Quick mode: sample sizes are reduced (params/quick.yaml), so rates and "
                   "timings are indicative, not statistically tight.")
    out.append(f"Model under test: `{model}`" + (
        " (SmolLM2-135M, a deliberately weak model: its failures make the retries real, but its "
        "success rates say nothing about larger models)." if "smollm2" in model else "."))
    if record is None:
        out.append("No workbook_run.json: the notebooks were not run by `python -m workbook run`.")
    bad = matrix[matrix["status"] == INCOMPLETE]
    for (task, failure), grp in bad.groupby(["task", "failure"], sort=False):
        why = " ".join(str(failure).split())[:300]
        if len(grp) > 1:
            out.append(f"`{task}`: {len(grp)} checks INCOMPLETE: {why}")
        elif grp["check"].iloc[0] == NO_CHECKS:
            out.append(f"`{task}`: no checks: {why}")
        else:
            out.append(f"`{task}` / {grp['check'].iloc[0]}: {why}")
    return out


def environment_info(record: dict[str, Any] | None, model: str, api_base: str | None,
                     quick: bool, seed: int) -> pd.DataFrame:
    """The environment of this run as ``item, value`` rows: model, versions, machine."""
    import platform

    import psutil

    from workbook.checks import environment

    env = environment()
    server = (record or {}).get("server") or {}
    if api_base is None or is_loopback(api_base):  # a port of this run means nothing later
        where = (f"the embedded {server['model']} server (llama.cpp), started by the runner"
                 if server.get("model") else "a model server on this machine")
    else:
        where = api_base
    rows = {"model": model, "model server": where, "quick": quick, "seed": seed,
            "python": env["python"], "platform": env["platform"], "cpus": os.cpu_count(),
            "memory (GiB)": round(psutil.virtual_memory().total / 2**30, 1),
            "processor": platform.processor() or platform.machine()}
    if record:
        commit = record.get("commit") or {}
        rows |= {"params file": display_path(record.get("params_file")),
                 "commit": (commit["sha"][:10] + (" with uncommitted changes" if commit.get("dirty") else ""))
                 if commit.get("sha") else "unknown",
                 "kernel": record.get("kernel_name"),
                 "cell timeout (s)": record.get("cell_timeout"),
                 "embedded server": (record.get("server") or {}).get("model", "none (external api_base)"),
                 "run started": record.get("started_at"),
                 "wall time so far (s)": round(time.time() - record["started_ts"], 1)}
    rows |= {f"package {k}": v for k, v in env["packages"].items()}
    return pd.DataFrame({"item": list(rows), "value": [str(v) for v in rows.values()]})


def matrix_mismatches(matrix: pd.DataFrame, results_dir: str | Path,
                      runs: dict[str, dict[str, Any]]) -> list[str]:
    """Recount the results files independently of the matrix; list every disagreement."""
    problems = []
    for task, (data, mtime) in load_results(results_dir).items():
        rows = matrix[matrix["task"] == task]
        if rows.empty:
            problems.append(f"{task}: no row in the matrix")
        checks = (data or {}).get("checks") or []
        listed = sorted(rows.loc[rows["check"] != NO_CHECKS, "check"])
        if listed != sorted(c["name"] for c in checks):
            problems.append(f"{task}: {len(listed)} checks in the matrix, {len(checks)} in the file")
        blocked = task_failure(task, runs[task], data, mtime) is not None
        expected = 0 if blocked else sum(c.get("passed") is True for c in checks)
        complete = int(rows["status"].eq(COMPLETE).sum())
        if complete != expected:
            problems.append(f"{task}: {complete} COMPLETE rows, expected {expected}")
    return problems


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
