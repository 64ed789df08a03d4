"""The workbook runner: papermill runs the notebooks, nbconvert writes the reports, the
summary accounts for every check. The notebooks run once per session (the ``quick_run`` and
``failed_run`` fixtures of conftest.py, shared with test_reports.py), with params/quick.yaml,
against the embedded model and the fault proxy the runner starts itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from retrylib.errors import ConfigError
from workbook.experiments import summary
from workbook.params import between, check_params, list_of, of_type, one_of
from workbook.runner import NOTEBOOKS, NOTEBOOKS_DIR, load_params, run_workbook, select_notebooks

REPO = Path(__file__).resolve().parent.parent
QUICK = REPO / "params" / "quick.yaml"
PRESENT = [s for s in NOTEBOOKS if (NOTEBOOKS_DIR / f"{s.stem}.ipynb").is_file()]
SUMMARY = NOTEBOOKS[-1]


def notebook(test):
    """Mark a test that executes notebooks: slow, and its first use runs the whole workbook."""
    return pytest.mark.notebook(pytest.mark.timeout(1800)(test))


def _png_outputs(executed: str) -> int:
    nb = nbformat.read(executed, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _output_text(nb) -> str:
    """Everything the notebook's cells printed or displayed, as text, without ANSI colours."""
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts += [o.get("text", ""), *o.get("traceback", []),
                      *(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))]
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))


# -- the quick run ---------------------------------------------------------------------------


@notebook
def test_every_notebook_ran_without_error(quick_run):
    """Every notebook of the workbook exists and ran to its end: exit code 0."""
    bad = {k: (e["status"], e["error"]) for k, e in quick_run.entries.items() if e["status"] != "ok"}
    assert not bad, bad
    assert [e["stem"] for e in quick_run.record["notebooks"]] == [s.stem for s in PRESENT]
    missing = [s.stem for s in NOTEBOOKS if s not in PRESENT]
    assert not missing, f"notebooks not written yet: {missing}"
    assert quick_run.rc == 0


@notebook
def test_results_files_hold_checks_with_evidence(quick_run):
    """Each notebook wrote <task>.results.json: checks with a name, a computed bool `passed`, evidence."""
    problems = {}  # every notebook is inspected: one broken notebook must not hide another
    for spec in PRESENT:
        path = quick_run.out / f"{spec.task}.results.json"
        if not path.is_file():
            problems[spec.stem] = f"wrote no {path.name} ({quick_run.entries[spec.stem]['error']})"
            continue
        data = json.loads(path.read_text())
        bad = [c for c in data["checks"] if not (c["name"] and isinstance(c["passed"], bool)
                                                 and isinstance(c["evidence"], dict))]
        if data["task"] != spec.task or not data["checks"] or bad:
            problems[spec.stem] = f"task {data['task']!r}, {len(data['checks'])} checks, malformed: {bad[:2]}"
        elif data["passed"] != sum(c["passed"] for c in data["checks"]):
            problems[spec.stem] = "its `passed` count disagrees with its checks"
    assert not problems, problems


@notebook
def test_markdown_reports_hide_code_and_keep_figures(quick_run):
    """Each <report>.md opens with its title and run status, shows no code, and links one PNG per figure."""
    problems: dict[str, list[str]] = {}
    for spec in PRESENT:
        entry, p = quick_run.entries[spec.stem], problems.setdefault(spec.stem, [])
        md = (quick_run.out / f"{spec.report}.md").read_text()
        head = [ln for ln in md.splitlines() if ln.strip()][:2]
        if not (head[0].startswith("# ") and head[1].startswith("> Executed by `python -m workbook run`")):
            p.append(f"no title and status line on top: {head}")
        if "# Parameters" in md:
            p.append("the injected-parameters cell leaked into the report")
        nb = nbformat.read(entry["executed"], as_version=4)
        code = [ln for c in nb.cells if c.cell_type == "code" for ln in c.source.splitlines()
                if len(ln.strip()) > 25 and not ln.lstrip().startswith("#")]
        shown = _output_text(nb)  # tracebacks and warnings quote source lines legitimately
        p += [f"code in the report: {ln}" for ln in code if ln in md and ln not in shown][:3]
        pngs = sorted((quick_run.out / f"{spec.report}_files").glob("*.png"))
        if len(pngs) != _png_outputs(entry["executed"]):
            p.append(f"{len(pngs)} PNG files for {_png_outputs(entry['executed'])} figures")
        p += [f"{png.name} empty or not linked" for png in pngs
              if png.stat().st_size < 1000 or f"{spec.report}_files/{png.name}" not in md]
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, problems


@notebook
def test_html_reports_embed_their_images(quick_run):
    """Each <report>.html is self-contained: its figures are data: URIs, not file links."""
    plotted = 0
    for spec in PRESENT:
        html = (quick_run.out / f"{spec.report}.html").read_text()
        n = _png_outputs(quick_run.entries[spec.stem]["executed"])
        assert html.count("data:image/png;base64") >= n, spec.stem
        assert f"{spec.report}_files/" not in html
        plotted += n
    assert plotted >= 1, "no notebook drew a figure"


@notebook
def test_summary_matrix_matches_the_results_files(quick_run):
    """The summary's completion percentage equals a recount of the results files."""
    data = json.loads((quick_run.out / "final_summary.results.json").read_text())
    complete = total = 0
    for spec in summary.TASKS:
        path = quick_run.out / f"{spec.task}.results.json"
        entry = quick_run.entries.get(spec.stem)
        checks = json.loads(path.read_text())["checks"] if path.is_file() else []
        fresh = entry and entry["status"] == "ok" and path.stat().st_mtime >= entry["started_ts"]
        complete += sum(c["passed"] for c in checks) if fresh else 0
        total += max(len(checks), 1)
    overall = next(r for r in data["completion"] if r["task"] == "ALL")
    assert (overall["complete"], overall["total"]) == (complete, total)
    assert overall["percent"] == pytest.approx(round(100 * complete / total, 1))
    assert len(data["matrix"]) == total
    md = (quick_run.out / f"{SUMMARY.report}.md").read_text()
    assert "| task | sub-task | check | status | evidence | failure |" in md
    assert f"| ALL | {complete} | {total} |" in md


# -- a notebook that fails ------------------------------------------------------------------


@notebook
def test_failed_notebook_is_reported_and_the_run_goes_on(failed_run):
    """A bad parameter fails 01 with a ConfigError naming it; the summary still runs; exit 1."""
    nb01, nb05 = failed_run.entries["01_core_retry"], failed_run.entries["05_final_summary"]
    assert failed_run.rc == 1
    assert nb01["status"] == "failed" and nb01["error"]["ename"] == "ConfigError"
    assert "'seed'" in nb01["error"]["evalue"]
    assert nb05["status"] == "ok", nb05["error"]
    md = (failed_run.out / "task_001_task_1_core_retry.md").read_text()
    status = [ln for ln in md.splitlines() if ln.strip()][1]  # the line under the title
    assert "**FAILED**" in status and "ConfigError: notebook parameter 'seed'" in status
    assert "No checks recorded by this run" in md
    assert (failed_run.out / "task_001_task_1_core_retry.html").is_file()


@notebook
def test_summary_shows_the_failed_notebook_as_incomplete(failed_run):
    """The failed task's rows are INCOMPLETE, the error as reason; the summary's fresh-results check fails."""
    data = json.loads((failed_run.out / "final_summary.results.json").read_text())
    rows = [r for r in data["matrix"] if r["task"] == "core_retry"]
    assert rows and all(r["status"] == "INCOMPLETE" for r in rows)
    assert all("ConfigError" in r["failure"] for r in rows)
    checks = {c["name"]: c["passed"] for c in data["checks"]}
    assert checks["every task has a fresh results file from a clean run"] is False
    assert checks["the matrix rows are computed from the results files"] is True
    md = (failed_run.out / f"{SUMMARY.report}.md").read_text()
    assert "| core_retry |" in md and "INCOMPLETE" in md


def test_missing_notebook_is_reported_not_raised(tmp_path):
    """A notebook file that does not exist is recorded as missing; exit code 1, no crash."""
    run = run_workbook(params=QUICK, only=["02"], output_dir=tmp_path / "r",
                       notebooks_dir=tmp_path / "empty")
    record = json.loads((tmp_path / "r" / "workbook_run.json").read_text())
    assert run == 1 and record["notebooks"][0]["status"] == "missing"
    assert record["server"] is None, "a server was started for nothing"


# -- params validation -----------------------------------------------------------------------


def _params(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_params_files_in_the_repo_are_valid():
    """default.yaml and quick.yaml load; quick is on only in quick.yaml."""
    assert load_params(REPO / "params" / "default.yaml").common.quick is False
    assert load_params(QUICK).common.quick is True


@pytest.mark.parametrize(("text", "named"), [
    ("common: {seed: seven}\n", "common.seed"),
    ("common: {quick: 'yes'}\n", "common.quick"),
    ("common: {local_model: llama}\n", "common.local_model"),
    ("common: {cell_timeout: -1}\n", "common.cell_timeout"),
    ("common: {modle: x}\n", "common.modle"),
    ("commons: {}\n", "commons"),
    ("notebooks: {07_nope: {}}\n", "notebooks.07_nope"),
    ("notebooks: {01_core_retry: [1]}\n", "notebooks.01_core_retry"),
    ("- a list\n", "mapping"),
])
def test_bad_params_file_names_the_key(tmp_path, text, named):
    """A wrong type or unknown key is a ConfigError that names the key."""
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_params(_params(tmp_path, text))


def test_missing_params_file(tmp_path):
    """A params file that does not exist is a ConfigError, raised before anything starts."""
    with pytest.raises(ConfigError, match="does not exist"):
        run_workbook(params=tmp_path / "nope.yaml", output_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_undeclared_notebook_parameter_is_refused(tmp_path):
    """A per-notebook key the notebook does not declare (a typo) stops the run up front."""
    p = _params(tmp_path, "notebooks: {05_final_summary: {sede: 3}}\n")
    with pytest.raises(ConfigError, match=r"05_final_summary\.sede"):
        run_workbook(params=p, only=["05"], output_dir=tmp_path / "r")


def test_only_selects_by_number_and_refuses_unknown():
    """`only` picks notebooks by number in run order; an unknown number lists the valid ones."""
    assert [s.stem for s in select_notebooks(["05", "1"])] == ["01_core_retry", "05_final_summary"]
    assert select_notebooks(None)[-1].stem == "05_final_summary"
    with pytest.raises(ConfigError, match=r"09.*valid: 01, 02, 03, 04, 05, 06, 07, 08"):
        select_notebooks(["01", "09"])


def test_check_params_accepts_good_values():
    """Common names use built-in rules; own knobs pass through their rule."""
    got = check_params(model="openai/smollm2", api_base=None, chaos_url="http://127.0.0.1:1/v1",
                       results_dir="r", quick=True, seed=0, n=between(3, 1, 10),
                       rate=between(1, 0.0, 1.0), route=one_of("chaos", "direct", "chaos"),
                       delays=list_of([0.1, 2], between(None, 0.0, 5.0)), name=of_type("x", str))
    assert got["n"] == 3 and got["delays"] == [0.1, 2] and got["rate"] == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seed": -1}, "'seed' must be an integer >= 0, got -1"),
    ({"seed": True}, "'seed' must be an integer"),
    ({"quick": "yes"}, "'quick' must be a bool"),
    ({"model": ""}, "'model' must be a non-empty string"),
    ({"api_base": "127.0.0.1:8080"}, "'api_base' must be a string matching"),
    ({"n": between(0, 1, 10)}, "'n' must be an integer between 1 and 10, got 0"),
    ({"n": between(2.5, 1, 10)}, "'n' must be an integer between 1 and 10, got 2.5"),
    ({"r": one_of("x", "a", "b")}, "'r' must be one of 'a', 'b'"),
    ({"d": list_of([], between(None, 0.0, 1.0))}, "'d' must be a list of at least 1"),
    ({"unknown": 3}, "no rule for notebook parameter 'unknown'"),
])
def test_check_params_names_the_bad_parameter(kwargs, message):
    """A value that breaks its rule is a ConfigError naming the parameter and the value."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_params(**kwargs)


def test_tool_stage_rows_say_what_ran_and_whether_a_later_request_carried_it():
    """Notebook 02's tool-stage table: one row per tool call, ``ran`` only for a call that
    parsed and took time, and ``result_in_next_request`` only when a later request body holds
    the result in a ``Tool results:`` user message (the prompt's own words do not count)."""
    from retrylib.result import Attempt
    from workbook.experiments.tool_stage import attempt_rows, result_sent

    call = {"round": 1, "name": "run_python", "arguments": {"code": "print(1/0)"}, "raw_arguments": "",
            "text": "ZeroDivisionError: division by zero\n", "is_error": True, "duration": 0.05}
    unparsed = {**call, "arguments": None, "raw_arguments": "{bad", "text": "not run", "duration": 0.0}
    attempts = [Attempt(1, 0.0, 1.0, "validation_failed", validation_errors=("wrong",)),
                Attempt(2, 1.0, 2.0, "ok", stage="tool", tool_calls=(call, unparsed))]
    asked = {"messages": [{"role": "user", "content": "ZeroDivisionError: division by zero"}]}
    answered = {"messages": [{"role": "user", "content": "Tool results:\n\n[1] run_python -> ERROR:\n"
                              "```\nZeroDivisionError: division by zero\n```"}]}
    assert not result_sent(call["text"], [{"body": asked}])
    assert result_sent(call["text"], [{"body": asked}, {"body": answered}])
    rows = attempt_rows(attempts, [{"body": asked}, {"body": answered}], "t")
    assert rows.attempt.tolist() == [1, 2, 2] and rows.stage.tolist() == ["normal", "tool", "tool"]
    assert rows.ran.tolist() == [False, True, False] and rows.passed.tolist() == [False, True, True]
    assert rows.result_in_next_request.tolist() == [None, True, False]
