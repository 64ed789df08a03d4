"""retrylib's default debugging tool: an MCP server with ``run_python`` and ``check_json``.

Run it as ``python -m retrylib.tools.run_python`` (stdio, what
:func:`retrylib.tools.default_debug_tool_config` starts), or with ``--transport
streamable-http --port N`` to serve it over HTTP on 127.0.0.1.

``run_python(code)`` runs ``python -I -c code`` in a child process, in a fresh temporary
folder, and answers with what it printed (stdout and stderr, interleaved as a terminal shows
them). Like the REPL, a trailing expression's value is printed (``2 + 2`` answers ``4``).
The limits are the server's, never the model's (tiny models fill optional parameters with
junk such as a timeout of 1e15, so the tool takes ``code`` only):

- the timeout (default 10 s, clamped to 0.1–120 s): on expiry the child's whole process
  group is killed and the call is a tool error saying so;
- the output cap (default 8 KB): the rest is counted and dropped, and the answer says so;
- a non-zero exit is a tool **error** (``is_error=True``), raised inside the tool, so the
  stage sees a traceback as a failure rather than as ordinary text.

The child runs in its own process group (so code that starts processes of its own is
killed with it), and is killed when the call is cancelled, when the server gets SIGTERM,
and, on Linux, when the server itself dies (``PR_SET_PDEATHSIG``). The server needs the
``[mcp]`` extra; ``check_json`` needs ``[jsonschema]`` too.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from typing import Any

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_OUTPUT = 8192
TIMEOUT_RANGE = (0.1, 120.0)
OUTPUT_RANGE = (256, 1_000_000)
_VALUE = "__retrylib_value__"
_CHILDREN: set[int] = set()  # process groups of the code running now (killed on SIGTERM)


def clamp(value: float, bounds: tuple[float, float]) -> float:
    """``value`` inside ``bounds``; a value that is not a finite number gives the lower bound."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return bounds[0]
    if v != v:  # NaN
        return bounds[0]
    return min(max(v, bounds[0]), bounds[1])


def repl_source(code: str) -> str:
    """``code`` with its trailing expression's value printed, as the interactive REPL does.

    The source is kept as written (line numbers in tracebacks stay right); only the last
    statement, when it is an expression, becomes ``v = (expr)`` followed by
    ``sys.displayhook(v)``, which prints ``repr(v)`` unless it is ``None``. Code that does
    not parse is returned unchanged: Python then reports the syntax error itself.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    lines = code.splitlines(keepends=True)
    start = sum(len(line) for line in lines[: last.lineno - 1]) + _char_offset(
        lines[last.lineno - 1], last.col_offset)
    assert last.end_lineno is not None and last.end_col_offset is not None
    end = sum(len(line) for line in lines[: last.end_lineno - 1]) + _char_offset(
        lines[last.end_lineno - 1], last.end_col_offset)
    expr = code[start:end]
    return (f"{code[:start]}{_VALUE} = ({expr})\n"
            f"__import__('sys').displayhook({_VALUE})\n{code[end:]}")


def _char_offset(line: str, byte_offset: int) -> int:
    """ast's column offsets count UTF-8 bytes; string slicing counts characters."""
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", "replace"))


def _load_prctl() -> Any:
    """libc's ``prctl`` on Linux (loaded before any fork: nothing may be imported in between)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """The child gets SIGKILL when the server dies, so no code outlives a ``kill -9``."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def execute(code: str, timeout: float = DEFAULT_TIMEOUT,
                  max_output: int = DEFAULT_MAX_OUTPUT) -> tuple[int | None, str, bool]:
    """Run ``code`` with ``python -I -c`` in a child process group.

    Args:
        code: the program.
        timeout: seconds before the child's process group is killed.
        max_output: bytes of output kept.

    Returns:
        ``(exit code or None when it timed out, output text, whether output was cut)``.
    """
    with tempfile.TemporaryDirectory(prefix="retrylib-run-python-") as folder:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", repl_source(code), cwd=folder,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            preexec_fn=_set_pdeathsig if _PRCTL is not None else None)
        _CHILDREN.add(proc.pid)
        kept, total = bytearray(), 0

        async def pump() -> None:
            nonlocal total
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                total += len(chunk)
                if len(kept) < max_output:
                    kept.extend(chunk[: max_output - len(kept)])
            await proc.wait()

        code_ = None
        try:
            await asyncio.wait_for(pump(), timeout)
            code_ = proc.returncode
        except TimeoutError:
            pass
        finally:  # timeout, cancellation or error alike: nothing of the child survives
            _killpg(proc.pid)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
            _CHILDREN.discard(proc.pid)
    text = kept.decode("utf-8", "replace")
    cut = total > len(kept)
    if cut:
        text += f"\n[output truncated: {total} bytes, only the first {len(kept)} are shown]"
    return code_, text, cut


TOOLS = ("run_python", "check_json")


def build_server(timeout: float = DEFAULT_TIMEOUT, max_output: int = DEFAULT_MAX_OUTPUT,
                 tools: tuple[str, ...] = TOOLS) -> Any:
    """The ``MCPServer`` with ``run_python`` and ``check_json`` (or those of ``tools``).

    Args:
        timeout: seconds ``run_python`` lets code run (clamped to 0.1–120).
        max_output: bytes of output it returns (clamped to 256–1,000,000).
        tools: which tools to serve (a tiny model chooses better among fewer).

    Raises:
        ValueError: ``tools`` names a tool this server does not have.
    """
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown or not tools:
        raise ValueError(f"unknown tool(s) {unknown or tools!r}; this server has {', '.join(TOOLS)}")
    from retrylib._extras import require

    mcpserver = require("mcp.server.mcpserver", "retrylib's run_python MCP server")
    from mcp.server.mcpserver.exceptions import ToolError

    limit = clamp(timeout, TIMEOUT_RANGE)
    cap = int(clamp(max_output, OUTPUT_RANGE))
    server = mcpserver.MCPServer("retrylib-run-python", log_level="WARNING")

    def maybe(name: str) -> Any:
        return server.tool(structured_output=False, description=DESCRIPTIONS[name].format(
            limit=limit)) if name in tools else (lambda fn: fn)

    @maybe("run_python")
    async def run_python(code: str) -> str:
        exit_code, output, _ = await execute(code, limit, cap)
        if exit_code is None:
            raise ToolError(f"timed out after {limit:g} s; the process was killed. "
                            f"Output before that:\n{output}".rstrip())
        if exit_code != 0:
            raise ToolError(f"exit code {exit_code}\n{output}".rstrip())
        return output if output.strip() else "(no output; exit code 0)"

    @maybe("check_json")
    def check_json(text: str, schema: str) -> str:
        return _check_json(text, schema, ToolError)

    return server


DESCRIPTIONS = {
    "run_python": ("Run Python code (python -I, a fresh temporary folder, at most {limit:g} s) "
                   "and get what it prints. The value of a last expression is printed too. A "
                   "non-zero exit (an exception) is reported as an error with its traceback."),
    "check_json": ("Check that `text` is JSON that matches the JSON schema `schema` (itself "
                   "JSON text). Answers 'valid', or an error listing what does not match."),
}


def _check_json(text: str, schema: str, error: type[Exception]) -> str:
    try:
        instance = json.loads(text)
    except ValueError as exc:
        raise error(f"`text` is not JSON: {exc}") from None
    try:
        spec = json.loads(schema)
    except ValueError as exc:
        raise error(f"`schema` is not JSON: {exc}") from None
    try:
        import jsonschema
    except ModuleNotFoundError:
        raise error("check_json needs jsonschema on the server: pip install "
                    "'retrylib[jsonschema]'") from None
    try:
        validator_cls = jsonschema.validators.validator_for(spec)
        validator_cls.check_schema(spec)
    except jsonschema.SchemaError as exc:
        raise error(f"`schema` is not a valid JSON schema: {exc.message}") from None
    problems = sorted(validator_cls(spec).iter_errors(instance), key=lambda e: list(e.path))
    if problems:
        lines = [f"- at {'/'.join(map(str, p.path)) or '(root)'}: {p.message}" for p in problems[:10]]
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise error(f"{len(problems)} problem(s):\n" + "\n".join(lines) + more)
    return "valid"


def _on_sigterm(signum: int, frame: Any) -> None:
    for pid in list(_CHILDREN):
        _killpg(pid)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """``python -m retrylib.tools.run_python [--timeout S] [--max-output B] [--tools T,...]
    [--transport stdio|streamable-http] [--port P]``."""
    p = argparse.ArgumentParser(prog="python -m retrylib.tools.run_python",
                                description="retrylib's run_python MCP server")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds code may run (clamped to {TIMEOUT_RANGE[0]}-{TIMEOUT_RANGE[1]})")
    p.add_argument("--max-output", type=int, default=DEFAULT_MAX_OUTPUT,
                   help="bytes of output returned")
    p.add_argument("--tools", default=",".join(TOOLS),
                   help=f"comma-separated tools to serve (default: {','.join(TOOLS)})")
    p.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    p.add_argument("--port", type=int, default=8765, help="port for streamable-http (127.0.0.1)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server = build_server(args.timeout, args.max_output,
                              tuple(t.strip() for t in args.tools.split(",") if t.strip()))
    except ValueError as exc:
        p.error(str(exc))
    if args.transport == "stdio":
        server.run()
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
