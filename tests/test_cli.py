"""The ``retrylib`` command line: serve, chaos and call, run as real processes.

The long-running commands start as the installed console script (``.venv/bin/retrylib``):
each test reads what it prints, talks HTTP to what it started, and stops it with SIGTERM,
checking that it exits cleanly and leaves no model server behind. Error paths that start
no server call the same entry point, ``retrylib.cli.main``, in-process: every CLI process
pays ~5 s importing litellm, and the suite has a time budget.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from retrylib.cli import main

EXE = Path(sys.executable).with_name("retrylib")
CMD = [str(EXE)] if EXE.exists() else [shutil.which("retrylib") or "retrylib"]
URL = re.compile(r"http://127\.0\.0\.1:\d+/v1")


def first_line(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The first line the process prints on stdout (fails the test on timeout or early exit)."""
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: q.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = q.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"{proc.args} printed nothing within {timeout}s")
    assert line, f"{proc.args} exited ({proc.poll()}) before printing: {proc.stderr.read()}"
    return line


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM the process (only this pid) and return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        pytest.fail(f"{proc.args} ignored SIGTERM for {timeout}s")


def launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def run(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=timeout)


def test_serve_prints_url_and_stops_on_sigterm():
    """`retrylib serve` prints the model server's URL, serves /v1/models, and SIGTERM ends it and its server."""
    proc = launch("serve", "--n-ctx", "1024")
    try:
        line = first_line(proc)
        assert line.startswith("model server: http://127.0.0.1:")
        assert "litellm: openai/smollm2" in line
        url = URL.search(line).group(0)
        r = httpx.get(f"{url}/models", timeout=10)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "smollm2"
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "llama_cpp.server" in " ".join(p.cmdline())]
        assert len(servers) == 1
    finally:
        code = stop(proc)
    assert code == 0
    assert not servers[0].is_running() or servers[0].status() == psutil.STATUS_ZOMBIE
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/models", timeout=2)


def test_chaos_prints_url_injects_plan_and_forwards(local_model):
    """`retrylib chaos --upstream URL --plan 503` prints its URL, injects the plan, then forwards to the model."""
    proc = launch("chaos", "--upstream", local_model.api_base, "--plan", "503")
    try:
        line = first_line(proc)
        assert line.startswith("chaos proxy: http://127.0.0.1:")
        assert f"upstream: {local_model.api_base}" in line
        url = URL.search(line).group(0)
        health = httpx.get(url[:-3] + "/_chaos/health", timeout=10).json()
        assert health["status"] == "ok" and health["url"] == url and health["upstream_free"] is False
        body = {"model": local_model.model, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hi."}]}
        first = httpx.post(f"{url}/chat/completions", json=body, timeout=60)
        second = httpx.post(f"{url}/chat/completions", json=body, timeout=60)
        assert first.status_code == 503
        assert second.status_code == 200
        assert not second.json()["id"].startswith("chatcmpl-chaos")  # the model answered
        journal = httpx.get(url[:-3] + "/_chaos/journal", timeout=10).json()["entries"]
        assert [e["fault"] for e in journal] == ["503", "pass"]
    finally:
        code = stop(proc)
    assert code == 0


def test_call_prints_attempts_table(local_model, tmp_path):
    """`retrylib call cfg.yaml` runs a declarative config against the real model and prints the attempts."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": local_model.litellm_model, "api_base": local_model.api_base,
        "messages": [{"role": "user", "content": "Say hello in one word."}],
        "max_tokens": 16, "temperature": 0,
        "retry_config": {"max_attempts": 2, "initial_delay": 0, "seed": 1},
    }))
    out = run("call", str(cfg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = lines[0].split()
    assert header[:3] == ["number", "stage", "outcome"] and "tokens_out" in header
    rows = [ln.split() for ln in lines[1:] if re.match(r"\s*\d+\s+\w+\s+\w+", ln)]
    assert rows and rows[-1][2] == "ok" and rows[-1][1] == "normal"
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["content"].strip()
    assert report["metrics"]["api_calls"] == len(rows)


def test_call_bad_config_from_the_command_line(tmp_path):
    """`retrylib call bad.yaml` (no model) exits 2 with a message naming the field, no traceback."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"messages": [{"role": "user", "content": "hi"}]}))
    out = run("call", str(cfg), timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("retrylib: invalid llm_call config: model: Field required")
    assert "Traceback" not in out.stderr


# -- the same entry point in-process (cli.main), for the cases that start no server ----------


def test_call_failing_run_prints_attempts_and_exits_2(chaos, tmp_path, capsys):
    """A call that runs out of attempts returns 2 and prints its attempts table on stderr; as in
    the original design, running out of attempts means human review."""
    chaos.set_plan(["reply:no digits", "reply:still none"])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": "openai/smollm2", "api_base": chaos.url,
        "messages": [{"role": "user", "content": "A number?"}],
        "validation": [{"type": "regex", "params": {"pattern": "^[0-9]+$", "mode": "fullmatch"}}],
        "retry_config": {"max_attempts": 2, "initial_delay": 0, "seed": 1},
    }))
    assert main(["call", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("HumanReviewNeededError: 2 answers failed validation "
                          "(max_attempts_before_human=2)")
    assert err.count("validation_failed") == 2
    assert len(chaos.journal()) == 2


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model": "openai/x"}, "messages: Field required"),
        ({"model": "openai/x", "messages": [{"role": "user", "content": "hi"}],
          "validation": ["no_such_validator"]}, "unknown validator type 'no_such_validator'; known types:"),
        ({"model": "openai/x", "messages": [{"role": "user", "content": "hi"}],
          "retry_config": {"max_attempts": 0}}, "max_attempts: Input should be greater than or equal to 1"),
        ("- just\n- a list\n", "llm_call config must be a mapping, got list"),
    ],
)
def test_call_bad_config_exits_2(tmp_path, capsys, config, message):
    """A bad config returns 2 with a clear message and makes no call."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    assert main(["call", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retrylib: ")
    assert message in err


def test_call_missing_file_exits_2(tmp_path, capsys):
    """A config path that does not exist returns 2 naming it."""
    assert main(["call", str(tmp_path / "missing.yaml")]) == 2
    assert f"llm_call config file not found: {tmp_path / 'missing.yaml'}" in capsys.readouterr().err


def test_serve_bad_model_exits_2(capsys):
    """`retrylib serve --model <missing>` returns 2 with a clear message and starts nothing."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["serve", "--model", "/nonexistent/model.gguf"]) == 2
    assert "retrylib: model file not found: /nonexistent/model.gguf" in capsys.readouterr().err
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_usage_error_exits_2(capsys):
    """No sub-command is a usage error (exit 2) listing the commands."""
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "serve" in err and "chaos" in err and "call" in err


def test_import_leaves_litellm_until_a_name_needs_it():
    """`import retrylib` (and so every CLI start) does not pay litellm's import, nor does
    binding a call; the cache, which needs it, loads it on first use."""
    code = ("import sys, retrylib, retrylib.testing.local, retrylib.testing.chaos, retrylib.manager\n"
            "assert 'litellm' not in sys.modules, 'litellm imported eagerly'\n"
            "from retrylib import make_call, llm_call\n"
            "make_call('openai/smollm2', api_base='http://127.0.0.1:9/v1')\n"
            "assert 'litellm' not in sys.modules, 'make_call imported litellm'\n"
            "from retrylib import init_cache\n"
            "assert 'litellm' in sys.modules and retrylib.init_cache is init_cache\n"
            "assert {'make_call', 'llm_call', 'acompletion'} <= set(dir(retrylib))\n"
            "try:\n    retrylib.nope\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "module 'retrylib' has no attribute 'nope'" in out.stdout
