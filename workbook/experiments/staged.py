"""Measurements behind ``02_staged_retry.ipynb``: the tool stage, the human stage, and when.

Escalation is driven by validation failures. To make it deterministic, most runs get
scripted wrong answers from the fault proxy (``reply:<text>``) and a validator they fail;
one run uses the real model with a strict validator. Everything asserted comes from the
proxy's journal, i.e. from the request bodies the model server would have received.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import yaml

from retrylib import ConfigError, HumanReviewNeededError, RetryConfig, backoff_schedule, llm_call
from retrylib.validators import FieldsPresent, JsonObject
from workbook.experiments.core import (
    MCP_CONFIG,
    TOOL_NAME,
    attempts_of,
    feedback_rows,
    keyed,
    new_key,
    run,
)

BAD_REPLY = "Sure! The answer is forty-two."  # never JSON, so JsonObject always fails
ASK = [{"role": "user", "content": "Reply with a JSON object holding the key answer."}]


def check_pairs(**pairs: Any) -> None:
    """Check notebook parameters that are ``(N, M)`` thresholds, one pair or a list of pairs.

    Raises:
        ConfigError: naming the parameter (and item) whose N or M is not an integer with
            ``1 <= N <= M``.
    """
    for name, value in pairs.items():
        items = value if value and isinstance(value[0], list | tuple) else [value]
        for i, pair in enumerate(items):
            where = f"{name}[{i}]" if items is value else name
            ok = (isinstance(pair, list | tuple) and len(pair) == 2
                  and all(isinstance(x, int) and not isinstance(x, bool) for x in pair))
            if not ok or not 1 <= pair[0] <= pair[1]:
                raise ConfigError(f"notebook parameter {where} must be a pair [N, M] of integers with "
                                  f"1 <= N <= M (tool stage after N failures, human at the M-th), got {pair!r}")


def escalation_config(n: int, m: int, max_attempts: int | None = None, **extra: Any) -> RetryConfig:
    """A config that suggests the tool after ``n`` failures and asks a human at the ``m``-th."""
    return RetryConfig(max_attempts=max_attempts or m, max_attempts_before_tool_use=n,
                       max_attempts_before_human=m, debug_tool_name=TOOL_NAME,
                       debug_tool_mcp_config=MCP_CONFIG, **extra)


def _first(flags: Sequence[bool]) -> int | None:
    return next((i for i, f in enumerate(flags, 1) if f), None)


async def escalation_run(env: Any, n: int, m: int, *, replies: Sequence[str] | None = None,
                         validators: Sequence[Any] | None = None,
                         messages: list[dict[str, Any]] | None = None,
                         config: RetryConfig | None = None, **call_kw: Any) -> dict[str, Any]:
    """One call that escalates, on the litellm route through the proxy.

    Args:
        n, m: the tool and human thresholds.
        replies: scripted answers (default: ``m`` non-JSON ones); ``[]`` means the real model.
        validators: default ``[JsonObject()]``.
        config: overrides ``escalation_config(n, m)``.
        **call_kw: call defaults (``max_tokens``, ``temperature``...).

    Returns:
        ``attempts`` (the log), ``journal`` (the raw entries), ``wire`` (``core.feedback_rows`` of the journal, plus each
        attempt's ``stage``), ``error`` (the exception or ``None``), ``result``, ``seconds``
        and ``summary``: the first request carrying ``mcp_config`` and the tool suggestion,
        against the expectation ``n + 1`` (none when ``n == m``).
    """
    key = new_key(f"escalate-{n}-{m}")
    replies = [BAD_REPLY] * m if replies is None else list(replies)
    if replies:
        env.chaos.set_plan([f"reply:{r}" for r in replies], key)
    cfg = config or escalation_config(n, m)
    t = time.monotonic()
    result, err = await run(keyed(env, "chaos", key, **call_kw), messages or ASK,
                            validators or [JsonObject()], cfg)
    seconds = time.monotonic() - t
    attempts = attempts_of(result, err)
    journal = env.chaos.journal(key)
    wire = feedback_rows(journal, cfg.original_user_prompt)
    wire["stage"] = [a.stage for a in attempts][: len(wire)] + [None] * (len(wire) - len(attempts))
    failures = sum(a.outcome == "validation_failed" for a in attempts)
    summary = {
        "N": n, "M": m, "requests": len(wire), "failures": failures,
        "outcome": type(err).__name__ if err else "ok",
        "human_after_failures": failures if isinstance(err, HumanReviewNeededError) else None,
        "first_mcp_request": _first(list(wire["mcp_config"])),
        "first_tool_text_request": _first(list(wire["has_tool_suggestion"])),
        "expected_first": n + 1 if n < m else None,
        "mcp_in_every_later_request": bool(wire["mcp_config"].iloc[n:].all()) if len(wire) > n else None,
        "stages": " ".join(a.stage for a in attempts),
    }
    return {"attempts": pd.DataFrame([a.to_dict() for a in attempts]), "wire": wire, "error": err,
            "result": result, "seconds": seconds, "summary": summary, "config": cfg, "journal": journal}


def ladder_problems(out: dict[str, Any]) -> list[str]:
    """Where a run's wire evidence breaks the ladder: a request that carries ``mcp_config``
    or the tool suggestion before the tool stage, or lacks them after it; a stage that does
    not match ``config.stage_for(failures so far)``; a human hand-over not at failure M."""
    cfg, wire, problems = out["config"], out["wire"], []
    failures = 0
    for a, (_, w) in zip(out["attempts"].itertuples(), wire.iterrows(), strict=False):
        want = cfg.stage_for(failures)
        in_tool = want == "tool"
        if a.stage != want:
            problems.append(f"attempt {a.number}: stage {a.stage}, expected {want}")
        if bool(w["mcp_config"]) != in_tool:
            problems.append(f"request {w['request']}: mcp_config {'sent' if w['mcp_config'] else 'missing'}")
        if bool(w["has_tool_suggestion"]) != in_tool:
            problems.append(f"request {w['request']}: tool suggestion {'present' if w['has_tool_suggestion'] else 'missing'}")
        failures += a.outcome == "validation_failed"
    human = isinstance(out["error"], HumanReviewNeededError)
    m = cfg.max_attempts_before_human
    if human != (m is not None and failures >= m):
        problems.append(f"{failures} failures with M={m}, but human hand-over: {human}")
    if len(wire) != len(out["attempts"]):
        problems.append(f"{len(wire)} requests on the wire for {len(out['attempts'])} attempts")
    return problems


async def sweep(env: Any, pairs: Sequence[Sequence[int]]) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """``escalation_run`` for each ``(N, M)``.

    Returns:
        ``(table, timeline, runs)``: one summary row per pair (with ``problems``), the long
        ``(row, attempt, stage)`` frame for ``plots.plot_stage_timeline``, and the raw runs.
    """
    rows, timeline, runs = [], [], []
    for n, m in pairs:
        out = await escalation_run(env, int(n), int(m))
        runs.append(out)
        label = f"N={n}, M={m}"
        rows.append({**out["summary"], "problems": "; ".join(ladder_problems(out))})
        timeline += [{"row": label, "attempt": a.number, "stage": a.stage} for a in out["attempts"].itertuples()]
        if isinstance(out["error"], HumanReviewNeededError):
            timeline.append({"row": label, "attempt": len(out["attempts"]) + 1, "stage": "human"})
    table = pd.DataFrame(rows).astype({"first_mcp_request": "Int64", "first_tool_text_request": "Int64",
                                       "expected_first": "Int64", "human_after_failures": "Int64"})
    return table, pd.DataFrame(timeline), runs


def human_context(exc: HumanReviewNeededError) -> dict[str, Any]:
    """What a reviewer gets: the fields of the error, shortened for display."""
    return {"reason": exc.reason, "attempts": len(exc.attempts),
            "stages": [a.stage for a in exc.attempts],
            "messages_of_last_attempt": [f"{m['role']}: {str(m.get('content'))[:70]}" for m in exc.messages],
            "last_response_type": type(exc.last_response).__name__, "last_text": exc.last_text,
            "validation_errors": exc.validation_errors,
            "config": {k: exc.config.get(k) for k in ("max_attempts", "max_attempts_before_tool_use",
                                                      "max_attempts_before_human", "debug_tool_name",
                                                      "debug_tool_mcp_config")}}


def pickle_roundtrip(exc: HumanReviewNeededError) -> pd.DataFrame:
    """Pickle and unpickle the error; compare every field a reviewer needs."""
    back = pickle.loads(pickle.dumps(exc))
    fields: dict[str, Callable[[Any], Any]] = {
        "type": lambda e: type(e).__name__, "reason": lambda e: e.reason, "str": str,
        "attempts": lambda e: [a.to_dict() for a in e.attempts], "messages": lambda e: e.messages,
        "last_text": lambda e: e.last_text, "validation_errors": lambda e: e.validation_errors,
        "config": lambda e: e.config, "metrics": lambda e: e.metrics,
        "last_response_text": lambda e: _text(e.last_response), "summary()": lambda e: e.summary(),
    }
    return pd.DataFrame([{"field": k, "equal_after_pickle": f(exc) == f(back), "value": str(f(back))[:70]}
                         for k, f in fields.items()])


def _text(response: Any) -> str | None:
    from retrylib.extract import extract_text

    try:
        return extract_text(response)
    except Exception:  # a missing or odd response compares as None on both sides
        return None


async def escalation_timing(env: Any, n: int, m: int, initial_delay: float = 0.1,
                            factor: float = 2.0, seed: int = 7) -> pd.DataFrame:
    """With ``delay_validation_retries`` on and no jitter, when each stage is reached.

    Returns:
        Rows ``stage``, ``attempt``, ``measured_s`` (seconds from the call's start) and
        ``predicted_s`` (the backoff schedule's sleeps before that point).
    """
    cfg = escalation_config(n, m, delay_validation_retries=True, jitter="none", seed=seed,
                            initial_delay=initial_delay, backoff_factor=factor, max_delay=60.0)
    out = await escalation_run(env, n, m, config=cfg)
    sched = backoff_schedule(cfg, m)
    attempts = out["attempts"]
    rows = []
    for stage in ("normal", "tool"):
        hit = attempts[attempts["stage"] == stage]
        if len(hit):
            k = int(hit["number"].iloc[0])
            rows.append({"stage": stage, "attempt": k, "measured_s": float(hit["start"].iloc[0]),
                         "predicted_s": sum(sched[: k - 1])})
    if isinstance(out["error"], HumanReviewNeededError):
        rows.append({"stage": "human", "attempt": len(attempts),
                     "measured_s": float(out["error"].metrics["total_seconds"]),
                     "predicted_s": sum(sched[: len(attempts) - 1])})
    return pd.DataFrame(rows)


# -- configuration examples ------------------------------------------------------------------


def declarative(env: Any, key: str, n: int = 1, m: int = 3) -> dict[str, Any]:
    """The original design's ``llm_call`` dict, aimed at the proxy with a scripted key."""
    return {
        "model": f"openai/{env.proxy_model}", "api_base": env.chaos.url,
        "extra_headers": {"X-Chaos-Key": key},
        "messages": ASK, "validation": [{"type": "json_object"}],
        "retry_config": {"max_attempts": m, "seed": 7},
        "max_attempts_before_tool_use": n, "max_attempts_before_human": m,
        "debug_tool_name": TOOL_NAME, "debug_tool_mcp_config": MCP_CONFIG,
    }


async def declarative_runs(env: Any, n: int = 1, m: int = 3) -> pd.DataFrame:
    """``llm_call`` on the dict form and on the same config as a YAML string.

    Returns:
        One row per form: outcome, requests, and which requests carried ``mcp_config``.
    """
    rows = []
    for form in ("dict", "yaml"):
        key = new_key(f"llm-call-{form}")
        env.chaos.set_plan([f"reply:{BAD_REPLY}"] * m, key)
        cfg = declarative(env, key, n, m)
        source = cfg if form == "dict" else yaml.safe_dump(cfg, sort_keys=False)
        try:
            await llm_call(source)
            outcome = "ok"
        except Exception as exc:  # the outcome is what we report
            outcome = type(exc).__name__
        wire = feedback_rows(env.chaos.journal(key), None)
        rows.append({"form": form, "outcome": outcome, "requests": len(wire),
                     "mcp_config_in_requests": [int(r) for r in wire.loc[wire["mcp_config"], "request"]],
                     "tool_text_in_requests": [int(r) for r in wire.loc[wire["has_tool_suggestion"], "request"]]})
    return pd.DataFrame(rows)


async def invalid_configs(env: Any) -> pd.DataFrame:
    """Configs that break a rule: each must raise ``ConfigError`` before any request.

    Returns:
        One row per example: ``example``, ``error``, ``names`` (what the message must
        name), ``message_names_it``, ``message``, ``requests`` (journaled).
    """
    key = new_key("invalid")
    good = declarative(env, key)
    # (label, config, a word the message must contain: the field or value at fault)
    examples: list[tuple[str, Any, str]] = [
        ("RetryConfig: tool after 4, human after 2", dict(
            max_attempts=5, max_attempts_before_tool_use=4, max_attempts_before_human=2,
            debug_tool_name="t"), "human at 2"),
        ("RetryConfig: tool stage without debug_tool_name",
         dict(max_attempts=3, max_attempts_before_tool_use=1), "debug_tool_name"),
        ("RetryConfig: human after 6 > max_attempts 3",
         dict(max_attempts=3, max_attempts_before_human=6), "max_attempts_before_human"),
        ("RetryConfig: negative initial_delay", dict(initial_delay=-1), "initial_delay"),
        ("llm_call: unknown validator type", {**good, "validation": [{"type": "json_objekt"}]},
         "json_objekt"),
        ("llm_call: typo in retry_config", {**good, "retry_config": {"max_attemps": 3}}, "max_attemps"),
        ("llm_call: no messages", {**good, "messages": []}, "messages"),
        ("llm_call: YAML that is not a mapping", "- just\n- a list\n", "mapping"),
    ]
    rows = []
    for label, spec, names in examples:
        try:
            if label.startswith("RetryConfig"):
                RetryConfig(**spec)
            else:
                await llm_call(spec)
            error, message = "(none)", ""
        except ConfigError as exc:
            error, message = "ConfigError", str(exc)
        except Exception as exc:  # anything else is a finding, shown as such
            error, message = type(exc).__name__, str(exc)
        rows.append({"example": label, "error": error, "names": names, "message_names_it": names in message,
                     "message": message, "requests": len(env.chaos.journal(key))})
    return pd.DataFrame(rows)


# -- the real model --------------------------------------------------------------------------

INCIDENT_PROMPT = ("A web service returns HTTP 500 after a deploy. Reply with only a JSON object "
                   'of the form {"incident": {"root_cause": "...", "fix": "..."}}.')


async def real_escalation(env: Any, n: int, m: int, max_tokens: int = 64, seed: int = 7) -> dict[str, Any]:
    """SmolLM2 against a strict validator (a nested JSON shape), escalating for real.

    Returns:
        As ``escalation_run``, plus ``problems`` (``ladder_problems``).
    """
    validators = [JsonObject(), FieldsPresent(["incident.root_cause", "incident.fix"])]
    cfg = escalation_config(n, m, original_user_prompt=INCIDENT_PROMPT, seed=seed)
    out = await escalation_run(env, n, m, replies=[], validators=validators, config=cfg,
                               messages=[{"role": "user", "content": INCIDENT_PROMPT}],
                               max_tokens=max_tokens, temperature=0.7, seed=seed)
    out["problems"] = ladder_problems(out)
    return out
