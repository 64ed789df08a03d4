"""The reports as a reader gets them: an index first, each report leading with its verdict,
self-contained HTML that opens offline in a real browser, nothing of the machine in them.

The browser is Debian's Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it), driven by
Playwright's Python package with that system browser: no browser is ever downloaded. The
pages are those of the session's workbook runs (``quick_run`` and ``failed_run`` in
conftest.py): the suite runs the workbook once. A test near the end checks the committed
``reports/`` the same way; it passes once ``make workbook`` has regenerated them.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import pytest

from workbook.index import INDEX_HTML, INDEX_MD, THUMBS
from workbook.redact import Redactor, display_path
from workbook.reports import export_reports
from workbook.runner import NOTEBOOKS, NOTEBOOKS_DIR, declared_parameters

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "reports"
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections are refused on a closed
# network and show up as console errors that no page caused.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")
LOOPBACK_PORT = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\]|0\.0\.0\.0):\d+")
INDEX_TITLE = "retrylib verification workbook"

# What the page says about itself, measured in the browser after the load event.
FACTS_JS = """() => {
  const W = document.documentElement.clientWidth;
  const clean = (el) => el ? el.textContent.replace(/\\u00b6/g, '').trim() : null;
  const tables = [...document.querySelectorAll('table')].map((t, i) => {
    const r = t.getBoundingClientRect();
    return {i, left: r.left, right: r.right, head: clean(t.querySelector('th'))};
  });
  const h2 = (text) => [...document.querySelectorAll('h2')].find(h => clean(h).startsWith(text));
  const before = (a, b) => !!(a && b && (a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING));
  const img = document.images[0];
  const verdict = h2('Verdict'), method = h2('Method and detail');
  return {
    width: W, scrollWidth: document.documentElement.scrollWidth,
    h1: clean(document.querySelector('h1')),
    images: [...document.images].map(i => ({src: i.currentSrc.slice(0, 40), width: i.naturalWidth})),
    overflowing: tables.filter(t => t.right > W + 0.5 || t.left < -0.5),
    tables: tables.length,
    verdict_first: verdict ? before(verdict, method) && (!img || (before(verdict, img) && before(img, method))) : null,
    prompts: (document.body.innerText.match(/(In|Out)\\s*\\[\\d*\\]:/g) || []).length,
  };
}"""


def notebook(test):
    """Mark a test that reads a workbook run: slow, and its first use runs the workbook."""
    return pytest.mark.notebook(pytest.mark.timeout(1800)(test))


def _pages(out: Path) -> list[Path]:
    return [out / INDEX_HTML, *sorted(p for p in out.glob("*.html") if p.name != INDEX_HTML)]


def _browse(pages: list[Path], shots: Path) -> dict[str, dict[str, Any]]:
    """Open each page in headless Chromium, offline; return what it did and looked like."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    seen: dict[str, dict[str, Any]] = {}
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM),
                                                    args=FLAGS, headless=True, viewport=VIEWPORT)
        try:
            # Anything not file: or data: is recorded (below) and refused: no test reaches out.
            ctx.route(lambda url: not url.startswith(("file:", "data:")), lambda route: route.abort())
            for path in pages:
                page = ctx.new_page()
                got: dict[str, Any] = {"requests": [], "console": []}
                _listen(page, got)
                page.goto(path.as_uri(), wait_until="load")
                got |= page.evaluate(FACTS_JS)
                got["title"] = page.title()
                got["screenshot"] = shots / f"{path.stem}.png"
                page.screenshot(path=str(got["screenshot"]))  # the first screen a reader sees
                page.screenshot(path=str(shots / f"{path.stem}.full.png"), full_page=True)
                page.close()
                seen[path.name] = got
        finally:
            ctx.close()
    return seen


def _listen(page: Any, got: dict[str, Any]) -> None:
    """Record every request the page makes, and every console error or uncaught exception."""
    def console(msg: Any) -> None:
        if msg.type == "error":
            got["console"].append(f"console error: {msg.text}")

    page.on("request", lambda r: got["requests"].append(r.url))
    page.on("console", console)
    page.on("pageerror", lambda e: got["console"].append(f"uncaught: {e}"))


@pytest.fixture(scope="module", params=["quick_run", "failed_run"])
def browsed(request, tmp_path_factory):
    """Every HTML page of a workbook run (index and reports) opened in Chromium; screenshots in tmp."""
    run = request.getfixturevalue(request.param)
    shots = tmp_path_factory.mktemp(f"screenshots_{request.param}")
    pages = _browse(_pages(run.out), shots)
    print(f"\n{request.param}: {len(pages)} pages, screenshots in {shots}")
    for name, p in pages.items():
        print(f"  {name}: {len(p['images'])} images ({sum(i['width'] == 0 for i in p['images'])} "
              f"broken), {len(p['console'])} console errors, "
              f"{sum(not u.startswith(('file:', 'data:')) for u in p['requests'])} external "
              f"requests, {p['tables']} tables ({len(p['overflowing'])} too wide)")
    return run, pages, shots


# -- in the browser ------------------------------------------------------------------------


@notebook
def test_every_report_and_the_index_open_with_their_own_title(browsed):
    """Chromium opens the index and every report, each titled with its own heading; screenshots saved."""
    run, pages, _ = browsed
    reports = {e["report"]: e for e in run.record["notebooks"] if e["reports"]}
    assert set(pages) == {INDEX_HTML, *(f"{r}.html" for r in reports)}
    assert pages[INDEX_HTML]["title"] == INDEX_TITLE
    for report, entry in reports.items():
        page = pages[f"{report}.html"]
        assert page["title"] == entry["reports"]["title"] == page["h1"] != "Notebook", report
    for name, page in pages.items():
        png = page["screenshot"].read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">I", png[16:20])[0] == VIEWPORT["width"], name


@notebook
def test_every_image_loads(browsed):
    """No image is broken (naturalWidth 0); the index has one thumbnail per report with a figure."""
    run, pages, _ = browsed
    broken = {n: [i["src"] for i in p["images"] if i["width"] == 0] for n, p in pages.items()}
    assert not {n: b for n, b in broken.items() if b}, broken
    with_figure = [e for e in run.record["notebooks"] if (e["reports"] or {}).get("main_figure")]
    assert len(pages[INDEX_HTML]["images"]) == len(with_figure)
    for e in with_figure:  # the main figure on top, and the same one in its section
        assert len(pages[f"{e['report']}.html"]["images"]) >= 2, e["report"]


@notebook
def test_no_console_errors(browsed):
    """No page logs an error to the console or throws."""
    _, pages, _ = browsed
    errors = {n: p["console"] for n, p in pages.items() if p["console"]}
    assert not errors, errors


@notebook
def test_no_request_leaves_the_file(browsed):
    """Every request a page makes is file: or data:, so no CDN script, style, font or image."""
    _, pages, _ = browsed
    external = {n: [u for u in p["requests"] if not u.startswith(("file:", "data:"))]
                for n, p in pages.items()}
    assert not {n: u for n, u in external.items() if u}, external


@notebook
def test_no_table_overflows_the_page(browsed):
    """At 1280 px every table fits the page width and nothing makes the page scroll sideways."""
    _, pages, _ = browsed
    wide = {n: p["overflowing"] for n, p in pages.items() if p["overflowing"]}
    assert not wide, wide
    sideways = {n: (p["scrollWidth"], p["width"]) for n, p in pages.items() if p["scrollWidth"] > p["width"]}
    assert not sideways, sideways


@notebook
def test_reports_lead_with_their_verdict(browsed):
    """Each report shows its Verdict, then its main figure, then the method; no In/Out prompts."""
    run, pages, _ = browsed
    for e in run.record["notebooks"]:
        if e["reports"]:
            page = pages[f"{e['report']}.html"]
            assert page["verdict_first"] is True, e["report"]
            assert page["prompts"] == 0, e["report"]


# -- the files ------------------------------------------------------------------------------


def _leaks(folder: Path, names: list[str]) -> dict[str, list[str]]:
    """Where the reports (.md and .html, the index included) name a path of the machine, the
    temporary folder or a loopback port. ``data:`` URIs are skipped: base64 is not text."""
    tmp = re.compile(rf"(?<![\w.]){re.escape(str(Path(tempfile.gettempdir()).resolve()))}(?![\w-])")
    hits: dict[str, list[str]] = {}
    files = sorted([*folder.glob("*.md"), *folder.glob("*.html")])
    assert files, f"no reports in {folder}"
    for path in files:
        text = DATA_URI.sub("data:...", path.read_text(errors="replace"))
        found = [m.start() for n in names if n for m in re.finditer(re.escape(n), text)]
        found += [m.start() for pattern in (tmp, LOOPBACK_PORT) for m in pattern.finditer(text)]
        if found:
            hits[path.name] = [text[max(i - 60, 0): i + 80].replace("\n", " ") for i in sorted(found)[:5]]
    return hits


@pytest.mark.parametrize("which", ["quick_run", "failed_run"])
@notebook
def test_reports_name_nothing_of_the_machine(request, which, tmp_path_factory):
    """No report names the checkout's path, the tmp folder, the run's tmp paths or 127.0.0.1:<port>."""
    run = request.getfixturevalue(which)
    names = [str(REPO), str(run.out), str(run.out.parent), str(tmp_path_factory.getbasetemp()),
             run.record.get("api_base"), run.record.get("chaos_url")]
    hits = _leaks(run.out, names)
    assert not hits, json.dumps(hits, indent=1)
    md = (run.out / f"{run.record['notebooks'][0]['report']}.md").read_text()
    assert "the model server" in md and "the fault proxy" in md


@pytest.mark.committed_reports
def test_committed_reports_name_nothing_of_the_machine():
    """COMMITTED reports/ name nothing of the machine (passes once `make workbook` regenerated them)."""
    names = [str(REPO)]
    run_file = COMMITTED / "workbook_run.json"
    if run_file.is_file():  # where they were generated, which may not be this checkout
        record = json.loads(run_file.read_text())
        names += [record.get("output_dir"), record.get("runs_dir"), record.get("notebooks_dir"),
                  str(Path(record.get("output_dir") or "/nonexistent").parent),
                  record.get("api_base"), record.get("chaos_url")]
    names = [n for n in names if n and n not in ("/", ".")]
    hits = _leaks(COMMITTED, names)
    assert not hits, json.dumps(hits, indent=1)
    assert (COMMITTED / INDEX_HTML).is_file() and (COMMITTED / INDEX_MD).is_file(), \
        "reports/ has no index: regenerate it with `make workbook`"


@notebook
def test_index_lists_every_report_with_its_facts(quick_run):
    """The index names the run, the completion headline, and per report status, checks, time, links."""
    out, record = quick_run.out, quick_run.record
    md, html = (out / INDEX_MD).read_text(), (out / INDEX_HTML).read_text()
    overall = next(r for r in json.loads((out / "final_summary.results.json").read_text())["completion"]
                   if r["task"] == "ALL")
    headline = f"Completion matrix: {overall['complete']} of {overall['total']} checks COMPLETE"
    facts = [record["commit"]["sha"][:10], "params/quick.yaml", record["started_at"][:10],
             f"{os.cpu_count()} cores", record["common"]["model"]]
    for text in (md, html):
        assert headline in text
        assert all(f in text for f in facts), [f for f in facts if f not in text]
    for e in record["notebooks"]:
        results = json.loads((out / f"{e['task']}.results.json").read_text())
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| {e['number']} |"))
        assert f"| ok | {results['passed']}/{results['total']} | {e['seconds']:.0f} s |" in row, row
        for link in (f"{e['report']}.html", f"{e['report']}.md", f"{THUMBS}/{e['report']}.png"):
            assert f"({link})" in row and (out / link).is_file(), (e["report"], link)
        assert f'href="{e["report"]}.html"' in html and f'href="{e["report"]}.md"' in html


@notebook
def test_failed_run_has_an_index_that_says_so(failed_run):
    """After a notebook failed, the index is still written and its row says FAILED and why."""
    md = (failed_run.out / INDEX_MD).read_text()
    row01 = next(ln for ln in md.splitlines() if ln.startswith("| 01 |"))
    row05 = next(ln for ln in md.splitlines() if ln.startswith("| 05 |"))
    assert "FAILED (ConfigError)" in row01 and "no results" in row01
    assert "| ok |" in row05 and "(task_001_final_summary.html)" in row05
    assert "1 of 2 notebooks ran without error" in md
    assert "FAILED (ConfigError)" in (failed_run.out / INDEX_HTML).read_text()


@notebook
def test_parameters_are_a_table_not_a_repr(quick_run):
    """Each report lists every declared parameter in its Run parameters table; no dict repr."""
    for spec in NOTEBOOKS:
        md = (quick_run.out / f"{spec.report}.md").read_text()
        table = md.split("## Run parameters", 1)[1].split("\n## ", 1)[0]
        for name in declared_parameters(NOTEBOOKS_DIR / f"{spec.stem}.ipynb"):
            assert f"| `{name}` |" in table, (spec.stem, name)
        assert "| `results_dir` | the output folder |" in table
        assert not re.search(r"\{'(model|api_base|results_dir)':", md), spec.stem


# -- the export on its own (no workbook run) -------------------------------------------------


def _executed_notebook(path: Path) -> None:
    """A small executed notebook as papermill leaves it: parameters, injected parameters with
    the run's URLs and folders, a figure, a debug print of a path, a verdict cell."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    v4 = nbformat.v4
    out = path.parent
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# 99 A tiny task: one figure\n\nWhat is verified, and why."),
        v4.new_code_cell('seed = 7\nsize = 3  # calls per run', metadata={"tags": ["parameters"]}),
        v4.new_code_cell(f'# Parameters\napi_base = "http://127.0.0.1:41234/v1"\nresults_dir = "{out}"\nsize = 5\n',
                         metadata={"tags": ["injected-parameters"]}),
        v4.new_markdown_cell("## 1. The figure"),
        v4.new_code_cell("plot()", outputs=[v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})],
                         metadata={"tags": ["main-figure"]}),
        v4.new_code_cell("print(path)", outputs=[v4.new_output("stream", name="stdout",
                         text=f"results in {out}/tiny.results.json via http://127.0.0.1:41234/v1, scratch in {tempfile.gettempdir()}/xyz\n")]),
        v4.new_code_cell("display(checks.frame())", metadata={"tags": ["verdict"]},
                         outputs=[v4.new_output("stream", name="stdout", text="THE OLD CHECKS TABLE\n")]),
    ])
    nb.metadata["papermill"] = {"parameters": {"api_base": "http://127.0.0.1:41234/v1", "results_dir": str(out), "size": 5}}
    nbformat.write(nb, path)


def test_export_composes_a_verdict_first_self_contained_report(tmp_path):
    """Without a run: the export leads with title, status, checks and figure, and leaks nothing."""
    executed = tmp_path / "99_tiny.ipynb"
    _executed_notebook(executed)
    (tmp_path / "tiny.results.json").write_text(json.dumps({"task": "tiny", "passed": 1, "total": 2, "checks": [
        {"name": "it holds", "passed": True, "evidence": {"x": 0.123456789}, "section": "one"},
        {"name": "it breaks", "passed": False, "evidence": {"y": 2}, "details": "y was 2", "section": "one"}]}))
    entry = {"number": "99", "stem": "99_tiny", "task": "tiny", "report": "tiny", "status": "ok",
             "error": None, "seconds": 1.2, "started_at": "2026-01-01T00:00:00+00:00", "started_ts": 0.0}
    record = {"params_file": str(REPO / "params" / "quick.yaml"), "api_base": "http://127.0.0.1:41234/v1",
              "chaos_url": None, "output_dir": str(tmp_path), "runs_dir": str(tmp_path / "runs"),
              "commit": {"sha": "0123456789abcdef", "dirty": False}}
    got = export_reports(executed, tmp_path, "tiny", entry, record)
    md, html = Path(got["markdown"]).read_text(), Path(got["html"]).read_text()
    lines = [ln for ln in md.splitlines() if ln.strip()]
    assert lines[0] == "# 99 A tiny task: one figure" and got["title"] == "99 A tiny task: one figure"
    assert lines[1].startswith("> Executed by `python -m workbook run`") and "`params/quick.yaml`" in lines[1]
    assert lines[2] == "## Verdict" and lines[3] == "**1 of 2 checks passed**; failed: it breaks."
    assert "| one | it breaks | **FAIL** | y=2 | y was 2 |" in md and "x=0.1235" in md
    assert md.index("## Verdict") < md.index("![png]") < md.index("## Run parameters") < md.index("## Method and detail")
    assert "| `size` | `5` | calls per run | params file |" in md
    assert "| `api_base` | the model server |" in md and "| `seed` | `7` |" in md
    assert "THE OLD CHECKS TABLE" not in md and "# Parameters" not in md
    assert "results in tiny.results.json via the model server, scratch in a temporary file" in md
    assert len(got["figures"]) == 1 and md.count(Path(got["figures"][0]).name) == 2
    assert "<title>99 A tiny task: one figure</title>" in html
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", html)
    assert "cdnjs" not in html and "mathjax" not in html.lower() and "require" not in html
    assert not _leaks(tmp_path, [str(tmp_path), str(REPO)])


def test_redactor_says_what_it_hides():
    """Loopback URLs become the server they are, paths become relative or words."""
    r = Redactor({"http://127.0.0.1:5000/v1": "the model server"}, ["/srv/out"])
    assert r.text("to http://127.0.0.1:5000/v1 and 127.0.0.1:6000") == "to the model server and a loopback port"
    assert r.text("wrote /srv/out/a.json into /srv/out.") == "wrote a.json into the output folder."
    assert r.text(f"File {REPO}/workbook/checks.py, line 3") == "File workbook/checks.py, line 3"
    assert r.text(f"{tempfile.gettempdir()}/ipykernel_1/2.py:2: Warning") == "a temporary file:2: Warning"
    assert display_path(REPO / "params" / "quick.yaml") == "params/quick.yaml"
    assert display_path("/elsewhere/bad.yaml") == "bad.yaml"
