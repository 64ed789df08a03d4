"""Verification checks: a named assertion on measured data, with its evidence.

A workbook notebook makes real calls, measures them, and records each claim it verifies
as a check::

    checks = CheckRecorder("core_retry")
    with checks.verify("backoff follows the seeded schedule", evidence={"max_gap_s": gap}):
        assert gap < 0.25, f"sleeps drifted from the schedule by {gap:.3f}s"
    checks.save("reports/core_retry.results.json")

``passed`` is True only when the block ran to its end without raising. A failing assertion
(or any other error) is caught, recorded with its message as ``details``, and the notebook
goes on, so one broken claim does not hide the others. Nothing is ever marked passed by
hand: there is no API for it.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Check:
    """One verified claim.

    Attributes:
        name: what is claimed.
        passed: whether its assertions held on the measured data.
        evidence: the numbers it was judged on (JSON-serialisable).
        details: on failure, what went wrong.
        section: the sub-task it belongs to.
        seconds: how long the check's block took.
    """

    name: str
    passed: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    details: str | None = None
    section: str = ""
    seconds: float = 0.0


class CheckRecorder:
    """Collects the checks of one verification task and writes its results file."""

    def __init__(self, task: str):
        self.task = task
        self.checks: list[Check] = []
        self.section = ""
        self.started = time.time()
        self.meta: dict[str, Any] = {}

    @contextmanager
    def verify(self, name: str, evidence: dict[str, Any] | None = None,
               section: str | None = None) -> Iterator[dict[str, Any]]:
        """Run the block as a check. The yielded dict is the evidence; add numbers to it.

        Errors inside the block are recorded (not raised), so later checks still run.
        """
        ev: dict[str, Any] = dict(evidence or {})
        t = time.monotonic()
        check = Check(name=name, passed=False, evidence=ev, section=section or self.section)
        try:
            yield ev
        except AssertionError as exc:
            check.details = str(exc) or "assertion failed"
        except Exception as exc:  # a crash is a failed check, with its story
            tb = traceback.format_exception_only(type(exc), exc)
            check.details = "".join(tb).strip()[:2000]
        else:
            check.passed = True
        check.seconds = time.monotonic() - t
        check.evidence = _jsonable(ev)
        self.checks.append(check)
        mark = "PASS" if check.passed else "FAIL"
        print(f"[{mark}] {name}" + (f": {check.details}" if check.details else ""))

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.checks)

    def frame(self) -> Any:
        """The checks as a DataFrame (for display in the notebook)."""
        import pandas as pd

        rows = [{"section": c.section, "check": c.name, "passed": c.passed,
                 "evidence": json.dumps(c.evidence)[:200], "details": c.details or ""}
                for c in self.checks]
        return pd.DataFrame(rows)

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write ``{task, checks, passed, total, environment, ...}`` as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "task": self.task,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": time.time() - self.started,
            "passed": self.passed,
            "total": len(self.checks),
            "checks": [asdict(c) for c in self.checks],
            "environment": environment(),
            **_jsonable(self.meta),
            **_jsonable(extra),
        }
        path.write_text(json.dumps(data, indent=2, default=str))
        return path


def environment() -> dict[str, Any]:
    """Versions and machine facts that a report should record."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    pkgs: dict[str, str | None] = {}
    for name in ("retrylib", "litellm", "llama-cpp-python", "pydantic", "papermill", "nbconvert",
                 "pandas", "matplotlib", "instructor"):
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pkgs[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": pkgs,
    }


def _jsonable(obj: Any) -> Any:
    """Make numpy/pandas scalars and other oddities JSON-safe."""
    return json.loads(json.dumps(obj, default=_default))


def _default(o: Any) -> Any:
    for attr in ("item", "tolist"):
        if hasattr(o, attr):
            try:
                return getattr(o, attr)()
            except Exception:
                pass
    return str(o)
