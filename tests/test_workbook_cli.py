"""The workbook's command line (`python -m workbook`): thin, and bad input is named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workbook.cli import main


def test_usage_error_exits_2(capsys):
    """No sub-command is a usage error (exit 2) naming `run`."""
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "run" in capsys.readouterr().err


def test_bad_params_file_exits_2_naming_it(tmp_path, capsys):
    """A params file that does not exist: exit 2 and a message naming it, no traceback."""
    missing = tmp_path / "nope.yaml"
    assert main(["run", "--params", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "workbook:" in err and str(missing) in err and "Traceback" not in err


def test_python_dash_m_workbook_runs():
    """`python -m workbook --help` works (the entry point the Makefile uses)."""
    out = subprocess.run([sys.executable, "-m", "workbook", "run", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--params" in out.stdout


def test_the_library_never_imports_the_workbook():
    """No module of retrylib imports `workbook` (the lab depends on the library, not back)."""
    code = ("import sys, pkgutil, importlib, retrylib\n"
            "for m in pkgutil.walk_packages(retrylib.__path__, 'retrylib.'):\n"
            "    if m.name.endswith('_orphan_guard'):\n"
            "        continue\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted(n for n in sys.modules if n == 'workbook' or n.startswith('workbook.'))\n"
            "print(bad)\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
