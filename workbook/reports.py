"""Reports: an executed notebook exported to markdown (figures beside it) and to HTML.

Code is hidden; outputs, tables, figures and errors stay. A status line on top of each report
says when and how the notebook ran, so a failed run is never mistaken for a good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["export_reports", "status_line"]


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
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(status_line(entry, params_file)))
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


def status_line(entry: dict[str, Any], params_file: str) -> str:
    head = (f"> Executed by `python -m workbook run` at {entry['started_at']} "
            f"({entry['seconds']:.0f} s, params `{Path(params_file).name}`): ")
    err = entry["error"]
    if not err:
        return head + "**ran without error**."
    cell = f" in cell [{err['cell']}]" if err.get("cell") is not None else ""
    return (head + f"**FAILED**{cell}: `{err['ename']}: {err['evalue'][:300]}`. "
            "Its checks count as INCOMPLETE in the final summary.")
