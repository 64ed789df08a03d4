"""Measurements behind ``01_core_retry.ipynb``: retries, backoff, errors, cache, extraction.

Every function makes real calls, to the model under test or to the fault proxy in front of
it, and returns what it measured as DataFrames or dicts; the notebook plots them and asserts
on them. Each experiment uses its own ``X-Chaos-Key``, so the proxy's journal (what really
went over the wire) can be read back per experiment, even on a proxy shared with others.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import litellm
import openai
import pandas as pd

from retrylib import RetryConfig, backoff_schedule, classify, disable_cache, init_cache
from retrylib.backoff import base_delay
from retrylib.errors import ExtractionError, RetryError
from retrylib.extract import extract_text
from retrylib.manager import retry_with_validation
from retrylib.testing.local import free_port
from retrylib.validators import FieldsPresent, JsonObject, ValidationResult

litellm.suppress_debug_info = True  # its "Give Feedback" banner would bury the notebook output

JITTERS = ("none", "full", "equal", "decorrelated")
STATUSES = (400, 401, 403, 404, 422, 408, 409, 429, 500, 502, 503, 504)
OK_REPLY = 'reply:{"ok": true}'
JSON_SYSTEM = "You answer with one JSON object and nothing else."

QUICK_CAPS = {"people": 2, "max_attempts": 2, "metric_calls": 2, "retries": 3, "max_tokens": 48}


def capped(quick: bool, **sizes: Any) -> dict[str, Any]:
    """The sample sizes to use: as given, or capped by ``QUICK_CAPS`` when ``quick`` is on.

    A list (``people``) is cut to its cap; a number is lowered to it.
    """
    if not quick:
        return sizes
    out = {}
    for name, value in sizes.items():
        cap = QUICK_CAPS.get(name)
        if cap is None:
            out[name] = value
        elif isinstance(value, list | tuple):
            out[name] = list(value)[:cap]
        else:
            out[name] = min(value, cap)
    return out


# -- helpers ---------------------------------------------------------------------------------


def new_key(label: str) -> str:
    """A fresh ``X-Chaos-Key``: a readable label plus a random suffix (proxies may be shared)."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


def keyed(env: Any, via: str, key: str, **defaults: Any) -> Any:
    """``env.call(via)`` whose requests carry ``X-Chaos-Key: key``."""
    headers = {"X-Chaos-Key": key, **defaults.pop("extra_headers", {})}
    return env.call(via, extra_headers=headers, **defaults)


def wire_gaps(entries: Sequence[Mapping[str, Any]]) -> list[float]:
    """Seconds between the end of each journaled request and the arrival of the next one."""
    return [b["monotonic"] - (a["monotonic"] + (a.get("duration") or 0.0))
            for a, b in itertools.pairwise(entries)]


def last_user(body: Any) -> str:
    """The content of the last ``user`` message in a journaled request body."""
    msgs = body.get("messages", []) if isinstance(body, dict) else []
    users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""


async def run(call: Any, messages: list[dict[str, Any]], validators: Sequence[Any],
              config: RetryConfig) -> tuple[Any, RetryError | None]:
    """``retry_with_validation``, returning ``(result, None)`` or ``(None, error)``."""
    try:
        return await retry_with_validation(call, messages, list(validators), config), None
    except RetryError as exc:
        return None, exc


def attempts_of(result: Any, error: RetryError | None) -> list[Any]:
    return list(result.attempts if result is not None else error.attempts if error else [])


class RejectAll:
    """A validator that rejects every answer (to prove a rejected answer is not cached)."""

    name = "reject_all"

    async def validate(self, text: str, context: Any) -> ValidationResult:
        return ValidationResult.fail("rejected on purpose by the cache experiment")


# -- basic retry -----------------------------------------------------------------------------


async def basic_retry(env: Any, people: Sequence[str], max_attempts: int = 3,
                      max_tokens: int = 64, seed: int = 7) -> dict[str, Any]:
    """A real JSON extraction task per person, with feedback re-asks, through the proxy.

    The country is not in the input, so the model has to add it: SmolLM2 often leaves it
    out, or writes JavaScript-style keys, so some answers fail validation for real.

    Returns:
        ``calls`` (one row per call), ``attempts`` (one row per attempt, with ``call``) and
        ``reasks``: for every re-ask, whether the request that went over the wire replayed
        the previous answer and listed each of its validation errors.
    """
    validators = [JsonObject(), FieldsPresent(["name", "age", "city", "country"])]
    calls, frames, reasks = [], [], []
    for i, person in enumerate(people):
        key = new_key(f"basic{i}")
        call = keyed(env, "chaos", key, max_tokens=max_tokens, temperature=0.8, seed=seed + i)
        msgs = [{"role": "system", "content": JSON_SYSTEM},
                {"role": "user", "content": f"Give name, age, city and country as JSON for: {person}"}]
        result, err = await run(call, msgs, validators, RetryConfig(max_attempts=max_attempts, seed=seed))
        attempts, journal = attempts_of(result, err), env.chaos.journal(key)
        calls.append({"call": i, "person": person, "ok": result is not None, "attempts": len(attempts),
                      "journal_requests": len(journal), "error": type(err).__name__ if err else "",
                      "answer": (result.content if result else attempts[-1].text or "")[:80]})
        frames.append(pd.DataFrame([a.to_dict() for a in attempts]).assign(call=i))
        for prev, entry in zip(attempts, journal[1:], strict=False):
            if prev.outcome != "validation_failed":
                continue
            body_msgs = entry["body"]["messages"]
            fb = last_user(entry["body"])
            reasks.append({"call": i, "after_attempt": prev.number,
                           "answer_replayed": body_msgs[-2].get("content") == (prev.text or ""),
                           "errors_listed": all(e in fb for e in prev.validation_errors),
                           "n_errors": len(prev.validation_errors), "feedback": fb})
    return {"calls": pd.DataFrame(calls), "attempts": pd.concat(frames, ignore_index=True),
            "reasks": pd.DataFrame(reasks, columns=["call", "after_attempt", "answer_replayed",
                                                    "errors_listed", "n_errors", "feedback"])}


async def transport_retry(env: Any, plan: Sequence[str] = ("503", "503", "pass"),
                          max_tokens: int = 48, seed: int = 7) -> dict[str, Any]:
    """Scripted transport faults, then the real model, on the litellm route through the proxy.

    Returns:
        ``attempts`` (the attempt log), ``journal`` (fault and status of each request) and
        ``content`` (the final answer, or ``None``).
    """
    key = new_key("transport")
    env.chaos.set_plan(list(plan), key)
    call = keyed(env, "chaos", key, max_tokens=max_tokens)
    cfg = RetryConfig(max_attempts=len(plan), initial_delay=0.1, max_delay=0.5, seed=seed)
    result, err = await run(call, [{"role": "user", "content": "Say hello in five words."}], [], cfg)
    journal = pd.DataFrame([{k: e[k] for k in ("seq", "fault", "status", "duration")}
                            for e in env.chaos.journal(key)])
    return {"attempts": pd.DataFrame([a.to_dict() for a in attempts_of(result, err)]),
            "journal": journal, "content": result.content if result else None}


# -- backoff ---------------------------------------------------------------------------------


def backoff_config(jitter: str, retries: int, initial_delay: float, max_delay: float,
                   seed: int, factor: float = 2.0) -> RetryConfig:
    return RetryConfig(max_attempts=retries + 1, initial_delay=initial_delay, backoff_factor=factor,
                       max_delay=max_delay, jitter=jitter, seed=seed)


async def backoff_experiment(env: Any, retries: int = 4, initial_delay: float = 0.2,
                             max_delay: float = 1.0, seed: int = 7,
                             jitters: Sequence[str] = JITTERS) -> pd.DataFrame:
    """For each jitter kind: 503 × ``retries``, then a reply, on the proxy route.

    Returns:
        One row per retry: ``jitter``, ``retry``, ``base`` (un-jittered), ``schedule``
        (``backoff_schedule`` for the call's own key, ``metrics["call_key"]``), ``scheduled`` (what the loop planned), ``slept`` (measured
        around the sleep) and ``wire_gap`` (between the requests, as the proxy saw them).
    """
    rows = []
    for kind in jitters:
        cfg = backoff_config(kind, retries, initial_delay, max_delay, seed)
        key = new_key(f"backoff-{kind}")
        env.chaos.set_plan(["503"] * retries + [OK_REPLY], key)
        result, err = await run(keyed(env, "proxy", key), [{"role": "user", "content": "ok?"}],
                                [JsonObject()], cfg)
        attempts, gaps = attempts_of(result, err), wire_gaps(env.chaos.journal(key))
        # The call mixed the seed with a key of its own (so that calls sharing a seed do not
        # retry in lockstep); the schedule for that key is what it must have planned.
        metrics = (result.metrics if result is not None else getattr(err, "metrics", None)) or {}
        for n, planned in enumerate(backoff_schedule(cfg, retries, key=metrics.get("call_key")), 1):
            a = attempts[n] if n < len(attempts) else None
            rows.append({"jitter": kind, "retry": n, "base": base_delay(cfg, n), "schedule": planned,
                         "scheduled": a.scheduled_delay if a else None, "slept": a.slept if a else None,
                         "wire_gap": gaps[n - 1] if n <= len(gaps) else None,
                         "max_delay": max_delay, "ok": result is not None})
    return pd.DataFrame(rows)


def jitter_spread(retries: int = 5, initial_delay: float = 0.2, max_delay: float = 2.0,
                  seeds: int = 200, jitters: Sequence[str] = JITTERS) -> pd.DataFrame:
    """Seeded schedules for many seeds (no calls): the distribution each jitter formula draws."""
    rows = []
    for kind in jitters:
        for s in range(seeds):
            cfg = backoff_config(kind, retries, initial_delay, max_delay, s)
            for n, d in enumerate(backoff_schedule(cfg), 1):
                rows.append({"jitter": kind, "seed": s, "retry": n, "delay": d, "base": base_delay(cfg, n)})
    return pd.DataFrame(rows)


def jitter_bounds_violations(spread: pd.DataFrame, initial_delay: float, max_delay: float) -> pd.DataFrame:
    """Rows of ``jitter_spread`` outside the interval the AWS article's formula allows."""
    df = spread.sort_values(["jitter", "seed", "retry"]).copy()
    prev = df.groupby(["jitter", "seed"])["delay"].shift(1).fillna(initial_delay)
    lo = df["base"].where(df["jitter"] == "none", 0.0)
    lo = lo.where(df["jitter"] != "equal", df["base"] / 2)
    lo = lo.where(df["jitter"] != "decorrelated", min(initial_delay, max_delay))
    hi = df["base"].where(df["jitter"] != "decorrelated", (3 * prev).clip(lower=initial_delay, upper=max_delay))
    eps = 1e-9
    bad = (df["delay"] < lo - eps) | (df["delay"] > hi + eps) | (df["delay"] > max_delay + eps)
    return df[bad]


async def retry_after_experiment(env: Any, tokens: Sequence[str] = ("429:retry-after=1",),
                                 seed: int = 7) -> pd.DataFrame:
    """A rate limit with ``Retry-After`` (or ``retry-after-ms``), then a reply.

    The backoff is set far below the asked wait, so only the header can explain a long sleep.

    Returns:
        One row per token: ``asked`` (parsed from the reply), ``scheduled``, ``slept``,
        ``wire_gap`` and ``requests``.
    """
    rows = []
    for tok in tokens:
        key = new_key("retry-after")
        env.chaos.set_plan([tok, OK_REPLY], key)
        cfg = RetryConfig(max_attempts=2, initial_delay=0.05, max_delay=0.1, jitter="none", seed=seed)
        result, err = await run(keyed(env, "chaos", key), [{"role": "user", "content": "ok?"}], [], cfg)
        attempts, journal = attempts_of(result, err), env.chaos.journal(key)
        second = attempts[1] if len(attempts) > 1 else None
        rows.append({"token": tok, "asked": second.retry_after if second else None,
                     "scheduled": second.scheduled_delay if second else None,
                     "slept": second.slept if second else None,
                     "wire_gap": next(iter(wire_gaps(journal)), None), "requests": len(journal),
                     "ok": result is not None})
    return pd.DataFrame(rows)


async def retry_after_too_long(env: Any, asked: int = 120, patience: float = 5.0) -> dict[str, Any]:
    """A server asking for a wait beyond ``max_retry_after`` ends the call at once."""
    key = new_key("retry-after-long")
    env.chaos.set_plan([f"429:retry-after={asked}", OK_REPLY], key)
    t = time.monotonic()
    _, err = await run(keyed(env, "chaos", key), [{"role": "user", "content": "ok?"}], [],
                       RetryConfig(max_attempts=3, max_retry_after=patience))
    return {"error": type(err).__name__ if err else None, "reason": getattr(err, "reason", None),
            "message": str(err) if err else "", "seconds": time.monotonic() - t,
            "requests": len(env.chaos.journal(key))}


# -- errors ----------------------------------------------------------------------------------

PING = [{"role": "user", "content": "ping"}]


def sdk_rule(status: int) -> bool:
    """The retryable rule of the OpenAI and Anthropic SDKs' ``_should_retry``."""
    return status in (408, 409, 429) or status >= 500


async def _sdk_requests(env: Any, token: str, attempts: int) -> tuple[int, str]:
    """How many requests the OpenAI SDK itself sends for one fault, and what it raises."""
    key = new_key("sdk")
    headers = {"X-Chaos-Fault": token, "X-Chaos-Key": key}
    async with openai.AsyncOpenAI(base_url=env.chaos.url, api_key="sk-local-no-key",
                                  max_retries=attempts - 1, default_headers=headers) as client:
        try:
            await client.chat.completions.create(model=env.proxy_model, messages=PING,  # type: ignore[arg-type]
                                                 max_tokens=4)
            raised = ""
        except openai.OpenAIError as exc:
            raised = type(exc).__name__
    return len(env.chaos.journal(key)), raised


async def classification_table(env: Any, attempts: int = 2,
                               tokens: Sequence[str] | None = None) -> pd.DataFrame:
    """Each fault three ways: litellm's exception and ``classify``'s verdict on it, the
    requests retrylib's loop sends, and the requests the OpenAI SDK sends on its own.

    Returns:
        One row per fault token.
    """
    tokens = list(tokens or [*map(str, STATUSES), "503:x-should-retry=false", "reset"])
    cfg = RetryConfig(max_attempts=attempts, initial_delay=0.01, max_delay=0.02, jitter="none")
    rows = []
    for tok in tokens:
        try:
            await keyed(env, "chaos", new_key("probe"), max_tokens=4,
                        extra_headers={"X-Chaos-Fault": tok})(messages=PING)
            exc: BaseException | None = None
        except Exception as e:  # the point is to see what is raised
            exc = e
        v = classify(exc) if exc is not None else None
        key = new_key("ours")
        env.chaos.set_plan([tok] * attempts, key)
        _, err = await run(keyed(env, "chaos", key, max_tokens=4), PING, [], cfg)
        sdk_n, sdk_exc = await _sdk_requests(env, tok, attempts)
        status = int(tok.split(":")[0]) if tok[:3].isdigit() else None
        expected = ("false" not in tok) and (sdk_rule(status) if status else True)
        rows.append({"fault": tok, "litellm_exception": type(exc).__name__ if exc else "(none)",
                     "status": v.status_code if v else None, "retryable": v.retryable if v else None,
                     "reason": v.reason if v else "", "expected_retryable": expected,
                     "retrylib_requests": len(env.chaos.journal(key)),
                     "retrylib_error": type(err).__name__ if err else "", "sdk_requests": sdk_n,
                     "sdk_exception": sdk_exc, "message": str(err) if err else ""})
    return pd.DataFrame(rows)


async def refused_connection() -> dict[str, Any]:
    """A call to a loopback port nobody listens on: litellm says 500, the cause says refused."""
    from retrylib.client import make_call

    call = make_call("openai/nobody", api_base=f"http://127.0.0.1:{free_port()}/v1", max_tokens=4)
    _, err = await run(call, PING, [], RetryConfig(max_attempts=2, initial_delay=0.01, max_delay=0.02))
    facts = (err.last_error or {}) if err else {}
    return {"error": type(err).__name__ if err else None, "attempts": len(err.attempts) if err else 0,
            "litellm_type": facts.get("type"), "status": facts.get("status_code"),
            "retryable": facts.get("retryable"), "reason": facts.get("reason"),
            "message": str(err) if err else ""}


def readable(message: str) -> list[str]:
    """What makes an error message hard to read (empty when it reads well)."""
    problems = []
    if not message.strip():
        problems.append("empty")
    if len(message) > 800:
        problems.append(f"{len(message)} characters long")
    for bad in ("object at 0x", "Traceback", "\x1b["):
        if bad in message:
            problems.append(f"contains {bad!r}")
    return problems


# -- cache -----------------------------------------------------------------------------------


async def cache_experiment(env: Any, max_tokens: int = 32, settle: float = 0.3) -> pd.DataFrame:
    """litellm's in-memory cache, on the litellm route through the proxy.

    The proxy counts what reaches the model: a cache hit sends nothing. Steps: ask A, ask A
    again (hit), ask B and reject the answer, ask B again (must not be the rejected answer
    from the cache), ask B once more (now a hit of the accepted answer).

    Args:
        settle: seconds to let litellm's background cache write finish after each call.

    Returns:
        One row per step: ``cache_hit`` (``Attempt.cache_hit``), ``model_requests``
        (journaled), ``seconds``, ``outcome``, ``text``, ``error``.
    """
    a = [{"role": "user", "content": "Name one colour."}]
    b = [{"role": "user", "content": "Name one fruit."}]
    steps = [("ask A", a, []), ("ask A again", a, []), ("ask B, reject the answer", b, [RejectAll()]),
             ("ask B again", b, []), ("ask B once more", b, [])]
    key, rows = new_key("cache"), []
    init_cache("memory")
    try:
        call = keyed(env, "chaos", key, max_tokens=max_tokens, temperature=0)
        for label, msgs, vals in steps:
            before = len(env.chaos.journal(key))
            result, err = await run(call, msgs, vals, RetryConfig(max_attempts=1))
            await asyncio.sleep(settle)
            last = attempts_of(result, err)[-1]
            rows.append({"step": label, "cache_hit": last.cache_hit,
                         "model_requests": len(env.chaos.journal(key)) - before,
                         "seconds": last.duration, "outcome": last.outcome, "text": (last.text or "")[:60],
                         "error": (last.error_message or "")[:160]})
    finally:
        disable_cache()
    return pd.DataFrame(rows)


# -- extraction ------------------------------------------------------------------------------

ANY_TEXT = "(any non-empty text)"


async def extraction_table(env: Any, max_tokens: int = 24) -> pd.DataFrame:
    """``extract_text`` on real responses of both routes, and on the edge shapes.

    Returns:
        One row per case: ``case``, ``type``, ``expected``, ``got``, ``matches``.
    """
    content = "scripted reply, with commas, kept verbatim"
    key = new_key("extract")
    env.chaos.set_plan([f"reply:{content}", f"reply:{content}", "wrong_shape", "pass"], key)
    as_dict = await keyed(env, "proxy", key)(messages=PING)
    as_model_response = await keyed(env, "chaos", key)(messages=PING)
    wrong = await keyed(env, "proxy", key)(messages=PING)
    real = await keyed(env, "proxy", key, max_tokens=max_tokens)(messages=[
        {"role": "user", "content": "Say hello."}])
    parts = [{"type": "text", "text": "Hello"}, {"type": "image_url", "image_url": {"url": "x"}}, " world"]
    cases = [
        ("OpenAI dict, proxy route (scripted)", as_dict, content),
        ("ModelResponse, litellm route (scripted)", as_model_response, content),
        ("OpenAI dict, proxy route (real model)", real, ANY_TEXT),
        ("str", "plain text", "plain text"),
        ("Anthropic message dict", {"type": "message", "role": "assistant", "content": [
            {"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
            "usage": {"input_tokens": 3, "output_tokens": 2}}, "Hello world"),
        ("content as a list of parts", {"choices": [{"message": {"role": "assistant",
                                                                  "content": parts}}]}, "Hello world"),
        ("legacy text completion", {"choices": [{"text": "legacy"}]}, "legacy"),
        ("None content", {"choices": [{"message": {"role": "assistant", "content": None}}]},
         "ExtractionError"),
        ("no choices", {"choices": []}, "ExtractionError"),
        ("wrong shape, proxy route (real reply)", wrong, "ExtractionError"),
    ]
    rows = []
    for label, response, expected in cases:
        try:
            got = extract_text(response)
        except ExtractionError as exc:
            got = f"ExtractionError: {exc}"
        ok = (got.startswith("ExtractionError") if expected == "ExtractionError"
              else bool(got.strip()) and not got.startswith("ExtractionError") if expected == ANY_TEXT
              else got == expected)
        rows.append({"case": label, "type": type(response).__name__, "expected": expected,
                     "got": got[:90], "matches": ok})
    return pd.DataFrame(rows)


# -- feedback --------------------------------------------------------------------------------

TOOL_NAME = "json_debugger"
MCP_CONFIG = {"mcpServers": {TOOL_NAME: {"command": "python", "args": ["-m", "json_debugger_mcp"],
                                         "transport": "stdio"}}}


def feedback_rows(journal: Sequence[Mapping[str, Any]], prompt: str | None,
                  tool: str = TOOL_NAME) -> pd.DataFrame:
    """One row per journaled request: what the model received (from the request body)."""
    rows = []
    for n, e in enumerate(journal, 1):
        body = e["body"] if isinstance(e["body"], dict) else {}
        msgs = body.get("messages", [])
        fb = last_user(body) if n > 1 else ""
        rows.append({"request": n, "messages": len(msgs), "fault": e["fault"],
                     "errors_listed": sum(ln[:1].isdigit() and ". " in ln[:4] for ln in fb.splitlines()),
                     "has_original_prompt": bool(prompt) and n > 1 and (prompt or "") in fb,
                     "has_tool_suggestion": f"`{tool}`" in fb, "mcp_config": "mcp_config" in body,
                     "replayed_answer": msgs[-2].get("content") if n > 1 and len(msgs) > 1 else None,
                     "feedback": fb})
    return pd.DataFrame(rows)


async def feedback_transcript(env: Any, tool_threshold: int = 2, seed: int = 7) -> dict[str, Any]:
    """Scripted wrong answers, so the feedback the model gets is known; read from the journal.

    Returns:
        ``requests`` (``feedback_rows``), ``replies`` (the scripted answers), ``prompt``,
        ``ok`` and ``attempts``.
    """
    prompt = "Return a JSON object with the fields name and age for Ada Lovelace, aged 36."
    replies = ["Sure! Ada Lovelace is 36 years old.", '{"nom": "Ada"}', '{"name": "Ada"}',
               '{"name": "Ada", "age": 36}']
    key = new_key("feedback")
    env.chaos.set_plan([f"reply:{r}" for r in replies], key)
    cfg = RetryConfig(max_attempts=len(replies), max_attempts_before_tool_use=tool_threshold,
                      debug_tool_name=TOOL_NAME, debug_tool_mcp_config=MCP_CONFIG,
                      original_user_prompt=prompt, seed=seed)
    result, err = await run(keyed(env, "chaos", key), [{"role": "user", "content": prompt}],
                            [JsonObject(), FieldsPresent(["name", "age"])], cfg)
    return {"requests": feedback_rows(env.chaos.journal(key), prompt), "replies": replies,
            "prompt": prompt, "ok": result is not None,
            "attempts": pd.DataFrame([a.to_dict() for a in attempts_of(result, err)])}


# -- metrics ---------------------------------------------------------------------------------


async def metrics_series(env: Any, people: Sequence[str], max_tokens: int = 48,
                         seed: int = 7) -> dict[str, Any]:
    """A series of real calls, each opened by one scripted 503, with ``trace_memory`` on.

    Returns:
        ``calls``: per call, the metrics next to the journal's request count and the wall
        time; ``attempts``: per attempt, ``rss_bytes`` and timings (``call``, ``index``).
    """
    validators = [JsonObject(), FieldsPresent(["name", "age", "city"])]
    rows, frames = [], []
    for i, person in enumerate(people):
        key = new_key(f"metrics{i}")
        env.chaos.set_plan(["503"], key)
        cfg = RetryConfig(max_attempts=3, initial_delay=0.05, max_delay=0.2, seed=seed + i, trace_memory=True)
        call = keyed(env, "chaos", key, max_tokens=max_tokens, temperature=0.7, seed=seed + i)
        msgs = [{"role": "system", "content": JSON_SYSTEM},
                {"role": "user", "content": f"Give name, age and city as JSON for: {person}"}]
        t = time.monotonic()
        result, err = await run(call, msgs, validators, cfg)
        wall = time.monotonic() - t
        m = result.metrics if result is not None else err.metrics  # type: ignore[union-attr]
        attempts = attempts_of(result, err)
        rows.append({"call": i, "ok": result is not None, "journal_requests": len(env.chaos.journal(key)),
                     "wall_seconds": wall, "scheduled_sleep": sum(a.scheduled_delay for a in attempts),
                     **{k: m.get(k) for k in ("api_calls", "total_seconds", "sleep_seconds",
                                              "transport_errors", "validation_failures", "tokens_in",
                                              "tokens_out", "cache_hit_rate", "process_traced_peak_bytes",
                                              "rss_peak_bytes")}})
        frames.append(pd.DataFrame([a.to_dict() for a in attempts]).assign(call=i))
    frame = pd.concat(frames, ignore_index=True)
    frame["index"] = range(1, len(frame) + 1)
    return {"calls": pd.DataFrame(rows), "attempts": frame}
