"""The verification workbook: papermill runs the notebooks, nbconvert writes the reports.

::

    params/*.yaml ─> load_params ─> run_workbook ─┬─ LocalModelServer (once, when api_base is null)
                                                  ├─ ChaosProxy (once, in this process)
                                                  └─ for each notebook, in NOTEBOOKS order:
                                                       papermill ─> runs/<stem>.ipynb
                                                       nbconvert ─> <report>.md, <report>_files/,
                                                                    <report>.html  (reports.py)
                                                       ─> workbook_run.json, index.html and
                                                          README.md (after every notebook; index.py)

A notebook that fails still gets its reports, with the error visible; the run goes on and
the summary (always last) shows its checks as INCOMPLETE. Each report leads with its verdict
(status, checks, main figure); the index joins them. A new notebook joins the run, the
summary and the index by one :class:`NotebookSpec` line in :data:`NOTEBOOKS`. Notebooks validate their own
parameters in their first cell with :func:`workbook.params.check_params`, so a bad value
shows up as a ``ConfigError`` naming the parameter, in that notebook's report.
"""

from __future__ import annotations

import ast
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrylib.errors import ConfigError
from workbook.index import run_facts, write_index
from workbook.params import Rule, between, check_params, list_of, of_type, one_of
from workbook.reports import export_reports

__all__ = ["NOTEBOOKS", "NotebookSpec", "Rule", "WorkbookParams", "between", "check_params",
           "export_reports", "list_of", "load_params", "of_type", "one_of", "run_workbook",
           "select_notebooks"]

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO / "notebooks"
RUN_FILE = "workbook_run.json"


@dataclass(frozen=True, slots=True)
class NotebookSpec:
    """One notebook of the workbook: ``number`` (``"01"``), file ``stem``, results ``task``
    id (``<task>.results.json``) and ``report`` name (``<report>.md`` / ``.html``)."""

    number: str
    stem: str
    task: str
    report: str


# Run order: the summary reads everyone else's results, so it runs last.
NOTEBOOKS: tuple[NotebookSpec, ...] = (
    NotebookSpec("01", "01_core_retry", "core_retry", "task_001_task_1_core_retry"),
    NotebookSpec("02", "02_staged_retry", "staged_retry", "task_001_task_2_staged_retry"),
    NotebookSpec("03", "03_integration", "integration", "task_001_task_3_integration"),
    NotebookSpec("04", "04_edge_cases", "edge_cases", "task_001_task_4_edge_cases"),
    NotebookSpec("06", "06_strategy_benchmark", "strategy_benchmark", "task_001_strategy_benchmark"),
    NotebookSpec("07", "07_human_review", "human_review", "task_013_human_review"),
    NotebookSpec("08", "08_budget_breaker", "budget_breaker", "task_012_budget_breaker"),
    NotebookSpec("05", "05_final_summary", "final_summary", "task_001_final_summary"),
)


class CommonParams(BaseModel):
    """The ``common:`` section: what every notebook gets, and how the runner executes them."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(default="openai/smollm2", min_length=1)
    local_model: Literal["smollm2", "gemma3"] | None = "smollm2"
    api_base: str | None = Field(default=None, pattern=r"^https?://")
    seed: int = Field(default=7, ge=0)
    quick: bool = False
    cell_timeout: float = Field(default=1800.0, gt=0)
    kernel_name: str | None = None


class WorkbookParams(BaseModel):
    """A params file: ``common:`` plus ``notebooks: {<stem>: {name: value}}``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    common: CommonParams = Field(default_factory=lambda: CommonParams())
    notebooks: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_params(path: str | Path) -> WorkbookParams:
    """Read and validate a params YAML file.

    Args:
        path: the file.

    Returns:
        The validated :class:`WorkbookParams`.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, a value has the wrong
            type; the message names the key (``common.seed``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {str(path)!r} must hold a mapping, not {type(raw).__name__}")
    try:
        params = WorkbookParams.model_validate(raw)
    except ValidationError as exc:
        msgs = [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                for e in exc.errors()]
        raise ConfigError(f"params file {str(path)!r}: " + "; ".join(msgs)) from None
    stems = {s.stem for s in NOTEBOOKS}
    for stem in params.notebooks:
        if stem not in stems:
            raise ConfigError(f"params file {str(path)!r}: notebooks.{stem} is not a workbook "
                              f"notebook; valid: {', '.join(sorted(stems))}")
    return params


def select_notebooks(only: list[str] | None) -> list[NotebookSpec]:
    """The notebooks to run, in run order: all, or those whose number is in ``only``.

    Raises:
        ConfigError: a number matches no notebook; the message lists the valid ones.
    """
    if not only:
        return list(NOTEBOOKS)
    wanted = {s.strip().zfill(2) if s.strip().isdigit() else s.strip() for s in only}
    valid = [s.number for s in NOTEBOOKS]
    unknown = sorted(wanted - set(valid))
    if unknown:
        raise ConfigError(f"unknown notebook number(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return [s for s in NOTEBOOKS if s.number in wanted]


def declared_parameters(path: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters``-tagged cell (empty when it has none)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            names = set()
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
            return names
    return set()


def _kernel(requested: str | None) -> str:
    from jupyter_client.kernelspec import find_kernel_specs

    specs = find_kernel_specs()
    if requested:
        if requested not in specs:
            raise ConfigError(f"common.kernel_name {requested!r} is not installed; found: {sorted(specs)}")
        return requested
    # `make setup` installs the venv's kernelspec as "retrylib"; python3 is the fallback.
    return "retrylib" if "retrylib" in specs else "python3"


def _now() -> tuple[str, float]:
    t = time.time()
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds"), t


def run_workbook(params: str | Path = "params/default.yaml", only: list[str] | None = None,
                 output_dir: str | Path = "reports", cell_timeout: float | None = None,
                 runs_dir: str | Path | None = None, notebooks_dir: str | Path | None = None) -> int:
    """Execute the workbook's notebooks with papermill and export their reports.

    Args:
        params: the params YAML (``common:`` and ``notebooks:`` sections).
        only: notebook numbers to run (``["01", "03"]``); all when ``None``.
        output_dir: where reports, results files and ``workbook_run.json`` go.
        cell_timeout: seconds per cell; overrides ``common.cell_timeout``.
        runs_dir: where executed notebooks go (default ``<output_dir>/runs``).
        notebooks_dir: where the notebooks are (default the repository's ``notebooks/``).

    Returns:
        0 when every selected notebook executed without error, 1 otherwise.

    Raises:
        ConfigError: bad params file, unknown ``only`` number, a per-notebook key that the
            notebook does not declare, an unknown kernel. Raised before anything starts.
        ServerStartError: the embedded model server did not start.
    """
    from tqdm.auto import tqdm

    from retrylib.testing.chaos import ChaosProxy
    from retrylib.testing.local import LocalModelServer

    cfg = load_params(params)
    specs = select_notebooks(only)
    nb_dir = Path(notebooks_dir or NOTEBOOKS_DIR).resolve()
    out = Path(output_dir).resolve()
    runs = Path(runs_dir).resolve() if runs_dir else out / "runs"
    common = cfg.common
    timeout = float(cell_timeout if cell_timeout is not None else common.cell_timeout)
    if timeout <= 0:
        raise ConfigError(f"cell_timeout must be > 0, got {timeout}")
    declared = {s.stem: declared_parameters(nb_dir / f"{s.stem}.ipynb")
                for s in specs if (nb_dir / f"{s.stem}.ipynb").is_file()}
    for stem, knobs in cfg.notebooks.items():  # a typo would otherwise be silently ignored
        extra = sorted(set(knobs) - declared.get(stem, set(knobs)))
        if extra:
            raise ConfigError(f"params file {str(params)!r}: notebooks.{stem}.{extra[0]} is not a "
                              f"parameter of {stem}.ipynb; it declares {sorted(declared[stem])}")
    kernel = _kernel(common.kernel_name)
    provider, _, name = common.model.partition("/")
    if common.api_base is None and provider == "openai" and common.local_model is None:
        raise ConfigError("common.api_base and common.local_model are both null: nothing serves "
                          f"{common.model!r}")
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    started, t0 = _now()
    record: dict[str, Any] = {
        "params_file": str(Path(params).resolve()), "output_dir": str(out), "runs_dir": str(runs),
        "notebooks_dir": str(nb_dir), "started_at": started, "started_ts": t0, "ended_at": None,
        "seconds": None, "kernel_name": kernel, "cell_timeout": timeout,
        "common": common.model_dump(), "api_base": common.api_base, "chaos_url": None,
        "server": None, "notebooks": [], "exit_code": None,
        "selected": [{"number": s.number, "stem": s.stem, "task": s.task, "report": s.report}
                     for s in specs],
        **run_facts(),
    }
    # A non-inline MPLBACKEND in the kernel's environment removes every figure from the reports.
    saved_backend = os.environ.pop("MPLBACKEND", None)
    if saved_backend and "inline" in saved_backend:
        os.environ["MPLBACKEND"] = saved_backend
    server = proxy = None
    try:
        api_base = common.api_base
        present = [s for s in specs if (nb_dir / f"{s.stem}.ipynb").is_file()]
        if api_base is None and provider == "openai" and present and common.local_model:
            server = LocalModelServer(common.local_model, alias=name or None, n_ctx=4096).start()
            api_base = server.api_base
            record["server"] = {"model": common.local_model, "alias": server.model,
                                "api_base": api_base, "seconds": server.started_in}
        if api_base is not None:  # the proxy forwards OpenAI-shaped requests only
            proxy = ChaosProxy(upstream=api_base).start()
        record.update(api_base=api_base, chaos_url=proxy.url if proxy else None)
        injected = {"model": common.model, "api_base": api_base, "chaos_url": record["chaos_url"],
                    "results_dir": str(out), "quick": common.quick, "seed": common.seed}
        bar = tqdm(specs, desc="workbook", unit="notebook")
        for spec in bar:
            bar.set_postfix_str(spec.stem)
            path = nb_dir / f"{spec.stem}.ipynb"
            if not path.is_file():
                entry = _entry(spec, "missing", error={"ename": "FileNotFoundError", "cell": None,
                                                       "evalue": f"{path} does not exist"})
            else:
                runs_param = {"runs_dir": str(runs)} if "runs_dir" in declared[spec.stem] else {}
                nb_params = {**injected, **runs_param, **cfg.notebooks.get(spec.stem, {})}
                entry = _run_one(spec, path, runs, out, nb_params, kernel, timeout, record)
            record["notebooks"].append(entry)
            died = _server_death(server)
            if died:  # every later notebook would only fail with connection errors: say why
                record["server_died"] = died
            _write_record(out, record)
            write_index(out, record)
            tqdm.write(f"{spec.stem}: {entry['status']} in {entry['seconds']:.1f}s"
                       + (f" ({entry['error']['ename']}: {entry['error']['evalue'][:200]})"
                          if entry["error"] else ""))
            if died:
                tqdm.write(f"workbook: stopping, the {died}")
                break
        bar.close()
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
        if saved_backend is not None:
            os.environ["MPLBACKEND"] = saved_backend
    ok = all(e["status"] == "ok" for e in record["notebooks"])
    ended, t1 = _now()
    record.update(ended_at=ended, seconds=t1 - t0, exit_code=0 if ok else 1)
    _write_record(out, record)
    index = write_index(out, record)
    print(f"workbook: {sum(e['status'] == 'ok' for e in record['notebooks'])}/{len(specs)} notebooks "
          f"ran without error in {t1 - t0:.0f}s; reports in {out}, start at {Path(index['html']).name}")
    return record["exit_code"]


def _server_death(server: Any) -> str | None:
    """The death notice of the workbook's model server, if it died during the run."""
    from retrylib.errors import ServerDiedError

    if server is None:
        return None
    try:
        server.check()
    except ServerDiedError as exc:
        return str(exc)
    return None


def _entry(spec: NotebookSpec, status: str, **kw: Any) -> dict[str, Any]:
    return {"number": spec.number, "stem": spec.stem, "task": spec.task, "report": spec.report,
            "status": status, "error": None, "seconds": 0.0, "started_at": None,
            "started_ts": None, "ended_at": None, "executed": None, "reports": {}, **kw}


def _write_record(out: Path, record: dict[str, Any]) -> None:
    tmp = out / f".{RUN_FILE}.tmp"  # write-then-rename: the summary never reads half a file
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(out / RUN_FILE)


def _run_one(spec: NotebookSpec, path: Path, runs: Path, out: Path, nb_params: dict[str, Any],
             kernel: str, timeout: float, record: dict[str, Any]) -> dict[str, Any]:
    """Execute one notebook, export its reports, and return its entry for the run record."""
    import papermill as pm

    executed = runs / f"{spec.stem}.ipynb"
    started, t0 = _now()
    error = None
    try:
        pm.execute_notebook(str(path), str(executed), parameters=nb_params, kernel_name=kernel,
                            language="python", progress_bar=False, cwd=str(path.parent),
                            execution_timeout=timeout, start_timeout=120)
    except pm.PapermillExecutionError as exc:
        error = {"ename": exc.ename, "evalue": str(exc.evalue), "cell": exc.exec_count}
    except Exception as exc:  # a kernel that died or timed out: still report what ran
        error = {"ename": type(exc).__name__, "evalue": str(exc)[:2000], "cell": None}
    ended, t1 = _now()
    entry = _entry(spec, "failed" if error else "ok", error=error, seconds=t1 - t0,
                   started_at=started, started_ts=t0, ended_at=ended, executed=str(executed))
    if executed.is_file():
        entry["reports"] = export_reports(executed, out, spec.report, entry, record)
    return entry
