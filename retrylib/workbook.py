"""The verification workbook: papermill runs the notebooks, nbconvert writes the reports.

::

    params/*.yaml ─> load_params ─> run_workbook ─┬─ LocalModelServer (once, when api_base is null)
                                                  ├─ ChaosProxy (once, in this process)
                                                  └─ for each notebook, in NOTEBOOKS order:
                                                       papermill ─> runs/<stem>.ipynb
                                                       nbconvert ─> <report>.md, <report>_files/,
                                                                    <report>.html
                                                       ─> workbook_run.json (after every notebook)

A notebook that fails still gets its reports, with the error visible; the run goes on and
the summary (always last) shows its checks as INCOMPLETE. Notebooks validate their own
parameters in their first cell with :func:`check_params`, so a bad value shows up as a
``ConfigError`` naming the parameter, in that notebook's report.
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

    from retrylib.chaos import ChaosProxy
    from retrylib.local import LocalModelServer

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
            _write_record(out, record)
            tqdm.write(f"{spec.stem}: {entry['status']} in {entry['seconds']:.1f}s"
                       + (f" ({entry['error']['ename']}: {entry['error']['evalue'][:200]})"
                          if entry["error"] else ""))
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
    print(f"workbook: {sum(e['status'] == 'ok' for e in record['notebooks'])}/{len(specs)} notebooks "
          f"ran without error in {t1 - t0:.0f}s; reports in {out}")
    return record["exit_code"]


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
        entry["reports"] = export_reports(executed, out, spec.report, entry, record["params_file"])
    return entry


def export_reports(executed: Path, out: Path, report: str, entry: dict[str, Any],
                   params_file: str) -> dict[str, Any]:
    """Export an executed notebook to ``<report>.md`` (figures in ``<report>_files/``) and a
    self-contained ``<report>.html`` (figures as ``data:`` URIs). Code is hidden; outputs,
    tables, figures and errors stay. A status line on top says how the run went.

    Returns:
        ``{"markdown": path, "html": path, "figures": [paths]}``.
    """
    import shutil

    import nbformat
    from nbconvert import HTMLExporter, MarkdownExporter

    nb = nbformat.read(executed, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(_status_line(entry, params_file)))
    files_dir = out / f"{report}_files"
    shutil.rmtree(files_dir, ignore_errors=True)  # figures of an earlier run would linger
    body, res = MarkdownExporter(exclude_input=True).from_notebook_node(
        nb, resources={"output_files_dir": f"{report}_files", "unique_key": report})
    figures = []
    for rel, data in res.get("outputs", {}).items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        figures.append(str(target))
    md = out / f"{report}.md"
    md.write_text(body)
    html_body, _ = HTMLExporter(exclude_input=True, embed_images=True).from_notebook_node(nb)
    html = out / f"{report}.html"
    html.write_text(html_body)
    return {"markdown": str(md), "html": str(html), "figures": sorted(figures)}


def _status_line(entry: dict[str, Any], params_file: str) -> str:
    head = (f"> Executed by `retrylib workbook run` at {entry['started_at']} "
            f"({entry['seconds']:.0f} s, params `{Path(params_file).name}`): ")
    err = entry["error"]
    if not err:
        return head + "**ran without error**."
    cell = f" in cell [{err['cell']}]" if err.get("cell") is not None else ""
    return (head + f"**FAILED**{cell}: `{err['ename']}: {err['evalue'][:300]}`. "
            "Its checks count as INCOMPLETE in the final summary.")


# -- notebook parameter validation ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """What a notebook parameter must be; made by :func:`between`, :func:`one_of`,
    :func:`of_type`, :func:`list_of` and checked by :func:`check_params`."""

    value: Any
    types: tuple[type, ...] = ()
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    items: Rule | None = None
    min_len: int = 0
    pattern: str | None = None
    optional: bool = False

    def describe(self) -> str:
        """What the rule asks for, in words ("an integer between 1 and 20")."""
        types = [t for t in self.types if not (t is int and float in self.types)]  # "a number"
        kind = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types) or "a value"
        if self.choices is not None:
            kind = "one of " + ", ".join(map(repr, self.choices))
        if self.items is not None:
            kind = f"a list of at least {self.min_len} item(s), each {self.items.describe()}"
        elif self.min_len:
            kind = f"a non-empty {kind.removeprefix('a ')}"
        if self.pattern:
            kind += f" matching {self.pattern!r}"
        if self.lo is not None and self.hi is not None:
            kind += f" between {self.lo} and {self.hi}"
        elif self.lo is not None:
            kind += f" >= {self.lo}"
        return kind + (" (or None)" if self.optional else "")

    def ok(self, v: Any) -> bool:
        """Whether ``v`` keeps the rule."""
        import re

        if v is None:
            return self.optional
        if self.types and (not isinstance(v, self.types)
                           or (isinstance(v, bool) and bool not in self.types)):
            return False  # bool is an int to Python, never to a notebook parameter
        if self.choices is not None and v not in self.choices:
            return False
        if (self.lo is not None and not v >= self.lo) or (self.hi is not None and not v <= self.hi):
            return False
        if self.items is not None:
            return (isinstance(v, list | tuple) and len(v) >= self.min_len
                    and all(self.items.ok(x) for x in v))
        if isinstance(v, str):
            return len(v) >= self.min_len and (not self.pattern or re.match(self.pattern, v) is not None)
        return True


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a bool",
               list: "a list", dict: "a mapping"}


def between(value: Any, lo: float, hi: float | None = None, *, optional: bool = False) -> Rule:
    """``lo <= value <= hi`` (``hi=None``: no upper bound); an integer when both bounds are
    integers, else any number."""
    types = (int,) if isinstance(lo, int) and isinstance(hi, int | None) else (int, float)
    return Rule(value, types=types, lo=lo, hi=hi, optional=optional)


def one_of(value: Any, *choices: Any, optional: bool = False) -> Rule:
    """``value`` is one of ``choices``."""
    return Rule(value, choices=tuple(choices), optional=optional)


def of_type(value: Any, *types: type, optional: bool = False) -> Rule:
    """``value`` is an instance of one of ``types`` (``float`` accepts integers too)."""
    if float in types and int not in types:
        types = (*types, int)
    return Rule(value, types=tuple(types), optional=optional)


def list_of(value: Any, item: Rule, min_len: int = 1) -> Rule:
    """A list of at least ``min_len`` items, each passing ``item`` (build it with
    ``value=None``, e.g. ``list_of(delays, between(None, 0.0, 10.0))``)."""
    return Rule(value, items=item, min_len=min_len)


# The common parameters every notebook takes (notebooks/README.md), with their built-in rules.
COMMON_RULES: dict[str, Rule] = {
    "model": Rule(None, types=(str,), min_len=1),
    "api_base": Rule(None, types=(str,), pattern=r"^https?://", optional=True),
    "chaos_url": Rule(None, types=(str,), pattern=r"^https?://", optional=True),
    "results_dir": Rule(None, types=(str,), min_len=1),
    "runs_dir": Rule(None, types=(str,), min_len=1, optional=True),
    "quick": Rule(None, types=(bool,)),
    "seed": Rule(None, types=(int,), lo=0),
    "local_model": Rule(None, types=(str,), min_len=1, optional=True),
}


def check_params(**params: Any) -> dict[str, Any]:
    """Validate a notebook's parameters; call it in the cell after the ``parameters`` cell.

    Common names (``model``, ``api_base``, ``chaos_url``, ``results_dir``, ``runs_dir``,
    ``quick``, ``seed``, ``local_model``) are checked by built-in rules. A notebook's own knob
    is passed wrapped in a rule::

        check_params(model=model, api_base=api_base, chaos_url=chaos_url,
                     results_dir=results_dir, quick=quick, seed=seed,
                     attempts=between(attempts, 1, 20), rate=between(rate, 0.0, 1.0),
                     route=one_of(route, "direct", "chaos"), n=between(n, 1, optional=True))

    Returns:
        ``{name: value}`` of the checked values.

    Raises:
        ConfigError: the first parameter that breaks its rule, named, with what it must be
            and what it got; also for a bare value whose name has no built-in rule.
    """
    from dataclasses import replace

    checked = {}
    for name, given in params.items():
        if isinstance(given, Rule):
            rule = given
        elif name in COMMON_RULES:
            rule = replace(COMMON_RULES[name], value=given)
        else:
            raise ConfigError(f"check_params: no rule for notebook parameter {name!r}; pass it as "
                              f"between(...), one_of(...), of_type(...) or list_of(...)")
        if not rule.ok(rule.value):
            raise ConfigError(f"notebook parameter {name!r} must be {rule.describe()}, "
                              f"got {rule.value!r} ({type(rule.value).__name__})")
        checked[name] = rule.value
    return checked
