"""Shared fixtures: the embedded model (once per session) and the fault proxy (per test).

Everything here is a real server on 127.0.0.1. The session ends by checking that no
process this test run started is still alive. If the model server dies mid-session (a
llama.cpp build that crashes on this CPU, say), the run stops at the first test that fails
after it, with the server's own words ("model server died (SIGSEGV, exit 139)" and its log),
instead of failing every later test with a connection error.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import psutil
import pytest

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
def chaos(local_model):
    """A fault proxy in front of the embedded model; its journal starts empty."""
    with ChaosProxy(upstream=local_model.api_base) as proxy:
        yield proxy


@pytest.fixture
def chaos_free():
    """A fault proxy with no upstream (scripted replies and faults only, full speed)."""
    with ChaosProxy(upstream=None, upstream_free=True) as proxy:
        yield proxy


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
