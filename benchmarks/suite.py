"""How long the test suite takes, and where the time goes: a benchmark, not a timed test.

Runs ``pytest`` once (the whole suite, or the paths given), in a subprocess, and records the
wall time, the per-file sums of the test times (junit XML) and the slowest tests, with the
commit and the machine's load, in ``benchmarks/results/suite.json`` (one entry per label)::

    python benchmarks/suite.py                     # label "current"
    python benchmarks/suite.py --label in-process tests/test_loop.py tests/test_testing.py

The goal of issue 9 was `make test` <= 90 s on 2 cores with a warm pip cache; compare the
entries side by side, measured in the same session, rather than with numbers from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "suite.json"


def run_suite(paths: list[str], extra: list[str]) -> dict[str, object]:
    """Run pytest once; return the wall time, outcome counts and per-file/per-test times."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *extra, *paths]
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - t0
        tree = ET.parse(junit)
    per_file: dict[str, float] = defaultdict(float)
    tests: list[tuple[float, str]] = []
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed: list[str] = []
    for case in tree.iter("testcase"):
        seconds = float(case.get("time") or 0.0)
        file = (case.get("classname") or "").split(".")[:2]
        per_file["/".join(file) + ".py"] += seconds
        tests.append((seconds, f"{case.get('classname')}::{case.get('name')}"))
        counts["tests"] += 1
        for kind in ("failure", "error", "skipped"):
            if case.find(kind) is not None:
                counts[{"failure": "failures", "error": "errors"}.get(kind, kind)] += 1
                if kind != "skipped":
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
    tests.sort(reverse=True)
    return {
        "wall_seconds": round(wall, 1),
        "exit_code": proc.returncode,
        "counts": counts,
        "failed": failed,
        "per_file_seconds": {k: round(v, 1) for k, v in sorted(per_file.items(), key=lambda kv: -kv[1])},
        "slowest": [{"seconds": round(s, 2), "test": t} for s, t in tests[:15]],
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "last_line": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", help="test paths (default: the whole suite)")
    p.add_argument("--label", default="current", help="the entry's name in suite.json")
    p.add_argument("--pytest-args", default="", help="more pytest arguments, one string")
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    entry = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
             "cores": os.cpu_count(), "paths": args.paths or ["(all)"],
             **run_suite(args.paths, args.pytest_args.split())}
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[args.label] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: entry[k] for k in ("wall_seconds", "counts", "last_line")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
