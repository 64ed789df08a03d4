"""Does the tool stage turn failing code into passing code? SmolLM2 and Gemma, with run_python.

For each of the project's code tasks (:data:`TASKS`: the workbook's ``second_largest`` and
21 more written for this benchmark, each checked by ``retrylib.validators.PythonCode``),
with each embedded model:

1. **first answer**: the task alone, the model's plain alias, temperature 0; validated;
2. for every failing first answer, the same feedback message (the validator's errors, as
   the retry loop writes them) is sent two ways:

   - **re-ask** (the baseline: what the loop does without a tool stage): the plain alias,
     one request;
   - **tool stage**: :func:`retrylib.tools.run_tool_rounds` with retrylib's ``run_python``
     MCP server (``ToolSession``), the feedback asking the model to test its fix with the
     tool. Tool rounds go to the model's ``-tools`` alias (``chatml-function-calling``,
     the only format that produces ``tool_calls``), the first round forcing ``run_python``
     (in ``auto`` mode these models do not choose the tool: see ``auto`` below); the final
     request, without tools, goes to the plain alias, whose template does not HTML-escape
     the prompt;
   - **auto** (on the first ``--auto-sample`` failing cases): the tool stage with
     ``tool_choice="auto"`` in every round, to measure how often the model picks a tool.

   The final answers are validated like the first ones.

Reported per model: failing first answers, how many the tool stage and the re-ask turned
into passing ones, tool calls made (and how many ran: arguments that parsed), their
outcomes, and the time of each arm. ``python benchmarks/tool_stage.py`` writes
``benchmarks/results/tool_stage.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from retrylib import make_call
from retrylib.extract import extract_text
from retrylib.feedback import feedback_text
from retrylib.testing.local import LocalModelServer
from retrylib.tools import ToolSession, default_debug_tool_config, run_tool_rounds
from retrylib.validators import PythonCode
from retrylib.validators.base import ValidationContext

OUT = Path(__file__).resolve().parent / "results" / "tool_stage.json"
TOOL_HINT = ("Before you answer, test your fix: call run_python with code that defines your "
             "fixed function and prints its result on the failing example.")


@dataclass(frozen=True)
class Task:
    """One code task: the function, what it must do, and its tests (PythonCode pairs)."""

    name: str
    signature: str
    does: str
    tests: tuple[Any, ...]

    @property
    def prompt(self) -> str:
        return (f"Write a Python function `{self.signature}` that {self.does}. "
                "Reply with the code in one ```python block.")

    def validator(self) -> PythonCode:
        return PythonCode(self.name, list(self.tests), timeout=5)


TASKS = [
    # workbook/experiments/integration.py's CODE_TASK and CODE_TESTS
    Task("second_largest", "second_largest(nums)", "returns the second largest distinct number "
         "in the list `nums`, or None when there is none",
         (([[3, 1, 2]], 2), ([[5, 5]], None), ([[]], None), ([[-1, -2, -3]], -2))),
    Task("add", "add(a, b)", "returns the sum of a and b", (((1, 2), 3), ((-1, 1), 0))),
    Task("is_palindrome", "is_palindrome(s)", "returns True when the string s reads the same "
         "backwards, ignoring case and every character that is not a letter or a digit",
         (("A man, a plan, a canal: Panama", True), ("abc", False), ("", True))),
    Task("fizzbuzz", "fizzbuzz(n)", "returns a list of strings for 1..n: 'Fizz' for multiples "
         "of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, else the number",
         ((3, ["1", "2", "Fizz"]), (5, ["1", "2", "Fizz", "4", "Buzz"]),
          "assert fizzbuzz(15)[-1] == 'FizzBuzz'")),
    Task("factorial", "factorial(n)", "returns n! for an integer n >= 0", ((0, 1), (5, 120))),
    Task("reverse_words", "reverse_words(s)", "returns the words of s in reverse order, "
         "separated by single spaces", (("hello world", "world hello"), ("a b c", "c b a"))),
    Task("count_vowels", "count_vowels(s)", "returns how many vowels (a, e, i, o, u, either "
         "case) the string s holds", (("hello", 2), ("AEIOU", 5), ("xyz", 0))),
    Task("fibonacci", "fibonacci(n)", "returns the n-th Fibonacci number, with fibonacci(0) "
         "== 0 and fibonacci(1) == 1", ((0, 0), (1, 1), (10, 55))),
    Task("is_prime", "is_prime(n)", "returns True when the integer n is a prime number",
         ((2, True), (1, False), (9, False), (13, True))),
    Task("flatten", "flatten(items)", "returns a flat list of the values in the nested list "
         "items, at any depth, in order", (([[[1, [2, [3]]], 4]], [1, 2, 3, 4]), ([[]], []))),
    Task("max_subarray_sum", "max_subarray_sum(nums)", "returns the largest sum of a "
         "non-empty contiguous sub-list of nums",
         (([[-2, 1, -3, 4, -1, 2, 1, -5, 4]], 6), ([[1]], 1), ([[-3, -1]], -1))),
    Task("word_count", "word_count(s)", "returns a dict mapping each lower-cased word of s "
         "(split on whitespace) to how often it occurs",
         (("a b a", {"a": 2, "b": 1}), ("Hi hi", {"hi": 2}))),
    Task("celsius_to_fahrenheit", "celsius_to_fahrenheit(c)", "converts a temperature in "
         "degrees Celsius to degrees Fahrenheit", ((0, 32), (100, 212), (-40, -40))),
    Task("unique_sorted", "unique_sorted(nums)", "returns the distinct values of nums in "
         "increasing order, as a list", (([[3, 1, 3, 2]], [1, 2, 3]), ([[]], []))),
    Task("gcd", "gcd(a, b)", "returns the greatest common divisor of two integers >= 0",
         (((12, 18), 6), ((7, 5), 1), ((0, 9), 9))),
    Task("run_length_encode", "run_length_encode(s)", "returns the run-length encoding of s: "
         "each run of one character as the character followed by its count, as in "
         "'aaabcc' -> 'a3b1c2'", (("aaabcc", "a3b1c2"), ("", ""), ("z", "z1"))),
    Task("capitalize_words", "capitalize_words(s)", "returns s with the first letter of every "
         "space-separated word in upper case", (("hello world", "Hello World"), ("a", "A"))),
    Task("sum_digits", "sum_digits(n)", "returns the sum of the decimal digits of the integer n "
         "(ignoring its sign)", ((123, 6), (0, 0), (-45, 9))),
    Task("merge_sorted", "merge_sorted(a, b)", "merges two sorted lists into one sorted list",
         ((([1, 3], [2, 4]), [1, 2, 3, 4]), (([], [1]), [1]))),
    Task("roman_to_int", "roman_to_int(s)", "converts a Roman numeral string to an integer",
         (("III", 3), ("IV", 4), ("MCMXCIV", 1994))),
    Task("binary_search", "binary_search(nums, target)", "returns the index of target in the "
         "sorted list nums, or -1 when it is absent",
         ((([1, 3, 5, 7], 5), 2), (([1, 3], 4), -1), (([], 1), -1))),
    Task("is_anagram", "is_anagram(a, b)", "returns True when the strings a and b use the "
         "same letters the same number of times",
         ((("listen", "silent"), True), (("a", "b"), False))),
]


# One correct solution per task: `--self-check` shows every task's tests can pass.
REFERENCE = {
    "second_largest": "def second_largest(nums):\n    s = sorted(set(nums))\n    return s[-2] if len(s) > 1 else None",
    "add": "def add(a, b):\n    return a + b",
    "is_palindrome": "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]",
    "fizzbuzz": "def fizzbuzz(n):\n    return ['FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else str(i) for i in range(1, n + 1)]",
    "factorial": "import math\ndef factorial(n):\n    return math.factorial(n)",
    "reverse_words": "def reverse_words(s):\n    return ' '.join(s.split()[::-1])",
    "count_vowels": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
    "fibonacci": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "is_prime": "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))",
    "flatten": "def flatten(items):\n    out = []\n    for x in items:\n        out += flatten(x) if isinstance(x, list) else [x]\n    return out",
    "max_subarray_sum": "def max_subarray_sum(nums):\n    best = cur = nums[0]\n    for x in nums[1:]:\n        cur = max(x, cur + x)\n        best = max(best, cur)\n    return best",
    "word_count": "def word_count(s):\n    out = {}\n    for w in s.lower().split():\n        out[w] = out.get(w, 0) + 1\n    return out",
    "celsius_to_fahrenheit": "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32",
    "unique_sorted": "def unique_sorted(nums):\n    return sorted(set(nums))",
    "gcd": "import math\ndef gcd(a, b):\n    return math.gcd(a, b)",
    "run_length_encode": "import itertools\ndef run_length_encode(s):\n    return ''.join(f'{k}{len(list(g))}' for k, g in itertools.groupby(s))",
    "capitalize_words": "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))",
    "sum_digits": "def sum_digits(n):\n    return sum(int(d) for d in str(abs(n)))",
    "merge_sorted": "def merge_sorted(a, b):\n    return sorted(a + b)",
    "roman_to_int": "def roman_to_int(s):\n    v = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n    return sum(-v[c] if i + 1 < len(s) and v[c] < v[s[i + 1]] else v[c] for i, c in enumerate(s))",
    "binary_search": "import bisect\ndef binary_search(nums, target):\n    i = bisect.bisect_left(nums, target)\n    return i if i < len(nums) and nums[i] == target else -1",
    "is_anagram": "def is_anagram(a, b):\n    return sorted(a) == sorted(b)",
}


async def self_check() -> list[str]:
    """The tasks whose reference solution fails its own tests (should be none)."""
    return [t.name for t in TASKS if not (await validate(t, REFERENCE[t.name]))[0]]


async def validate(task: Task, text: str | None) -> tuple[bool, list[str], list[str]]:
    r = await task.validator().validate(text or "", ValidationContext())
    return r.valid, list(r.errors), list(r.suggestions)


def _text(response: Any) -> str:
    try:
        return extract_text(response)
    except Exception:
        return ""


def _calls(rounds: Any) -> list[dict[str, Any]]:
    return [{"round": c.round, "ran": c.arguments is not None, "error": c.error,
             "is_error": c.is_error, "code": (c.arguments or {}).get("code", c.raw_arguments)[:300],
             "result": c.text[:300], "seconds": round(c.duration, 3)} for c in rounds.calls]


async def run_model(model: str, tasks: list[Task], args: argparse.Namespace) -> dict[str, Any]:
    """Every arm for one model; the cases and the summary."""
    kw = {"max_tokens": args.max_tokens, "temperature": 0, "timeout": args.request_timeout}
    t_start = time.monotonic()
    with LocalModelServer(model, tools=True, n_ctx=args.n_ctx) as srv:
        plain = make_call(f"openai/{srv.model}", api_base=srv.api_base)
        tooled = make_call(f"openai/{srv.tools_model}", api_base=srv.api_base)

        async def split(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
            """Requests offering tools go to the -tools alias, the final one to the plain one."""
            return await (tooled if "tools" in kwargs else plain)(messages, **kwargs)

        async def ask(messages: list[dict[str, Any]]) -> tuple[str, str | None]:
            """The plain alias's answer, or ("", the error) when the request failed."""
            try:
                return _text(await plain(messages, **kw)), None
            except Exception as exc:  # a timeout under load: that answer failed, measured
                return "", f"{type(exc).__name__}: {exc}"[:200]

        cases: list[dict[str, Any]] = []
        # Plain-alias arms first, then the tool arms: the server swaps models on a change.
        for task in tasks:
            t0 = time.monotonic()
            first, request_error = await ask([{"role": "user", "content": task.prompt}])
            ok, errors, suggestions = await validate(task, first)
            case: dict[str, Any] = {"task": task.name, "first_pass": ok, "first_seconds":
                                    round(time.monotonic() - t0, 2), "first_errors": errors[:3],
                                    "first_answer": first[:400], "first_request_error": request_error}
            if not ok:
                feedback = feedback_text(errors, suggestions)
                history = [{"role": "user", "content": task.prompt},
                           {"role": "assistant", "content": first}]
                case["_history"], case["_feedback"] = history, feedback
                t0 = time.monotonic()
                again, case["reask_request_error"] = await ask(
                    [*history, {"role": "user", "content": feedback}])
                case["reask_pass"] = (await validate(task, again))[0]
                case["reask_seconds"] = round(time.monotonic() - t0, 2)
            cases.append(case)
            print(f"  {model} {task.name}: first {'pass' if ok else 'FAIL'}"
                  + ("" if ok else f", re-ask {'pass' if case['reask_pass'] else 'fail'}"), flush=True)
        failing = [c for c in cases if not c["first_pass"]]
        async with ToolSession(default_debug_tool_config(tools=("run_python",))) as session:
            arms = [("tool", True, failing), ("auto", None, failing[: args.auto_sample])]
            for arm, force, todo in arms:
                for case in todo:
                    task = next(t for t in tasks if t.name == case["task"])
                    msgs = [*case["_history"], {"role": "user", "content": f"{case['_feedback']}\n\n{TOOL_HINT}"}]
                    t0 = time.monotonic()
                    try:
                        r = await run_tool_rounds(split, msgs, kw, session, max_rounds=args.max_rounds,
                                                  tool_timeout=10, force_tool=force)
                    except Exception as exc:  # a request that timed out: the arm failed, measured
                        case[arm] = {"pass": False, "error": f"{type(exc).__name__}: {exc}"[:300],
                                     "seconds": round(time.monotonic() - t0, 2)}
                        continue
                    passed, errors, _ = await validate(task, r.text)
                    case[arm] = {"pass": passed, "seconds": round(time.monotonic() - t0, 2),
                                 "requests": r.requests, "ended": r.ended, "calls": _calls(r),
                                 "final_errors": errors[:2], "final_answer": (r.text or "")[:400]}
                    print(f"  {model} {task.name} [{arm}]: {len(r.calls)} call(s), "
                          f"{'pass' if passed else 'fail'}, {case[arm]['seconds']}s", flush=True)
        for c in cases:
            c.pop("_history", None)
            c.pop("_feedback", None)
    return {"model": model, "cases": cases, "summary": summarize(cases),
            "seconds": round(time.monotonic() - t_start, 1)}


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts and times of one model's run."""
    failing = [c for c in cases if not c["first_pass"]]
    out: dict[str, Any] = {"tasks": len(cases), "first_pass": len(cases) - len(failing),
                           "first_fail": len(failing),
                           "reask_fixed": sum(bool(c.get("reask_pass")) for c in failing)}
    for arm in ("tool", "auto"):
        ran = [c[arm] for c in failing if arm in c]
        calls = [k for r in ran for k in r.get("calls", [])]
        secs = [r["seconds"] for r in ran]
        out[arm] = {"cases": len(ran), "fixed": sum(r["pass"] for r in ran),
                    "cases_with_a_tool_call": sum(bool(r.get("calls")) for r in ran),
                    "tool_calls": len(calls), "tool_calls_run": sum(k["ran"] for k in calls),
                    "call_outcomes": dict(Counter(k["error"] or "ok" for k in calls)),
                    "request_errors": sum("error" in r for r in ran),
                    "seconds_total": round(sum(secs), 1),
                    "seconds_median": round(statistics.median(secs), 2) if secs else None}
    out["request_errors"] = {"first": sum(bool(c.get("first_request_error")) for c in cases),
                             "reask": sum(bool(c.get("reask_request_error")) for c in failing)}
    out["reask_seconds_total"] = round(sum(c.get("reask_seconds", 0) for c in failing), 1)
    out["first_seconds_total"] = round(sum(c["first_seconds"] for c in cases), 1)
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| model | tasks | first pass | failing | re-ask fixed | tool stage fixed | cases with a tool call | tool calls (ran) | outcomes | tool stage s (median) | auto: cases with a call / fixed |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, t, a = r["summary"], r["summary"]["tool"], r["summary"]["auto"]
        rows.append(f"| {r['model']} | {s['tasks']} | {s['first_pass']} | {s['first_fail']} | "
                    f"{s['reask_fixed']} | {t['fixed']} | {t['cases_with_a_tool_call']}/{t['cases']} | "
                    f"{t['tool_calls']} ({t['tool_calls_run']}) | {t['call_outcomes']} | "
                    f"{t['seconds_total']} ({t['seconds_median']}) | "
                    f"{a['cases_with_a_tool_call']}/{a['cases']} / {a['fixed']} |")
    return "\n".join(rows)


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="smollm2,gemma3")
    p.add_argument("--limit", type=int, default=len(TASKS), help="tasks per model")
    p.add_argument("--max-tokens", type=int, default=192)
    p.add_argument("--max-rounds", type=int, default=1)
    p.add_argument("--auto-sample", type=int, default=4)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--resume", action="store_true", help="keep the models already in --out")
    p.add_argument("--self-check", action="store_true", help="validate the reference solutions only")
    args = p.parse_args(argv)
    bad = await self_check()
    if bad or args.self_check:
        print(f"{len(TASKS)} tasks; reference solutions failing their tests: {bad or 'none'}")
        return 1 if bad else 0
    t0 = time.monotonic()
    load_before = os.getloadavg()  # other jobs on a 2-core machine slow the model down
    done: dict[str, Any] = {}
    if args.resume and args.out.exists():  # models finished by an earlier, interrupted run
        done = {r["model"]: r for r in json.loads(args.out.read_text()).get("results", [])}
    results = []
    for m in args.models.split(","):
        results.append(done.get(m) or await run_model(m, TASKS[: args.limit], args))
        write(args, results, t0, load_before, partial=True)
    record = write(args, results, t0, load_before, partial=False)
    print(record["table"])
    print(f"total {record['seconds']} s; written to {args.out}")
    return 0


def write(args: argparse.Namespace, results: list[dict[str, Any]], t0: float,
          load_before: tuple[float, float, float], partial: bool) -> dict[str, Any]:
    """Write what was measured so far (``partial``: more models to come)."""
    record = {"partial": partial, "benchmark": "tool_stage", "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(),
                          "load_average_before": [round(x, 2) for x in load_before],
                          "load_average_after": [round(x, 2) for x in os.getloadavg()]},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "seconds": round(time.monotonic() - t0, 1), "results": results,
              "table": table(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    return record


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
