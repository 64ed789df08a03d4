"""The suite talks to real servers: no test may use mocks or patch the HTTP stack."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built from pieces so this file does not match itself.
FORBIDDEN = [
    r"unittest\." + "mock",
    "Magic" + "Mock",
    "Async" + "Mock",
    r"\bmock" + r"er\b",
    "pytest_" + "mock",
    r"monkeypatch\.setattr\(\s*['\"]?(litellm|httpx|openai|aiohttp)",
    r"monkeypatch\.setattr\(\s*(litellm|httpx|openai|aiohttp)\b",
]


def _sources():
    for folder in ("tests", "retrylib", "benchmarks", "notebooks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".ipynb") and path.name != Path(__file__).name:
                yield path


def test_no_mocks_anywhere():
    """No file in tests/, retrylib/, benchmarks/ or notebooks/ uses a mock library."""
    hits = []
    for path in _sources():
        text = path.read_text(errors="replace")
        for pattern in FORBIDDEN:
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert not hits, "mocks found:\n" + "\n".join(hits)


def test_the_check_can_fail(tmp_path):
    """The patterns really match the forbidden forms (the check is not vacuous)."""
    sample = "from unittest import mock\nx = MagicMock()\nmonkeypatch.setattr(litellm, 'acompletion', f)\n"
    sample = sample.replace("from unittest import mock", "import unittest." + "mock")
    matched = [p for p in FORBIDDEN if re.search(p, sample)]
    assert len(matched) >= 3
