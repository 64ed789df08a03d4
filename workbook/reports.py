"""Reports: an executed notebook composed into a page that leads with its verdict, exported to
markdown (figures beside it) and to a self-contained HTML page.

A notebook's check results are known only at its end, so the top of its report is composed
at export time, from what the run left behind::

    # <the notebook's title>
    > Executed by `python -m workbook run` at ... (status line: how the run went)
    ## Verdict            N of M checks passed, and the checks table (from <task>.results.json)
    <the main figure>     the cell tagged ``main-figure``, or else the notebook's first figure
    ## Run parameters     one row per parameter: value, meaning (its comment), who set it
    ## Method and detail  the notebook itself, code hidden

Cell tags follow nbconvert's and papermill's conventions: ``parameters`` and
``injected-parameters`` cells are left out (their values are the table above), and so are
cells tagged ``verdict`` (the notebook's own closing checks table, which the report shows on
top instead). Every output passes through :class:`workbook.redact.Redactor`: no absolute
path of the machine, no loopback port. The HTML uses the project's nbconvert template
(``workbook/templates/report``): the lab template without its CDN scripts, images embedded.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import tokenize
from pathlib import Path
from typing import Any

from workbook.redact import Redactor, display_path
from workbook.tables import cell, markdown_table

__all__ = ["MAIN_FIGURE_TAG", "TEMPLATES", "VERDICT_TAG", "breakable_cells", "compose_report", "export_reports",
           "fresh_results", "report_title", "run_parameters", "status_line"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAIN_FIGURE_TAG = "main-figure"
VERDICT_TAG = "verdict"
_LEFT_OUT = {"parameters", "injected-parameters", VERDICT_TAG}
# What the runner injects itself; the rest of the injected values come from the params file.
RUNNER_PARAMETERS = {"api_base", "chaos_url", "results_dir", "runs_dir"}
_IMAGE = "image/png"
# The common parameters' meanings (notebooks/README.md); a notebook's own are its comments.
COMMON_MEANINGS = {
    "model": "litellm model string of the model under test",
    "api_base": "its OpenAI base URL (None: the notebook starts the embedded server)",
    "chaos_url": "the fault proxy's URL (None: the notebook starts its own)",
    "results_dir": "where `<task>.results.json` goes",
    "runs_dir": "where the executed notebooks are",
    "quick": "smaller samples, for the test suite",
    "seed": "seed for every random choice",
}


def export_reports(executed: Path, out: Path, report: str, entry: dict[str, Any],
                   record: dict[str, Any]) -> dict[str, Any]:
    """Compose the report of an executed notebook and export it to ``<report>.md`` (figures in
    ``<report>_files/``, each drawn figure once) and a self-contained ``<report>.html``
    (figures as ``data:`` URIs, no external script or style).

    Args:
        executed: the notebook papermill wrote.
        out: the output folder (reports, results files).
        report: the report's file stem.
        entry: the notebook's entry of the run record (status, error, timing, task).
        record: the run record (params file, commit, the model server's URLs, folders).

    Returns:
        ``{"title", "markdown", "html", "figures": [paths], "main_figure": path | None,
        "checks": {"passed", "total"} | None}``.
    """
    import shutil

    from nbconvert import HTMLExporter, MarkdownExporter

    nb, facts = compose_report(executed, entry, record, out)
    files_dir = out / f"{report}_files"
    shutil.rmtree(files_dir, ignore_errors=True)  # figures of an earlier run would linger
    quiet = {"exclude_input": True, "exclude_input_prompt": True, "exclude_output_prompt": True}
    body, res = MarkdownExporter(**quiet).from_notebook_node(
        nb, resources={"output_files_dir": f"{report}_files", "unique_key": report})
    body, written = _write_figures(body, res.get("outputs", {}), out)
    md = out / f"{report}.md"
    md.write_text(body)
    html_body, _ = HTMLExporter(template_name="report", extra_template_basedirs=[str(TEMPLATES)],
                                embed_images=True, **quiet).from_notebook_node(nb)
    html = out / f"{report}.html"
    html.write_text(breakable_cells(html_body))
    main = written[0] if facts["figure"] is not None and written else None
    return {"title": facts["title"], "markdown": str(md), "html": str(html),
            "figures": sorted(written), "main_figure": main, "checks": facts["checks"]}


def compose_report(executed: Path, entry: dict[str, Any], record: dict[str, Any],
                   out: Path) -> tuple[Any, dict[str, Any]]:
    """The report as a notebook: the verdict on top, then the method and the detail.

    Returns:
        ``(notebook, facts)``; facts holds the ``title``, the ``checks`` counts (``None``
        when the run left no fresh results) and the ``figure`` output on top (or ``None``).
    """
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    redactor = Redactor.for_run(record)
    params = run_parameters(nb, redactor)
    title = report_title(nb) or entry.get("stem", executed.stem)
    nb.cells = [c for c in nb.cells if not _left_out(c)]
    redactor.outputs(nb)
    figure, caption = _main_figure(nb)
    results = fresh_results(out / f"{entry['task']}.results.json", entry)

    new = nbformat.v4
    head = [new.new_markdown_cell(f"# {title}"),
            new.new_markdown_cell(status_line(entry, record, redactor)),
            new.new_markdown_cell(verdict(results, entry))]
    if figure is not None:
        head += [new.new_code_cell(outputs=[figure]),
                 new.new_markdown_cell(f"*The main figure, {caption}.*")]
    head.append(new.new_markdown_cell("## Run parameters\n\n" + parameters_table(params)))
    head.append(new.new_markdown_cell("## Method and detail"))
    nb.cells = head + nb.cells
    # papermill's metadata holds the injected values, absolute paths and all: not exported.
    nb.metadata = nbformat.from_dict({k: v for k, v in nb.metadata.items()
                                      if k in ("kernelspec", "language_info")} | {"title": title})
    checks = {"passed": results["passed"], "total": results["total"]} if results else None
    return nb, {"title": title, "checks": checks, "figure": figure}


def report_title(nb: Any) -> str | None:
    """The notebook's title: its first ``# `` heading, which is taken out of its cell (the
    report puts it on top, above the status line)."""
    for c in nb.cells:
        if c.cell_type != "markdown":
            continue
        lines = c.source.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# "):
                c.source = "\n".join(lines[:i] + lines[i + 1:]).strip("\n")
                return line[2:].strip()
            if line.strip():
                break
    return None


def status_line(entry: dict[str, Any], record: dict[str, Any],
                redactor: Redactor | None = None) -> str:
    """How the notebook ran: when, how long, with which params file and commit, and whether
    it ended without error (or where and why it stopped)."""
    redactor = redactor or Redactor.for_run(record)
    commit = record.get("commit") or {}
    sha = commit.get("sha")
    at = f", commit `{sha[:10]}`" + (" with uncommitted changes" if commit.get("dirty") else "") \
        if sha else ""
    head = (f"> Executed by `python -m workbook run` at {entry['started_at']} "
            f"({entry['seconds']:.0f} s, params `{display_path(record.get('params_file'))}`{at}): ")
    err = entry["error"]
    if not err:
        return head + "**ran without error**."
    where = f" in cell [{err['cell']}]" if err.get("cell") is not None else ""
    what = redactor.text(f"{err['ename']}: {err['evalue']}")[:300].replace("`", "'")
    return (head + f"**FAILED**{where}: `{what}`. Its checks count as INCOMPLETE in the final "
            "summary; the error is shown where the notebook stopped.")


def fresh_results(path: Path, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The notebook's results file, when this run wrote it (else ``None``: missing, unreadable
    or older than the run, like the final summary's rule)."""
    try:
        if entry.get("started_ts") is None or path.stat().st_mtime < entry["started_ts"]:
            return None
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def verdict(results: dict[str, Any] | None, entry: dict[str, Any]) -> str:
    """The verdict section: how many checks passed, and the table of them, with evidence."""
    lines = ["## Verdict", ""]
    if results is None:
        why = ("the notebook stopped before its last cell" if entry["status"] == "failed"
               else f"the notebook's status is {entry['status']}")
        lines.append(f"**No checks recorded by this run**: {why}, so no results file was "
                     "written. Every check of this task counts as INCOMPLETE.")
        return "\n".join(lines)
    checks = results.get("checks") or []
    passed, total = sum(c.get("passed") is True for c in checks), len(checks)
    failed = [c["name"] for c in checks if c.get("passed") is not True]
    if "completion" in results:  # the final summary: the workbook's headline first
        overall = next((r for r in results["completion"] if r.get("task") == "ALL"), None)
        if overall:
            lines += [f"**Completion matrix: {overall['complete']} of {overall['total']} "
                      f"checks COMPLETE ({overall['percent']:.1f} %).**", ""]
            rows = [{"task": r["task"], "complete": r["complete"], "total": r["total"],
                     "percent": f"{r['percent']:.1f}"} for r in results["completion"]]
            lines += [_table(rows), ""]
            missing = [r for r in results.get("matrix", []) if r.get("status") != "COMPLETE"]
            if missing:
                lines += ["INCOMPLETE, and why:", ""]
                lines += [f"- `{r['task']}` / {r['check']}: {cell(r.get('failure'), 300)}"
                          for r in missing[:20]]
                lines += [f"- ... and {len(missing) - 20} more (the completion matrix below)"] * (len(missing) > 20)
                lines.append("")
            lines += ["The summary's own checks:", ""]
    sentence = f"**{passed} of {total} checks passed**" + (
        "." if not failed else f"; failed: {'; '.join(failed)}.")
    lines += [sentence, ""]
    rows = [{"section": c.get("section", ""), "check": c.get("name", ""),
             "result": "PASS" if c.get("passed") is True else "**FAIL**",
             "evidence": _evidence(c.get("evidence")), "details": c.get("details") or ""}
            for c in checks]
    if rows:
        lines.append(_table(rows, max_chars=300))
    return "\n".join(lines)


def run_parameters(nb: Any, redactor: Redactor | None = None) -> list[dict[str, Any]]:
    """Every parameter of the run: its value (what the notebook declared, overridden by what
    papermill injected), its meaning (the comment beside it in the ``parameters`` cell) and
    who set it (``the runner``, ``params file`` or ``notebook default``)."""
    redactor = redactor or Redactor()
    injected = (nb.metadata.get("papermill") or {}).get("parameters") or {}
    declared: dict[str, tuple[Any, str]] = {}
    for c in nb.cells:
        if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", []):
            declared = _declared(c.source)
            break
    rows = []
    for name in [*declared, *(n for n in injected if n not in declared)]:
        default, meaning = declared.get(name, (None, ""))
        if name in injected:
            value, source = injected[name], "the runner" if name in RUNNER_PARAMETERS else "params file"
        else:
            value, source = default, "notebook default"
        rows.append({"name": name, "value": _shown(name, value, redactor),
                     "meaning": meaning or COMMON_MEANINGS.get(name, ""), "set by": source})
    return rows


def parameters_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "This notebook takes no parameters."
    return _table([{**r, "name": f"`{r['name']}`"} for r in rows], max_chars=200)


def _declared(source: str) -> dict[str, tuple[Any, str]]:
    """``{name: (literal value, comment)}`` of a parameters cell; a value that is not a
    literal is shown as its source text."""
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    out: dict[str, tuple[Any, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = ast.get_source_segment(source, node.value)
            end = node.end_lineno or node.lineno
            meaning = " ".join(comments[n] for n in range(node.lineno, end + 1) if n in comments)
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = (value, meaning)
    return out


def _shown(name: str, value: Any, redactor: Redactor) -> str:
    """A parameter's value in the table: code, or, for a path or URL of this machine, words."""
    if name == "results_dir" and value is not None:
        return "the output folder"
    if name == "runs_dir" and value is not None:
        return "runs/ in the output folder"
    clean = redactor.value(value)
    if isinstance(value, str):
        return f"`{value}`" if clean == value else clean
    return f"`{clean!r}`"


def _left_out(c: Any) -> bool:
    tags = set(c.get("metadata", {}).get("tags", []))
    if tags & _LEFT_OUT:
        return True
    # papermill's banner on top of a failed notebook; the status line says it, and the
    # anchor it links to (before the failing cell) stays.
    return "papermill-error-cell-tag" in tags and 'href="#papermill-error-cell"' in c.source


def _main_figure(nb: Any) -> tuple[Any, str]:
    """The first image of the cell tagged ``main-figure`` (else the notebook's first image),
    as a display output, and where it comes from (`` of section 2. Backoff``)."""
    import nbformat

    images = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if _IMAGE in o.get("data", {})]
    if not images:
        return None, ""
    tagged = [(i, o) for i, o in images if MAIN_FIGURE_TAG in nb.cells[i].metadata.get("tags", [])]
    i, o = (tagged or images)[0]
    figure = nbformat.v4.new_output("display_data", data={_IMAGE: o["data"][_IMAGE]},
                                    metadata=o.get("metadata", {}))
    for c in reversed(nb.cells[:i]):
        heads = [ln for ln in c.source.splitlines() if ln.startswith("## ")] if c.cell_type == "markdown" else []
        if heads:
            return figure, f"from section “{heads[-1][3:].strip()}” below, where it is explained"
    return figure, "from the detail below"


_CELL = re.compile(r"(<t[hd]\b[^>]*>)(.*?)(</t[hd]>)", re.S)


def breakable_cells(html: str) -> str:
    """Let a table cell break after an underscore (``silent_<wbr>wrong_<wbr>pct``): column
    names and values are identifiers, and a dozen side by side would run off the page."""
    def mark(m: re.Match[str]) -> str:
        out, in_code = [], False
        for part in re.split(r"(<[^>]+>)", m.group(2)):  # text between tags, never an attribute
            if part.startswith("<"):
                in_code = part.startswith("<code") or (in_code and part != "</code>")
                out.append(part)
            else:  # a `name` in code stays whole: it is what a reader would copy
                out.append(part if in_code else part.replace("_", "_<wbr>"))
        return m.group(1) + "".join(out) + m.group(3)

    return _CELL.sub(mark, html)


def _write_figures(body: str, outputs: dict[str, bytes], out: Path) -> tuple[str, list[str]]:
    """Write the markdown's figure files, each distinct image once: the main figure on top is
    the same image as in its section, so both link to one file."""
    seen: dict[str, str] = {}
    written = []
    for rel, data in outputs.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            body = re.sub(rf"\({re.escape(rel)}\)", f"({seen[digest]})", body)
            continue
        seen[digest] = rel
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(str(target))
    return body, written


def _evidence(ev: Any) -> str:
    """A check's evidence on one line, ``key=value; ...``, floats to 4 significant digits."""
    if not isinstance(ev, dict) or not ev:
        return "" if not ev else json.dumps(_rounded(ev), default=str)
    return "; ".join(f"{k}={json.dumps(_rounded(v), default=str)}" for k, v in ev.items())


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, list | tuple):
        return [_rounded(x) for x in v]
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return v


def _table(rows: list[dict[str, Any]], max_chars: int = 160) -> str:
    import pandas as pd

    return markdown_table(pd.DataFrame(rows), max_chars=max_chars)

