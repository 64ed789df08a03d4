"""Process-tree helpers shared by the tool-stage tests: what this test process started, and
whether it is gone."""

from __future__ import annotations

import time

import psutil


def descendants() -> list[psutil.Process]:
    """Live processes this test process started (servers, and the code they run)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def assert_all_gone(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    """Every process of ``procs`` has exited (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    alive = procs
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if alive:
            time.sleep(0.05)
    assert alive == [], f"left running: {[(p.pid, p.cmdline()[:3]) for p in alive]}"
