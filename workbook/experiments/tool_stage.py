"""Measurements behind section 7 of ``02_staged_retry.ipynb``: the tool stage runs the tool.

With ``tool_mode="execute"`` the tool stage starts the MCP servers of
``debug_tool_mcp_config`` once per call (here retrylib's own ``run_python`` server), offers
their tools to the model, runs the model's tool calls in the MCP session, puts each result
in the next request, and validates the final answer like any other. Two runs show it:

- **scripted** (deterministic): the fault proxy answers attempt 1 with failing code, the
  tool round with a fixed ``run_python`` call, and the final request with the fix; the tool
  really runs in the MCP server and its output is read back from the next request body;
- **real model**: the embedded model served with ``chatml-function-calling`` (its ``-tools``
  alias) writes code for the project's code tasks; whatever it writes, the tool calls it
  makes on the tool stage are executed and their results are on the wire. Whether the final
  answer then passes is the model's doing, and is reported, not assumed.

In both, the MCP server processes are counted before and after: none may be left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from retrylib import ConfigError, RetryConfig
from retrylib.client import make_call
from retrylib.testing.chaos import ChaosProxy
from retrylib.testing.local import LocalModelServer
from retrylib.tools import default_debug_tool_config
from retrylib.validators import PythonCode
from workbook.experiments.core import attempts_of, keyed, new_key, run
from workbook.experiments.integration import CODE_TASK, CODE_TESTS

TOOL = "run_python"
WRONG = "```python\ndef second_largest(nums):\n    return sorted(nums)[-2]\n```"
PROBE = "def second_largest(nums):\n    return sorted(nums)[-2]\nprint(second_largest([7]))"
FIXED = ("```python\ndef second_largest(nums):\n    s = sorted(set(nums))\n"
         "    return s[-2] if len(s) > 1 else None\n```")
# More of the project's code tasks (benchmarks/tool_stage.py has 22): (name, prompt, tests).
TASKS: list[tuple[str, str, list[Any]]] = [
    ("second_largest", CODE_TASK, CODE_TESTS),
    ("fizzbuzz", "Write a Python function `fizzbuzz(n)` that returns a list of strings for 1..n: "
     "'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, else the number. "
     "Reply with the code in one ```python block.",
     [(3, ["1", "2", "Fizz"]), (5, ["1", "2", "Fizz", "4", "Buzz"])]),
    ("roman_to_int", "Write a Python function `roman_to_int(s)` that converts a Roman numeral "
     "string to an integer. Reply with the code in one ```python block.",
     [("III", 3), ("IV", 4), ("MCMXCIV", 1994)]),
]


def mcp_processes() -> list[int]:
    """PIDs of this process's descendants that run retrylib's run_python MCP server."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "retrylib.tools.run_python" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def tool_config(tool_after: int = 1, max_attempts: int = 3, **extra: Any) -> RetryConfig:
    """The tool stage from the ``tool_after``-th failure on, executing run_python."""
    return RetryConfig(max_attempts=max_attempts, initial_delay=0, max_delay=0,
                       max_attempts_before_tool_use=tool_after, debug_tool_name=TOOL,
                       debug_tool_mcp_config=default_debug_tool_config(timeout=10),
                       tool_mode="execute", tool_max_rounds=1, **extra)


def result_sent(result_text: str, journal: Sequence[dict[str, Any]]) -> bool:
    """Did a later request carry this tool result? The loop sends results in a user message
    that starts with ``Tool results:``; only a request made after the tool ran can hold one."""
    needle = result_text.rstrip()[:80]
    return any(m.get("role") == "user" and str(m.get("content") or "").startswith("Tool results:")
               and needle in str(m.get("content"))
               for e in journal for m in e["body"].get("messages", []) if isinstance(m, dict))


def attempt_rows(attempts: Sequence[Any], journal: Sequence[dict[str, Any]], task: str = "") -> pd.DataFrame:
    """One row per tool call (and one per attempt that made none): the attempt, its stage and
    outcome, the call's code and result, whether a later request carried the result, and
    whether that attempt's final answer passed."""
    rows = []
    for a in attempts:
        made = list(a.tool_calls)
        base = {"task": task, "attempt": a.number, "stage": a.stage, "passed": a.outcome == "ok",
                "errors": "; ".join(a.validation_errors)[:160]}
        if not made:
            rows.append({**base, "tool": None, "code": None, "result": None, "ran": False,
                         "is_error": None, "tool_s": None, "result_in_next_request": None})
        for c in made:
            code = (c.get("arguments") or {}).get("code", c.get("raw_arguments", ""))
            rows.append({**base, "tool": c["name"], "code": code[:200], "result": c["text"][:200],
                         "ran": c.get("arguments") is not None and c.get("duration", 0) > 0,
                         "is_error": c["is_error"], "tool_s": round(c.get("duration", 0.0), 3),
                         "result_in_next_request": result_sent(c["text"], journal)})
    return pd.DataFrame(rows)


async def scripted_run(env: Any) -> dict[str, Any]:
    """Attempt 1 fails (scripted wrong code); attempt 2, on the tool stage, gets a fixed
    run_python call from the proxy, which the MCP server really runs, then the fix."""
    key = new_key("tool-exec")
    env.chaos.set_plan([f"reply:{WRONG}", f"tool_call:{TOOL}:{json.dumps({'code': PROBE})}",
                        f"reply:{FIXED}"], key)
    before = set(mcp_processes())
    t = time.monotonic()
    result, err = await run(keyed(env, "chaos", key, max_tokens=64), [{"role": "user", "content": CODE_TASK}],
                            [PythonCode("second_largest", CODE_TESTS)], tool_config())
    attempts = attempts_of(result, err)
    journal = env.chaos.journal(key)
    return {"rows": attempt_rows(attempts, journal, "second_largest (scripted)"), "journal": journal,
            "error": err, "result": result, "seconds": time.monotonic() - t,
            "left": sorted(set(mcp_processes()) - before)}


def _split_route(srv: LocalModelServer, url: str, **defaults: Any) -> Any:
    """A call that sends tool rounds (requests offering ``tools``) to the ``-tools`` alias and
    every other request to the plain alias, both through the proxy at ``url``."""
    plain = make_call(f"openai/{srv.model}", api_base=url, **defaults)
    tooled = make_call(f"openai/{srv.tools_model}", api_base=url, **defaults)

    async def route(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        return await (tooled if "tools" in kwargs else plain)(messages, **kwargs)

    return route


async def real_run(local_model: str = "smollm2", tasks: int = 3, max_tokens: int = 160,
                   seed: int = 7) -> dict[str, Any]:
    """The embedded model on ``tasks`` code tasks, tool stage from the first failure on.

    Tool rounds (requests offering ``tools``) go to the ``-tools`` alias, the only chat format
    that produces ``tool_calls``; the other requests go to the plain alias, whose template does
    not HTML-escape the prompt. Everything passes the fault proxy, which records it.
    """
    before, rows, journals, summary = set(mcp_processes()), [], {}, []
    t = time.monotonic()
    with LocalModelServer(local_model, tools=True, n_ctx=2048) as srv, ChaosProxy(upstream=srv.api_base) as proxy:
        for name, prompt, tests in TASKS[:tasks]:
            key = new_key(f"tool-real-{name}")
            route = _split_route(srv, proxy.url, max_tokens=max_tokens, temperature=0, seed=seed,
                                 extra_headers={"X-Chaos-Key": key})
            result, err = await run(route, [{"role": "user", "content": prompt}],
                                    [PythonCode(name, tests, timeout=5)], tool_config(max_attempts=2))
            attempts = attempts_of(result, err)
            journals[name] = proxy.journal(key)
            rows.append(attempt_rows(attempts, journals[name], name))
            tool_attempts = [a for a in attempts if a.stage == "tool"]
            summary.append({"task": name, "attempts": len(attempts), "outcome": type(err).__name__ if err else "ok",
                            "first_passed": bool(attempts) and attempts[0].outcome == "ok",
                            "reached_tool_stage": bool(tool_attempts),
                            "tool_calls": sum(len(a.tool_calls) for a in tool_attempts),
                            "passed_after_tool": any(a.outcome == "ok" for a in tool_attempts),
                            "requests": len(journals[name])})
    return {"rows": pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(), "journals": journals,
            "summary": pd.DataFrame(summary), "seconds": time.monotonic() - t,
            "left": sorted(set(mcp_processes()) - before), "model": local_model}


SAVED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tool_stage.json"


def saved_benchmark(path: Path = SAVED) -> dict[str, Any] | None:
    """The committed ``benchmarks/tool_stage.py`` run (22 code tasks, SmolLM2 and Gemma), or
    ``None`` when the file is absent. A file that does not parse raises, naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-run benchmarks/tool_stage.py") from exc
