"""What a report may say about the machine it ran on: no absolute paths, no loopback ports.

A report is read on another machine, later. The checkout's path, the output folder, the
temporary folders and the random ports of the run's model server and fault proxy mean
nothing there, and they change on every run, so a report would differ from the last one for
no reason. :class:`Redactor` rewrites them into what they are:

============================================  ======================================
on the machine                                 in the report
============================================  ======================================
``http://127.0.0.1:39735/v1`` (the run's)      ``the model server`` / ``the fault proxy``
``http://127.0.0.1:60603/v1`` (any other)      ``a loopback port``
``/work/main/reports/core_retry.results.json``  ``core_retry.results.json``
``/work/main/workbook/checks.py``               ``workbook/checks.py``
``/tmp/ipykernel_6996/3928488588.py``           ``a temporary file``
``/root/...``                                   ``~/...``
============================================  ======================================

The notebooks avoid printing such values in the first place; this is the net under them
(a traceback names the files it passed through, an error message names a URL).
"""

from __future__ import annotations

import re
import sysconfig
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["LOOPBACK", "REPO", "Redactor", "display_path", "is_loopback"]

REPO = Path(__file__).resolve().parent.parent
# A loopback URL or host:port, with an optional path (``/v1``, ``/v1/chat/completions``).
LOOPBACK = re.compile(r"(?:https?://)?(?:127\.0\.0\.1|localhost|\[::1\]|0\.0\.0\.0):\d{2,5}(?:/[\w./-]*[\w/])?")
_PATH_END = r"[^\s'\"`,;:()\[\]{}<>|]*"
_FOLDER_END = r"(?![\w-]|\.\w)"  # the folder itself, not a longer name that starts like it


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` points at this machine (127.0.0.1, localhost, ::1)."""
    return bool(url) and LOOPBACK.fullmatch(str(url).rstrip("/")) is not None


def display_path(path: str | Path | None, base: Path = REPO) -> str | None:
    """``path`` as a reader should see it: relative to the checkout when inside it, else its
    name alone (``params/quick.yaml``, ``bad.yaml``)."""
    if path is None:
        return None
    p = Path(path)
    try:
        return p.resolve().relative_to(base).as_posix()
    except ValueError:
        return p.name


class Redactor:
    """Rewrites machine-specific values in text into what they are.

    Args:
        names: exact values with the words that replace them, most specific first
            (``{"http://127.0.0.1:39735/v1": "the model server"}``).
        folders: folders whose contents are named relative to them (the output folder:
            ``<out>/core_retry.results.json`` -> ``core_retry.results.json``).
    """

    def __init__(self, names: dict[str, str] | None = None, folders: Iterable[str | Path] = ()):
        self.rules: list[tuple[re.Pattern[str], str]] = []
        for value, words in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
            if value:
                self.rules.append((re.compile(re.escape(value.rstrip("/")) + r"/?"), words))
        roots: list[tuple[str, str]] = [(str(Path(f).resolve()), "the output folder") for f in folders]
        roots.append((str(REPO), "the checkout"))
        paths = sysconfig.get_paths()
        for key, words in (("purelib", "site-packages"), ("stdlib", "the standard library")):
            if paths.get(key) and not Path(paths[key]).resolve().is_relative_to(REPO):
                roots.append((str(Path(paths[key]).resolve()), words))
        for root, words in sorted(set(roots), key=lambda rw: -len(rw[0])):
            esc = re.escape(root)
            # A file inside: relative to the folder. The folder itself: what it is.
            self.rules.append((re.compile(esc + r"/(?=[^\s/])"), ""))
            self.rules.append((re.compile(esc + _FOLDER_END), words))
        tmp = re.escape(str(Path(tempfile.gettempdir()).resolve()))
        self.rules.append((re.compile(tmp + r"/" + _PATH_END), "a temporary file"))
        self.rules.append((re.compile(tmp + _FOLDER_END), "a temporary folder"))
        self.rules.append((LOOPBACK, "a loopback port"))
        home = str(Path.home())
        if home not in ("/", ""):
            self.rules.append((re.compile(re.escape(home) + r"(?=/|\b)"), "~"))

    @classmethod
    def for_run(cls, record: dict[str, Any]) -> Redactor:
        """The redactor of one workbook run: its model server, its fault proxy, its folders."""
        names = {}
        if record.get("api_base") and is_loopback(record["api_base"]):
            names[record["api_base"]] = "the model server"
        if record.get("chaos_url"):
            names[record["chaos_url"]] = "the fault proxy"
        folders = [f for f in (record.get("output_dir"), record.get("runs_dir")) if f]
        return cls(names, folders)

    def text(self, s: str) -> str:
        """``s`` with every machine-specific value replaced."""
        for pattern, words in self.rules:
            s = pattern.sub(words, s)
        return s

    def value(self, v: Any) -> Any:
        """A parameter value as a report shows it (strings redacted, containers walked)."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, list | tuple):
            return type(v)(self.value(x) for x in v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        return v

    def outputs(self, nb: Any) -> None:
        """Redact, in place, every output of an nbformat notebook: streams, text and HTML
        data, error names, values and tracebacks. Images are left alone."""
        for c in nb.cells:
            for out in c.get("outputs", []):
                if "text" in out:
                    out["text"] = self.text(_joined(out["text"]))
                for mime, data in out.get("data", {}).items():
                    if mime.startswith("text/"):
                        out["data"][mime] = self.text(_joined(data))
                if out.get("output_type") == "error":
                    out["evalue"] = self.text(str(out.get("evalue", "")))
                    out["traceback"] = [self.text(t) for t in out.get("traceback", [])]


def _joined(v: Any) -> str:
    return "".join(v) if isinstance(v, list) else str(v)
