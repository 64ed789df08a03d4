"""Shared fixtures: the embedded model (once per session), the fault proxy (per test), and the
workbook's runs (once per session: test_workbook.py and test_reports.py read the same run).

Everything here is a real server on 127.0.0.1. The session ends by checking that no
process this test run started is still alive. If the model server dies mid-session (a
llama.cpp build that crashes on this CPU, say), the run stops at the first test that fails
after it, with the server's own words ("model server died (SIGSEGV, exit 139)" and its log),
instead of failing every later test with a connection error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import psutil
import pytest
import yaml
from loguru import logger

from retrylib.errors import ServerDiedError
from retrylib.testing.chaos import ChaosProxy
from retrylib.testing.local import LocalModelServer

_SESSION_SERVERS: list[LocalModelServer] = []


@pytest.fixture(scope="session")
def local_model():
    """The embedded SmolLM2-135M server, started once for the whole session."""
    srv = LocalModelServer("smollm2", n_ctx=4096)
    srv.start()
    _SESSION_SERVERS.append(srv)
    try:
        yield srv
    finally:
        _SESSION_SERVERS.remove(srv)
        srv.stop()


def _dead_server() -> ServerDiedError | None:
    for srv in _SESSION_SERVERS:
        if srv.process is not None:
            try:  # a crash closes the socket a moment before the exit is seen
                srv.process.wait(timeout=1.0)
            except Exception:
                continue
        try:
            srv.check()
        except ServerDiedError as exc:
            return exc
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed because the session's model server died stops the run, once, clearly."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SESSION_SERVERS:
        died = _dead_server()
        if died is not None:
            item.session.shouldfail = f"the session's {died}"


@pytest.fixture
def no_sleeps():
    """Test mode for the test: no backoff sleeps, the old mode restored after it."""
    from retrylib.testing import set_testing

    with set_testing(True):
        yield


@pytest.fixture
def chaos(local_model):
    """A fault proxy in front of the embedded model; its journal starts empty."""
    with ChaosProxy(upstream=local_model.api_base) as proxy:
        yield proxy


@pytest.fixture
def chaos_free():
    """A fault proxy with no upstream (scripted replies and faults only, full speed)."""
    with ChaosProxy(upstream=None, upstream_free=True) as proxy:
        yield proxy


def _workbook_run(out: Path, params: Path, only: list[str]) -> SimpleNamespace:
    from workbook.runner import run_workbook

    rc = run_workbook(params=params, only=only, output_dir=out)
    record = json.loads((out / "workbook_run.json").read_text())
    return SimpleNamespace(rc=rc, out=out, record=record,
                           entries={e["stem"]: e for e in record["notebooks"]})


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """Every notebook that exists, executed once with params/quick.yaml (the suite's one
    workbook run: the runner tests and the report tests read it)."""
    from workbook.runner import NOTEBOOKS, NOTEBOOKS_DIR

    present = [s.number for s in NOTEBOOKS if (NOTEBOOKS_DIR / f"{s.stem}.ipynb").is_file()]
    out = tmp_path_factory.mktemp("workbook") / "reports"
    return _workbook_run(out, Path(__file__).resolve().parent.parent / "params" / "quick.yaml", present)


@pytest.fixture(scope="session")
def failed_run(tmp_path_factory):
    """01 with a bad parameter (seed -1), then the summary; a params file written to tmp."""
    from workbook.runner import NOTEBOOKS_DIR

    if not (NOTEBOOKS_DIR / "01_core_retry.ipynb").is_file():
        pytest.skip("notebooks/01_core_retry.ipynb does not exist yet")
    quick = Path(__file__).resolve().parent.parent / "params" / "quick.yaml"
    tmp = tmp_path_factory.mktemp("workbook_bad")
    params = yaml.safe_load(quick.read_text())
    params["notebooks"]["01_core_retry"] = {"seed": -1}
    (tmp / "bad.yaml").write_text(yaml.safe_dump(params))
    return _workbook_run(tmp / "reports", tmp / "bad.yaml", ["01", "05"])


def _server_children() -> list[psutil.Process]:
    me = psutil.Process()
    out = []
    for child in me.children(recursive=True):
        try:
            if "llama_cpp.server" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any model server it started is still running (an orphan)."""
    left = _server_children()
    if left:
        for p in left:
            p.kill()
        session.exitstatus = 1
        print(f"\nORPHANS: {len(left)} llama_cpp.server process(es) outlived the test session: "
              f"{[p.pid for p in left]}")


@pytest.fixture
def redis_server():
    """A real redis-server on 127.0.0.1 at a free port (no persistence), stopped after the test."""
    from retrylib.testing.redis import RedisServer

    with RedisServer() as server:
        yield server


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: starts a Dask LocalCluster or several processes (deselect: -m 'not slow')")


@pytest.fixture
def warnings_logged():
    """Every loguru message at WARNING or above during the test."""
    seen: list[str] = []
    handler = logger.add(lambda m: seen.append(str(m)), level="WARNING", format="{message}")
    yield seen
    logger.remove(handler)
