"""The command line's bad input (issue 16, item 13): one line on stderr, exit 2, no traceback.

The chaos command runs as a real process (a traceback would be printed by the interpreter,
not by retrylib); ``retrylib call`` runs in-process through ``retrylib.cli.main``, which is
what the console script calls. None of these start a server.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retrylib.cli import main


def chaos(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrylib.cli", "chaos", "--upstream-free", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The process exited 2 with exactly one non-empty stderr line and nothing on stdout."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == ""
    return lines[0]


def test_chaos_port_out_of_range_is_one_line():
    """`retrylib chaos --upstream-free --port 99999`: one line naming the port, exit 2."""
    line = one_line_error(chaos("--port", "99999"))
    assert line.startswith("retrylib: ") and "port" in line and "99999" in line


@pytest.mark.parametrize(("plan", "words"), [
    ("reply", "reply needs its content after a colon"),
    ("429:retry-after=nan", "retry-after needs a finite number"),
    ("503,429:retry-after=inf", "retry-after needs a finite number"),
    ("hang:inf", "'hang:inf'"),
    ("503,explode", "'explode'"),
])
def test_chaos_bad_plans_are_refused_by_name(plan, words):
    """A plan with a bare `reply`, a non-finite Retry-After, hang:inf or an unknown token is
    refused before the proxy binds: one line naming the token, exit 2."""
    line = one_line_error(chaos("--port", "0", "--plan", plan))
    assert words in line


def test_call_missing_json_file_says_it_does_not_exist(tmp_path, capsys, monkeypatch):
    """`retrylib call x.json` where there is no x.json: "does not exist", not "must be a
    mapping, got str" (the path was read as YAML text)."""
    monkeypatch.chdir(tmp_path)
    assert main(["call", "x.json"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "retrylib: llm_call config file not found: x.json: the file does not exist"
    assert "mapping" not in err


def test_call_directory_is_not_a_config(tmp_path, capsys):
    """A directory given as the config is named as not a file."""
    assert main(["call", str(tmp_path)]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_call_reads_a_json_config_file(tmp_path, capsys):
    """An existing JSON file is read as the config: its own bad value is the error, by name."""
    cfg = tmp_path / "x.json"
    cfg.write_text(json.dumps({"model": "openai/x", "messages": [{"role": "user", "content": "hi"}],
                               "retry_config": {"max_attempts": 0}}))
    assert main(["call", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retrylib: ") and "max_attempts" in err and "mapping" not in err
