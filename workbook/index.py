"""The index of a workbook run: the page a reader opens first.

``<output_dir>/index.html`` (self-contained: thumbnails embedded) and ``<output_dir>/README.md``
(what GitHub shows when the reports folder is opened; thumbnails in ``index_files/``) say
what ran (commit, params file, date, machine, model), the completion headline, and one row per
report: its status, checks passed/total, run time, a thumbnail of its main figure, and links
to both formats. The runner writes it after every notebook and at the end, like
``workbook_run.json``, so a run that failed or stopped halfway still has an index that says so.
"""

from __future__ import annotations

import base64
import os
import platform
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from workbook.redact import REPO, display_path
from workbook.tables import markdown_table

__all__ = ["INDEX_HTML", "INDEX_MD", "THUMBS", "index_rows", "run_facts", "write_index"]

INDEX_HTML, INDEX_MD, THUMBS = "index.html", "README.md", "index_files"
THUMB_SIZE = (360, 220)
_STATUS = {"ok": "ok", "failed": "FAILED", "missing": "notebook missing",
           "pending": "not run yet", "not run": "not run"}


def run_facts(repo: Path = REPO) -> dict[str, Any]:
    """The commit of the checkout (and whether it has uncommitted changes) and the machine's
    facts: cores, CPU, memory, OS, Python. No host name, no paths."""
    import psutil

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": {"sha": sha, "dirty": bool(dirty)} if sha else None,
            "machine": {"cpus": os.cpu_count(), "cpu": _cpu_name(),
                        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                        "os": platform.platform(terse=True), "python": platform.python_version()}}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def index_rows(out: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per notebook of the run, in run order: those that ran, then those still to run."""
    from workbook.reports import fresh_results

    entries = {e["stem"]: e for e in record.get("notebooks", [])}
    running = record.get("ended_at") is None
    rows = []
    for spec in record.get("selected") or [{k: e[k] for k in ("number", "stem", "task", "report")}
                                          for e in entries.values()]:
        e = entries.get(spec["stem"])
        status = e["status"] if e else ("pending" if running else "not run")
        results = fresh_results(out / f"{spec['task']}.results.json", e) if e else None
        reports = (e or {}).get("reports") or {}
        checks = results.get("checks") if results else None
        html, md = out / f"{spec['report']}.html", out / f"{spec['report']}.md"
        rows.append({
            **spec, "status": status, "status_text": _STATUS.get(status, status),
            "title": reports.get("title") or spec["stem"],
            "error": (f"{e['error']['ename']}" if e and e.get("error") else None),
            "passed": sum(c.get("passed") is True for c in checks) if checks is not None else None,
            "total": len(checks) if checks is not None else None,
            "seconds": e["seconds"] if e else None,
            "html": html.name if e and html.is_file() else None,
            "md": md.name if e and md.is_file() else None,
            "figure": reports.get("main_figure"),
        })
    return rows


def write_index(out: Path, record: dict[str, Any]) -> dict[str, str]:
    """Write ``index.html``, ``README.md`` and their thumbnails into ``out``.

    Returns:
        ``{"html": path, "markdown": path}``.
    """
    out = Path(out)
    rows = index_rows(out, record)
    thumbs = out / THUMBS
    thumbs.mkdir(exist_ok=True)
    for old in thumbs.glob("*.png"):  # a report of an earlier run must not keep its picture
        old.unlink()
    for r in rows:
        r["thumb"] = _thumbnail(Path(r["figure"]), thumbs / f"{r['report']}.png") if r["figure"] else None
        r["thumb_data"] = (base64.b64encode(Path(r["thumb"]).read_bytes()).decode()
                           if r["thumb"] else None)
    facts = _facts(record)
    headline = _headline(out, record)
    md = out / INDEX_MD
    md.write_text(_markdown(facts, headline, rows))
    html = out / INDEX_HTML
    html.write_text(_html(facts, headline, rows))
    return {"html": str(html), "markdown": str(md)}


def _thumbnail(src: Path, dst: Path) -> str | None:
    from PIL import Image

    if not src.is_file():
        return None
    with Image.open(src) as im:
        im.thumbnail(THUMB_SIZE)
        im.save(dst, optimize=True)
    return str(dst)


def _facts(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's facts as (label, text), in the order a reader asks for them."""
    commit = record.get("commit") or {}
    machine = record.get("machine") or {}
    common = record.get("common") or {}
    server = record.get("server") or {}
    started = record.get("started_at")
    date = datetime.fromisoformat(started).strftime("%Y-%m-%d %H:%M UTC") if started else "?"
    sha = commit.get("sha")
    model = common.get("model", "?") + (
        f" (the embedded {server['model']} model, llama.cpp)" if server.get("model") else "")
    took = f"{record['seconds']:.0f} s" if record.get("seconds") is not None else "still running"
    return [
        ("run", f"{date}, {took}"),
        ("commit", (sha[:10] + (" with uncommitted changes" if commit.get("dirty") else ""))
         if sha else "unknown (not a git checkout)"),
        ("params", f"{display_path(record.get('params_file'))}"
         + (" (quick: reduced samples)" if common.get("quick") else "")),
        ("model", model),
        ("machine", f"{machine.get('cpus', '?')} cores ({machine.get('cpu', '?')}), "
                    f"{machine.get('memory_gib', '?')} GiB, {machine.get('os', '?')}, "
                    f"Python {machine.get('python', '?')}"),
    ]


def _headline(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The completion matrix's ALL row, computed as the final summary computes it."""
    from workbook.experiments import summary

    runs_dir = record.get("runs_dir") or out / "runs"
    per = summary.completion(summary.completion_matrix(out, runs_dir))
    overall = per[per["task"] == "ALL"].iloc[0]
    done = record.get("notebooks", [])
    selected = record.get("selected") or done
    return {"complete": int(overall["complete"]), "total": int(overall["total"]),
            "percent": float(overall["percent"]),
            "clean": sum(e["status"] == "ok" for e in done), "ran": len(done),
            "selected": len(selected), "running": record.get("ended_at") is None,
            "stopped": record.get("server_died")}


def _run_sentence(h: dict[str, Any]) -> str:
    s = f"{h['clean']} of {h['selected']} notebooks ran without error"
    if h["running"]:
        s += f" (run in progress: {h['ran']} of {h['selected']} done)"
    if h["stopped"]:
        s += "; the run stopped early: the model server died"
    return s + "."


def _checks(r: dict[str, Any]) -> str:
    return f"{r['passed']}/{r['total']}" if r["total"] is not None else "no results"


def _time(r: dict[str, Any]) -> str:
    return f"{r['seconds']:.0f} s" if r["seconds"] is not None else ""


def _markdown(facts: list[tuple[str, str]], h: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    lines = ["# retrylib verification workbook", "",
             f"**Completion matrix: {h['complete']} of {h['total']} checks COMPLETE "
             f"({h['percent']:.1f} %).** {_run_sentence(h)}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts] + [""]
    table = []
    for r in rows:
        title = f"[{r['title']}]({r['md']})" if r["md"] else r["title"]
        links = " · ".join(f"[{k}]({v})" for k, v in (("HTML", r["html"]), ("Markdown", r["md"])) if v)
        status = r["status_text"] + (f" ({r['error']})" if r["error"] else "")
        thumb = f"[![main figure of {r['number']}]({THUMBS}/{Path(r['thumb']).name})]({r['md']})" \
            if r["thumb"] and r["md"] else ""
        table.append({"#": r["number"], "report": title, "status": status, "checks passed": _checks(r),
                      "run time": _time(r), "main figure": thumb, "formats": links})
    lines += [markdown_table(pd.DataFrame(table), max_chars=1000), ""]
    lines += ["Each report opens with its verdict: the run's status, its checks with their "
              "evidence, and its main figure; the method and the measurements follow. "
              "`workbook_run.json` is the run's record; `<task>.results.json` holds each "
              "notebook's checks.", ""]
    return "\n".join(lines)


def _html(facts: list[tuple[str, str]], h: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, keep_trailing_newline=True)
    return env.get_template("index.html.j2").render(
        facts=facts, h=h, run_sentence=_run_sentence(h), checks=_checks, time=_time,
        rows=rows)
