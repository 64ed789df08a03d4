"""Notebook 03 (integration): retrylib against real servers, end to end.

Every function here makes real calls (the embedded model, through the fault proxy where the
wire has to be observed) and returns plain data (dicts and DataFrames) for the notebook to
check and plot. What went over the wire is read back from the proxy's journal, per
``X-Chaos-Key``, never taken from what a client says it sent.

Arguments shared by the functions: ``env`` is the notebook's
:class:`~workbook.experiments.Session` (model, fault proxy); ``seed`` seeds the model's
sampling; ``max_tokens`` bounds each answer. A run dict (from ``_run``) holds ``outcome``
(``ok`` or the error's class name), ``result``, ``attempts``, ``metrics``, ``error`` and ``wall``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import litellm
import numpy as np
import pandas as pd
import psutil

from retrylib import validators as V
from retrylib.cache import disable_cache, init_cache
from retrylib.config import RetryConfig
from retrylib.errors import HumanReviewNeededError, RetryError
from retrylib.manager import retry_with_validation

# litellm prints a "Give Feedback" banner for every exception; the report needs none of them.
litellm.suppress_debug_info = True

#: The sample sizes ``quick=True`` caps (the notebook's own values win when smaller).
RUN = uuid.uuid4().hex[:6]
QUICK_CAPS = {"overhead_pairs": 5, "memory_calls": 16, "cache_prompts": 2, "cache_repeats": 3}
CODE_TASK = ("Write a Python function `second_largest(nums)` that returns the second largest "
             "distinct number in the list `nums`, or None when there is none. Reply with the "
             "code in one ```python block.")
CODE_TESTS = [([[3, 1, 2]], 2), ([[5, 5]], None), ([[]], None), ([[-1, -2, -3]], -2)]
MCP_CONFIG = {"mcpServers": {"python-debugger": {"command": "python", "args": ["-m", "pdb"]}}}
# Scripted code answers: a syntax error, a wrong name, a failing test, then a correct one.
BAD_CODE = ["```python\ndef second_largest(nums)\n    return max(nums)\n```",
            "```python\ndef second(nums):\n    return 0\n```",
            "```python\ndef second_largest(nums):\n    return max(nums)\n```"]
GOOD_CODE = ("```python\ndef second_largest(nums):\n    s = sorted(set(nums))\n"
             "    return s[-2] if len(s) > 1 else None\n```")


def _key(name: str) -> str:
    """A proxy key unique to this kernel: a shared proxy may serve other runs too."""
    return f"03-{RUN}-{name}"


def sample_sizes(quick: bool, **sizes: int) -> dict[str, int]:
    """The sample sizes to use: as given, or capped by :data:`QUICK_CAPS` in quick mode."""
    return {k: min(v, QUICK_CAPS.get(k, v)) if quick else v for k, v in sizes.items()}


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def _run(call: Any, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """One ``retry_with_validation`` call, whatever its end: result or error, both recorded."""
    t = time.perf_counter()
    try:
        r = await retry_with_validation(call, messages, **kw)
        out = {"outcome": "ok", "result": r, "attempts": r.attempts, "metrics": r.metrics, "error": None}
    except RetryError as exc:
        out = {"outcome": type(exc).__name__, "result": None, "attempts": exc.attempts,
               "metrics": exc.metrics, "error": exc}
    out["wall"] = time.perf_counter() - t
    return out


def attempt_log(attempts: list[Any]) -> str:
    """``1:transport_error(InternalServerError 500) → 2:ok``: one call's attempts in a line."""
    parts = []
    for a in attempts:
        why = (f"({a.error_type} {a.status_code or ''})".replace(" )", ")") if a.error_type
               else f"({a.validation_errors[0][:40]})" if a.validation_errors else "")
        parts.append(f"{a.number}:{a.outcome}{why}")
    return " → ".join(parts)


# -- parameters pass through both routes ----------------------------------------------------

def sent_parameters(seed: int, max_tokens: int) -> dict[str, Any]:
    """The request parameters the pass-through test sends (besides ``extra_headers``)."""
    return {"temperature": 0.3, "max_tokens": max_tokens, "top_p": 0.9, "stop": ["\n\n\n"],
            "seed": seed, "presence_penalty": 0.1, "frequency_penalty": 0.1,
            "response_format": {"type": "json_object"}, "mcp_config": MCP_CONFIG}


async def passthrough(env: Any, seed: int, max_tokens: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Send every parameter through both routes and read each request body back.

    Args:
        env, seed, max_tokens: see the module docstring.

    Returns:
        One row per (route, parameter) with what was sent, what the proxy received and
        whether it arrived on every attempt; and per route the response type and counts.
    """
    sent = sent_parameters(seed, max_tokens)
    rows, routes = [], {}
    for via, label in (("chaos", "litellm openai/<name>"), ("proxy", "plain HTTP proxy/<name>")):
        key = _key(f"pass-{via}")
        env.chaos.clear(key)
        headers = {"X-Chaos-Key": key, "X-Workbook-Trace": f"trace-{seed}"}
        run = await _run(env.call(via), _user("Reply with a JSON object with a key 'name'."),
                         validators=[V.JsonObject()], extra_headers=headers,
                         config=RetryConfig(max_attempts=2, initial_delay=0, attempt_timeout=300),
                         **sent)
        journal = env.chaos.journal(key)
        routes[label] = {"response_type": type(run["result"].response).__name__ if run["result"] else None,
                         "outcome": run["outcome"], "attempts": len(run["attempts"]),
                         "requests": len(journal)}
        for name, value in {**sent, "extra_headers": headers}.items():
            if name == "extra_headers":
                got = [{k: e["headers"].get(k.lower()) for k in value} for e in journal]
            else:
                got = [e["body"].get(name) if isinstance(e["body"], dict) else None  # type: ignore[misc]
                       for e in journal]
            rows.append({"route": label, "parameter": name, "sent": json.dumps(value),
                         "received": json.dumps(got[0]) if got else None,
                         "arrived": bool(got) and all(g == value for g in got)})
    return pd.DataFrame(rows), routes


# -- validators that call models or run code ----------------------------------------------

async def judge_run(env: Any, seed: int, max_tokens: int, scripted: bool) -> dict[str, Any]:
    """An answer judged by ``LLMJudge``, whose own calls go through the proxy on their own key.

    Args:
        scripted: the answers and verdicts are scripted ``reply:`` tokens (deterministic:
            first rejected, then accepted); otherwise the real model answers and judges.

    Returns:
        The run, the journals of the outer call and of the judge, and the judge's rubric.
    """
    key = _key(f"judge-{'scripted' if scripted else 'real'}")
    jkey = key + "-judge"
    for k in (key, jkey):
        env.chaos.clear(k)
    rubric = "The answer is a single lowercase word naming a colour."
    if scripted:
        env.chaos.set_plan(["reply:Blue Sky Today", "reply:blue"], key)
        env.chaos.set_plan(['reply:{"pass": false, "reason": "It is three words, not one."}',
                            'reply:{"pass": true, "reason": "One lowercase colour word."}'], jkey)
    judge = V.LLMJudge(f"openai/{env.proxy_model}", rubric, api_base=env.chaos.url,
                       config=RetryConfig(max_attempts=2, initial_delay=0, attempt_timeout=300),
                       extra_headers={"X-Chaos-Key": jkey}, max_tokens=max_tokens, temperature=0,
                       seed=seed, response_format={"type": "json_object"})
    run = await _run(env.call("chaos", max_tokens=16, temperature=0.7, seed=seed),
                     _user("Name one colour of the rainbow. Reply with one lowercase word."),
                     validators=[judge], extra_headers={"X-Chaos-Key": key},
                     config=RetryConfig(max_attempts=2, initial_delay=0, attempt_timeout=300))
    return {**run, "journal": env.chaos.journal(key), "judge_journal": env.chaos.journal(jkey),
            "rubric": rubric}


def code_config(tool_after: int, human_after: int) -> RetryConfig:
    """The original design's code-generation ladder: a debugging tool at N, a human at M."""
    return RetryConfig(max_attempts=human_after, initial_delay=0, attempt_timeout=300,
                       max_attempts_before_tool_use=tool_after, max_attempts_before_human=human_after,
                       debug_tool_name="python-debugger", debug_tool_mcp_config=MCP_CONFIG,
                       original_user_prompt=CODE_TASK)


async def code_run(env: Any, tool_after: int, human_after: int, max_tokens: int, seed: int,
                   plan: list[str] | None = None, key: str = "code") -> dict[str, Any]:
    """Ask for code, validated by ``PythonCode`` (tests run in a child interpreter).

    Args:
        plan: scripted ``reply:`` answers; ``None`` lets the real model answer.

    Returns:
        The run plus its journal and the ``HumanReviewNeededError`` summary, if one was raised.
    """
    key = _key(key)
    env.chaos.clear(key)
    if plan:
        env.chaos.set_plan([f"reply:{p}" for p in plan], key)
    run = await _run(env.call("chaos", max_tokens=max_tokens, temperature=0.2, seed=seed),
                     _user(CODE_TASK), validators=[V.PythonCode("second_largest", CODE_TESTS)],
                     config=code_config(tool_after, human_after), extra_headers={"X-Chaos-Key": key})
    err = run["error"]
    run["human"] = err.summary() if isinstance(err, HumanReviewNeededError) else None
    run["journal"] = env.chaos.journal(key)
    return run


def code_plans(human_after: int) -> dict[str, list[str]]:
    """Scripted answers: fixed on the last attempt before the human, and never fixed."""
    bad = (BAD_CODE * human_after)[:human_after]
    return {"scripted: fixed on the last attempt": [*bad[:-1], GOOD_CODE], "scripted: never fixed": bad}


def escalation_table(run: dict[str, Any], tool_after: int) -> pd.DataFrame:
    """Per attempt: the stage expected from the failures before it, the stage recorded, and
    what the request on the wire carried (``mcp_config``, the tool's name in the prompt)."""
    rows, failures = [], 0
    for a, entry in zip(run["attempts"], run["journal"], strict=False):
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        last = (body.get("messages") or [{}])[-1].get("content") or ""
        rows.append({"attempt": a.number, "failures_before": failures,
                     "expected_stage": "tool" if failures >= tool_after else "normal",
                     "stage": a.stage, "outcome": a.outcome, "mcp_config_on_wire": "mcp_config" in body,
                     "mcp_config_equal": body.get("mcp_config") == MCP_CONFIG,
                     "tool_named_in_prompt": "python-debugger" in last,
                     "first_error": (a.validation_errors or ("",))[0][:90]})
        failures += a.outcome == "validation_failed"
    return pd.DataFrame(rows)



def escalation_facts(run: dict[str, Any], tool_after: int, human_after: int) -> dict[str, Any]:
    """What the escalation check asserts, computed from the attempts and the wire.

    Returns:
        ``counts_match`` (attempts == table rows == requests), ``stages_match`` (each stage is
        the one the failures before it call for), ``mcp_where_tool`` (``mcp_config`` on the
        wire, unchanged, exactly on tool-stage attempts), ``tool_named_where_tool`` (the
        feedback names the tool exactly then), ``ending`` (``solved`` before M failures,
        ``human`` at exactly M, or ``wrong``), and ``failures``, ``stages``.
    """
    t = escalation_table(run, tool_after)
    tool = t.expected_stage == "tool"
    fails = int((t.outcome == "validation_failed").sum())
    solved = run["outcome"] == "ok" and fails < human_after and len(t) > 0 and t.outcome.iloc[-1] == "ok"
    human = run["outcome"] == "HumanReviewNeededError" and fails == human_after == len(t)
    return {"counts_match": len(t) == len(run["attempts"]) == len(run["journal"]),
            "stages_match": bool((t.stage == t.expected_stage).all()),
            "mcp_where_tool": bool((t.mcp_config_on_wire == tool).all() and t.mcp_config_equal[tool].all()),
            "tool_named_where_tool": bool((t.tool_named_in_prompt == tool).all()),
            "ending": "solved" if solved else "human" if human else "wrong",
            "failures": fails, "stages": t.stage.tolist()}

# -- validator chaining ---------------------------------------------------------------------

CHAIN_SPEC = [{"type": "any_of", "params": {"validators": [
    {"type": "all_of", "params": {"validators": [
        "json_object", {"type": "fields_present", "params": {"fields": ["name", "age"]}}]}},
    {"type": "regex", "params": {"pattern": r"^NAME: [A-Za-z]+$", "mode": "search",
                                 "flags": ["MULTILINE"]}}]}}]
#: Answers and whether the chain must accept them.
CHAIN_SAMPLES = [('{"name": "Ada", "age": 36}', True), ('{"name": "Ada"}', False),
                 ("NAME: Ada", True), ("not json at all", False),
                 ('```json\n{"name": "Ada", "age": 3}\n```', True), ("[1, 2]", False)]


def chain_by_hand() -> Any:
    """The same chain as :data:`CHAIN_SPEC`, built from the classes."""
    import re

    return V.AnyOf(V.AllOf(V.JsonObject(), V.FieldsPresent(["name", "age"])),
                   V.RegexMatch(r"^NAME: [A-Za-z]+$", flags=re.MULTILINE))


async def chain_verdicts() -> pd.DataFrame:
    """Each sample judged by the registry-built and the hand-built chain."""
    built, hand = V.build_validators(CHAIN_SPEC)[0], chain_by_hand()
    rows = []
    for text, expected in CHAIN_SAMPLES:
        a = await built.validate(text, V.ValidationContext())
        b = await hand.validate(text, V.ValidationContext())
        rows.append({"answer": text, "expected_valid": expected, "spec_valid": a.valid,
                     "hand_valid": b.valid, "same_errors": a.errors == b.errors,
                     "errors": " | ".join(a.errors)[:160]})
    return pd.DataFrame(rows)


async def revalidate(attempts: list[Any]) -> list[bool]:
    """The hand-built chain's verdict on each attempt's text (``False`` when there was none)."""
    hand = chain_by_hand()
    return [a.text is not None and (await hand.validate(a.text, V.ValidationContext())).valid
            for a in attempts]


async def chain_run(env: Any, seed: int, max_tokens: int, scripted: bool) -> dict[str, Any]:
    """The registry-built chain in a real retry loop.

    Args:
        scripted: first an answer missing ``age``, then a valid one (``reply:`` tokens);
            otherwise the real model answers, with ``response_format`` JSON.

    Returns:
        The run plus the ``journal`` of its requests.
    """
    key = _key(f"chain-{'scripted' if scripted else 'real'}")
    env.chaos.clear(key)
    if scripted:
        env.chaos.set_plan(['reply:{"name": "Ada"}', 'reply:{"name": "Ada", "age": 36}'], key)
    run = await _run(env.call("chaos", max_tokens=max_tokens, temperature=0.2, seed=seed),
                     _user("Reply with a JSON object with the keys name (a string) and age (an integer)."),
                     validators=V.build_validators(CHAIN_SPEC), extra_headers={"X-Chaos-Key": key},
                     response_format=None if scripted else {"type": "json_object"},
                     config=RetryConfig(max_attempts=3, initial_delay=0, attempt_timeout=300))
    return {**run, "journal": env.chaos.journal(key)}


# -- overhead, memory, cache, bottlenecks -----------------------------------------------------

async def overhead(env: Any, pairs: int, max_tokens: int, seed: int) -> pd.DataFrame:
    """``retry_with_validation`` around one real call vs the same call made with litellm alone.

    The pairs are interleaved and their order alternates (ABBA), so drift in the machine's
    load hits both arms alike. Same request, temperature 0 and a seed: both arms decode the
    same tokens.

    Returns:
        One row per (pair, arm): wall seconds, tokens out, and for the wrapped arm the time
        spent inside the route call (``call_seconds``) and around it (``loop_seconds``).
    """
    msgs = _user("Count from 1 to 40, separated by spaces.")
    key = "sk-local-no-key" if env.api_base and "127.0.0.1" in env.api_base else None
    kw = {"max_tokens": max_tokens, "temperature": 0, "seed": seed}
    wrapped_call = env.call("direct", **kw)
    config = RetryConfig(max_attempts=2, initial_delay=0, attempt_timeout=300)

    async def direct() -> dict[str, Any]:
        t = time.perf_counter()
        r = await litellm.acompletion(model=env.model, api_base=env.api_base, api_key=key, messages=msgs,
                                      num_retries=0, timeout=300, **kw)
        wall = time.perf_counter() - t
        return {"seconds": wall, "tokens_out": r.usage.completion_tokens, "call_seconds": wall,
                "loop_seconds": 0.0}

    async def wrapped() -> dict[str, Any]:
        t = time.perf_counter()
        r = await retry_with_validation(wrapped_call, msgs, [V.ResponseNotEmpty()], config)
        wall = time.perf_counter() - t
        inside = sum(a.duration for a in r.attempts)
        return {"seconds": wall, "tokens_out": r.metrics["tokens_out"], "call_seconds": inside,
                "loop_seconds": wall - inside, "attempts": len(r.attempts)}

    await direct()
    await wrapped()  # warm-up: litellm's first call imports and builds its clients
    rows = []
    for i in range(pairs):
        order = (("direct", direct), ("wrapped", wrapped))
        for arm, fn in order if i % 2 == 0 else order[::-1]:
            rows.append({"pair": i, "arm": arm, **await fn()})
    return pd.DataFrame(rows)


def overhead_summary(df: pd.DataFrame) -> dict[str, float]:
    """Ratio wrapped/direct per pair: median and IQR; the loop's own share of a wrapped call.

    Args:
        df: :func:`overhead`'s rows.

    Returns:
        ``pairs``, ``ratio_median``/``_q1``/``_q3``/``_iqr``, the arms' median seconds,
        ``loop_median_ms``, ``loop_share_median`` and ``same_tokens_share`` (pairs whose
        arms decoded as many tokens).
    """
    w = df[df.arm == "wrapped"].set_index("pair")
    d = df[df.arm == "direct"].set_index("pair")
    ratio = w.seconds / d.seconds
    q1, med, q3 = np.percentile(ratio, [25, 50, 75])
    return {"pairs": len(ratio), "ratio_median": float(med), "ratio_q1": float(q1),
            "ratio_q3": float(q3), "ratio_iqr": float(q3 - q1),
            "direct_median_s": float(d.seconds.median()), "wrapped_median_s": float(w.seconds.median()),
            "loop_median_ms": float(w.loop_seconds.median() * 1000),
            "loop_share_median": float((w.loop_seconds / w.seconds).median()),
            "same_tokens_share": float((w.tokens_out == d.tokens_out).mean())}



async def route_costs(calls: int) -> pd.DataFrame:
    """Each route's own cost per call, against an upstream-free proxy (no model at all).

    The proxy answers at once, so the time inside the route call minus the time the proxy
    spent on the request is the client's: litellm's machinery, or the plain-HTTP route's
    ``httpx`` client. The routes alternate, one call each, ``calls`` times.

    Returns:
        One row per call: ``route``, ``inside_ms`` (the attempt's duration), ``server_ms``
        (the proxy's), ``client_ms`` (the difference).
    """
    from retrylib.client import make_call
    from retrylib.testing.chaos import ChaosProxy

    rows = []
    with ChaosProxy(upstream=None, upstream_free=True) as proxy:
        routes = {"litellm": make_call("openai/chaos", api_base=proxy.url),
                  "plain HTTP": make_call("proxy/chaos", api_base=proxy.url)}
        for i in range(calls + 1):  # the first round warms both routes up and is dropped
            for name, call in routes.items():
                key = f"route-{name}-{i}"
                r = await retry_with_validation(call, _user("hi"), config=RetryConfig(max_attempts=1),
                                                extra_headers={"X-Chaos-Key": key})
                inside, server = r.attempts[0].duration, proxy.journal(key)[0]["duration"]
                if i:
                    rows.append({"route": name, "inside_ms": inside * 1000, "server_ms": server * 1000,
                                 "client_ms": (inside - server) * 1000})
    return pd.DataFrame(rows)

async def memory_run(env: Any, calls: int, max_tokens: int, seed: int,
                     fault_every: int = 3) -> pd.DataFrame:
    """Many validated calls through the proxy; RSS after each, tracemalloc peak on every other.

    Every ``fault_every``-th call first gets a 503, so transport retries and backoff sleeps
    are part of the load (an odd ``fault_every`` puts them on traced and untraced calls alike). Each call has its own key; its journal is read, then dropped (the
    in-process proxy would otherwise hold every request in this process's memory).

    Returns:
        One row per call: wall time, RSS after, traced peak (``None`` when untraced), attempts,
        requests seen by the proxy, and the time split (server, inside the route call, sleeps).
    """
    proc, rows = psutil.Process(), []
    for i in range(calls):
        key, traced = _key(f"mem-{i}"), i % 2 == 1
        env.chaos.clear(key)
        if i % fault_every == fault_every - 1:
            env.chaos.set_plan("503,pass", key)
        config = RetryConfig(max_attempts=3, initial_delay=0.05, jitter="none", trace_memory=traced,
                             attempt_timeout=300)
        run = await _run(env.call("chaos", max_tokens=max_tokens, temperature=0.7, seed=seed + i),
                         _user(f"Say hello to user number {i} in one sentence."),
                         validators=[V.ResponseNotEmpty()], config=config,
                         extra_headers={"X-Chaos-Key": key})
        journal = env.chaos.journal(key)
        env.chaos.clear(key)
        m = run["metrics"]
        rows.append({"call": i, "outcome": run["outcome"], "wall": run["wall"],
                     "rss_mb": proc.memory_info().rss / 2**20, "traced": traced,
                     "peak_kb": m.get("process_traced_peak_bytes", np.nan) / 1024 if traced else np.nan,
                     "attempts": len(run["attempts"]), "requests": len(journal),
                     "server": sum(e["duration"] or 0.0 for e in journal),
                     "inside_call": sum(a.duration for a in run["attempts"]),
                     "sleeps": m.get("sleep_seconds", 0.0)})
    return pd.DataFrame(rows)


def growth(values: pd.Series) -> dict[str, float]:
    """Least-squares slope over the last half, and the growth it means across that half.

    Args:
        values: one value per call, in order (NaN for calls not measured).

    Returns:
        ``slope_per_call``, ``growth_last_half`` (slope times the half's length) and the
        half's ``median``.
    """
    tail = values.dropna().to_numpy()[len(values.dropna()) // 2:]
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) if len(tail) > 1 else 0.0
    return {"slope_per_call": slope, "growth_last_half": slope * len(tail),
            "median": float(np.median(tail)) if len(tail) else float("nan")}


def time_split(mem: pd.DataFrame) -> pd.DataFrame:
    """Where a call's time goes, from the untraced calls (tracing slows the client side).

    ``model server`` is what the proxy measured per request (upstream model + one proxy hop);
    ``client`` is the rest of the time inside the route call (litellm, HTTP); ``sleeps`` the
    backoff; ``retry loop + validation`` whatever remains of the wall time.
    """
    u = mem[~mem.traced]
    parts = {"model server (as the proxy saw it)": u.server,
             "client: litellm + HTTP": u.inside_call - u.server,
             "backoff sleeps": u.sleeps,
             "retry loop + validation": u.wall - u.inside_call - u.sleeps}
    total = float(u.wall.mean())
    return pd.DataFrame([{"component": k, "ms_per_call": float(v.mean() * 1000),
                          "min_ms": float(v.min() * 1000), "share": float(v.mean() / total)}
                         for k, v in parts.items()]).sort_values("share", ascending=False)


async def cache_run(env: Any, prompts: int, repeats: int, max_tokens: int, seed: int) -> dict[str, Any]:
    """Identical prompts repeated with litellm's in-memory cache on, then a rejected answer.

    Returns:
        ``calls`` (one row per call: prompt, repeat, hit, seconds, requests the proxy saw for
        that prompt so far) and ``evicted``: what happened when a cached answer was rejected
        and the same request was made again. The cache is removed at the end.
    """
    init_cache("memory")
    rows = []
    try:
        call = env.call("chaos", max_tokens=max_tokens, temperature=0, seed=seed)
        for p in range(prompts):
            env.chaos.clear(_key(f"cache-{p}"))
        for r in range(repeats):
            for p in range(prompts):
                key = _key(f"cache-{p}")
                run = await _run(call, _user(f"Name a fruit whose name starts with {'ABCDEFGH'[p % 8]}."),
                                 validators=[V.ResponseNotEmpty()], extra_headers={"X-Chaos-Key": key},
                                 config=RetryConfig(max_attempts=2, initial_delay=0, attempt_timeout=300))
                rows.append({"prompt": p, "repeat": r, "outcome": run["outcome"], "seconds": run["wall"],
                             "hit": bool(run["metrics"].get("cache_hits")),
                             "requests_so_far": len(env.chaos.journal(key)),
                             "error": str(run["error"])[:160] if run["error"] else ""})
                await asyncio.sleep(0.1)  # litellm writes the cache in a background task
        key, msgs = _key("cache-0"), _user("Name a fruit whose name starts with A.")
        before = len(env.chaos.journal(key))
        await asyncio.sleep(0.1)
        rejected = await _run(call, msgs, validators=[V.RegexMatch("^never-matches-ZZZ")],
                              extra_headers={"X-Chaos-Key": key}, config=RetryConfig(max_attempts=1))
        again = await _run(call, msgs, validators=[V.ResponseNotEmpty()],
                           extra_headers={"X-Chaos-Key": key}, config=RetryConfig(max_attempts=1))
        evicted = {"rejected_was_hit": bool(rejected["metrics"].get("cache_hits")),
                   "rejected_outcome": rejected["outcome"],
                   "rejected_error": str(rejected["error"])[:160] if rejected["error"] else "",
                   "again_was_hit": bool(again["metrics"].get("cache_hits")),
                   "requests_before": before, "requests_after": len(env.chaos.journal(key))}
    finally:
        disable_cache()
    return {"calls": pd.DataFrame(rows), "evicted": evicted}


def cache_summary(calls: pd.DataFrame) -> dict[str, float]:
    """Hit rate, median hit and miss time, and the model time the hits saved."""
    hits, misses = calls[calls.hit], calls[~calls.hit]
    hit_s = float(hits.seconds.median()) if len(hits) else float("nan")
    miss_s = float(misses.seconds.median()) if len(misses) else float("nan")
    return {"calls": len(calls), "hits": len(hits), "hit_rate": len(hits) / max(len(calls), 1),
            "hit_median_ms": hit_s * 1000, "miss_median_ms": miss_s * 1000,
            "saved_s": len(hits) * (miss_s - hit_s) if len(hits) and len(misses) else 0.0}


def bottlenecks(split: pd.DataFrame, over: dict[str, float], cache: pd.DataFrame,
                routes: pd.DataFrame) -> list[str]:
    """The findings, largest first, each computed from the measurements.

    Args:
        split: :func:`time_split`; over: :func:`overhead_summary`; cache: the cache run's
            calls; routes: :func:`route_costs`.

    Returns:
        One sentence per finding.
    """
    lines = [f"{r.component}: {r.ms_per_call:.0f} ms per call ({r.share:.0%} of the wall time)"
             for r in split.itertuples()]
    med = routes.groupby("route").client_ms.median()
    if len(med) == 2:
        lines.append(f"route cost without a model: plain HTTP {med['plain HTTP']:.1f} ms vs litellm "
                     f"{med['litellm']:.1f} ms per call (median client time, upstream-free proxy)")
    hits, misses = cache[cache.hit], cache[~cache.hit]
    if len(hits) and len(misses):
        lines.append(f"cache: a hit takes {hits.seconds.median() * 1000:.1f} ms vs "
                     f"{misses.seconds.median() * 1000:.0f} ms for a miss "
                     f"({misses.seconds.median() / max(hits.seconds.median(), 1e-9):.0f}x faster)")
    lines.append(f"retry wrapper vs bare litellm: median ratio {over['ratio_median']:.3f} "
                 f"(IQR {over['ratio_q1']:.3f}-{over['ratio_q3']:.3f}); the loop's own time is "
                 f"{over['loop_median_ms']:.1f} ms ({over['loop_share_median']:.2%} of a call)")
    return lines
