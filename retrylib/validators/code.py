"""A validator of Python code: it parses, defines the function, and passes the tests.

The tests run in a separate, isolated interpreter (``python -I``) in a temporary folder,
never in this process: the code is the model's, and it may loop, exit or crash. The child
writes one JSON line per test to a file, so the tests that finished before a timeout
still count.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from retrylib.errors import ConfigError
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.text import fenced_blocks, shorten

_PY_LANGS = {"python", "py", "python3", ""}

# The child's program. It reads the cases as a Python literal (never as code), runs the
# solution, then each test, and reports through results.jsonl.
_RUNNER = r'''
import ast, io, json, sys

out = open("results.jsonl", "w", buffering=1)
def emit(**kw):
    out.write(json.dumps(kw) + "\n"); out.flush()

def short(v, n=80):
    r = v if isinstance(v, str) else repr(v)
    return r if len(r) <= n else r[: n - 1] + "\u2026"

class Sink(io.TextIOBase):  # the solution's prints would only be noise
    def write(self, s): return len(s)
    def writable(self): return True

def explain(src, ns):
    """What the left side of a failing `assert a == b` evaluated to."""
    try:
        node = ast.parse(src).body[0]
        left = node.test.left
        value = eval(compile(ast.Expression(left), "<test>", "eval"), dict(ns))
    except BaseException:
        return ""
    verb = "returned" if isinstance(left, ast.Call) else "is"
    return f": {short(ast.unparse(left))} {verb} {short(value)}"

def main():
    name = sys.argv[1]
    cases = ast.literal_eval(open("cases.txt", encoding="utf-8").read())
    src = open("solution.py", encoding="utf-8").read()
    sys.stdout = sys.stderr = Sink()
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    emit(start="the code itself")
    try:
        exec(compile(src, "solution.py", "exec"), ns)
    except BaseException as exc:
        emit(load_error=f"running the code raised {type(exc).__name__}: {short(str(exc), 200)}")
        return
    fn = ns.get(name)
    if not callable(fn):
        emit(load_error=f"`{name}` is not callable after running the code (it is {type(fn).__name__})")
        return
    for i, case in enumerate(cases):
        if case[0] == "assert":
            emit(start=case[1])
            try:
                exec(compile(case[1], "<test>", "exec"), dict(ns))
                error = None
            except AssertionError as exc:
                error = f"{case[1]} failed" + (f" ({short(str(exc))})" if str(exc) else "") + explain(case[1], ns)
            except BaseException as exc:
                error = f"{case[1]} raised {type(exc).__name__}: {short(str(exc), 200)}"
        else:
            _, args, kwargs, expected = case
            call = short(f"{name}(" + ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]) + ")")
            emit(start=call)
            try:
                actual = fn(*args, **kwargs)
                same = bool(actual == expected)
                error = None if same else f"{call} returned {short(actual)}, expected {short(expected)}"
            except BaseException as exc:
                error = f"{call} raised {type(exc).__name__}: {short(str(exc), 200)}"
        emit(i=i, error=error)
    emit(done=True)

main()
'''


def extract_code(text: str, function_name: str = "") -> str:
    """The code in an answer: a fenced Python block (the one defining the function, if
    several), else the first fenced block, else the whole answer."""
    blocks = fenced_blocks(text)
    if not blocks:
        return (text or "").strip("\n")
    candidates = [body for lang, body in blocks if lang in _PY_LANGS] or [b for _, b in blocks]
    marker = f"def {function_name}"
    return next((c for c in candidates if function_name and marker in c), candidates[0])


def _normalize(tests: Any) -> list[tuple[Any, ...]]:
    if isinstance(tests, str | bytes) or not isinstance(tests, list | tuple):
        raise ConfigError(
            "PythonCode: tests must be a list of assert strings or (args, expected) pairs"
        )
    cases: list[tuple[Any, ...]] = []
    for t in tests:
        if isinstance(t, str):
            try:
                ast.parse(t)
            except SyntaxError as exc:
                raise ConfigError(f"PythonCode: test {t!r} is not valid Python: {exc.msg}") from exc
            case: tuple[Any, ...] = ("assert", t)
        elif isinstance(t, list | tuple) and len(t) == 2:
            args, expected = t
            if isinstance(args, dict):
                case = ("call", (), dict(args), expected)
            elif isinstance(args, list | tuple):
                case = ("call", tuple(args), {}, expected)
            else:
                case = ("call", (args,), {}, expected)
            try:  # the child reads the cases as a literal; anything else cannot cross over
                same = ast.literal_eval(repr(case)) == case
            except (ValueError, SyntaxError, TypeError):
                same = False
            if not same:
                raise ConfigError(
                    f"PythonCode: test {t!r} holds values that are not Python literals"
                )
        else:
            raise ConfigError(
                f"PythonCode: test {t!r} is neither an assert string nor an (args, expected) pair"
            )
        cases.append(case)
    return cases


def _defined_names(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return names


def _prepare(folder: str, code: str, cases: str) -> Any:
    root = Path(folder)
    (root / "solution.py").write_text(code, encoding="utf-8")
    (root / "cases.txt").write_text(cases, encoding="utf-8")
    (root / "runner.py").write_text(_RUNNER, encoding="utf-8")
    return (root / "stderr.txt").open("wb")


def _read_results(folder: str) -> list[dict[str, Any]]:
    path = Path(folder) / "results.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:  # the whole group: the code may have started processes of its own
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()


class PythonCode:
    """Checks that the answer is Python code that defines a function which passes tests.

    Three checks, in order: the code parses (``ast.parse``); it defines ``function_name``;
    the tests pass when run in a separate ``python -I`` process, killed after ``timeout``.

    Args:
        function_name: the function the code must define.
        tests: assert statements as strings (``"assert add(1, 2) == 3"``), or
            ``(args, expected)`` pairs: ``args`` is a tuple or list of positional arguments,
            a dict of keyword arguments, or any other value as the single argument (so one
            list argument is written ``([[1, 2]], 3)``). Values must be Python literals.
        timeout: seconds the whole test run may take.

    Raises:
        ConfigError: a test is malformed, or the timeout is not positive.

    parsed: the code string.
    """

    name = "python_code"

    def __init__(
        self, function_name: str, tests: list[Any] | tuple[Any, ...] = (), timeout: float = 10.0
    ):
        if not isinstance(function_name, str) or not function_name.isidentifier():
            raise ConfigError(
                f"PythonCode: function_name must be an identifier, not {function_name!r}"
            )
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(
                f"PythonCode: timeout must be a positive number of seconds, not {timeout!r}"
            )
        self.function_name = function_name
        self.tests = list(tests)
        self.timeout = float(timeout)
        self._cases = _normalize(tests)

    def __repr__(self) -> str:
        return f"PythonCode({self.function_name!r}, tests=<{len(self.tests)}>, timeout={self.timeout:g})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        code = extract_code(text, self.function_name)
        block_hint = "Reply with the complete code in one ```python block."
        if not code.strip():
            return ValidationResult.fail("the answer holds no code", suggestions=[block_hint])
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            bad = (exc.text or "").strip()
            where = f" in `{shorten(bad)}`" if bad else ""
            return ValidationResult.fail(
                f"syntax error at line {exc.lineno} of the code: {exc.msg}{where}",
                suggestions=["Fix the syntax error. " + block_hint],
            )
        names = _defined_names(tree)
        if self.function_name not in names:
            found = ", ".join(sorted(set(names))) or "nothing"
            return ValidationResult.fail(
                f"the code does not define a function named `{self.function_name}` (it defines: {found})",
                suggestions=[f"Define `def {self.function_name}(...)`. " + block_hint],
            )
        errors = await self._run_tests(code) if self._cases else []
        if errors:
            return ValidationResult.fail(
                *errors,
                suggestions=[f"Fix `{self.function_name}` so every test passes. " + block_hint],
            )
        return ValidationResult.ok(code)

    async def _run_tests(self, code: str) -> list[str]:
        """Run the tests in a child process; the failing ones, one line each."""
        with tempfile.TemporaryDirectory(prefix="retrylib-code-") as folder:
            stderr = _prepare(folder, code, repr(self._cases))
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "runner.py",
                    self.function_name,
                    cwd=folder,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            finally:
                stderr.close()
            timed_out = False
            try:
                await asyncio.wait_for(proc.wait(), self.timeout)
            except TimeoutError:
                timed_out = True
            finally:  # also on cancellation: never leave the child running
                if proc.returncode is None:
                    _kill(proc)
                    await proc.wait()
            records = _read_results(folder)
            log = (Path(folder) / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        errors = [r["load_error"] for r in records if "load_error" in r]
        errors += [r["error"] for r in records if r.get("error")]
        finished = any("done" in r for r in records)
        running = [r["start"] for r in records if "start" in r]
        where = f" while running {running[-1]}" if running else ""
        if timed_out and not finished:
            errors.append(f"tests timed out after {self.timeout:g} s (infinite loop?){where}")
        elif not finished and not any("load_error" in r for r in records):
            tail = shorten(log.strip().splitlines()[-1], 200) if log.strip() else "no output"
            errors.append(f"the test process crashed (exit code {proc.returncode}){where}: {tail}")
        return errors
