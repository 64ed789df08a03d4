"""The strategies compared, and their registry: each is ``async (case, target, budget) -> Record``.

Every strategy sends the same messages (:func:`~benchmarks.extraction.cases.messages_for`),
judges validity with the same validator (``PydanticSchema(case.model)``; instructor uses
the same pydantic model), and scores correctness apart from validity
(:func:`~benchmarks.extraction.cases.score`). Tokens are what the server reported for every
call made, failed ones and fallback-model ones included.

================  =========================================================================
name              what it does
================  =========================================================================
single_shot       one call, temperature 0
resample          up to N calls at temperature > 0 with fresh seeds, no feedback
instructor        instructor's re-ask (``max_retries``), in ``budget.instructor_mode``
constrained       one call with the schema as ``response_format`` (llama.cpp grammar)
feedback_*        re-asks through ``retry_with_validation`` (see :mod:`.ladders`)
ladder*           retrylib's escalation ladder variants (see :mod:`.ladders`)
================  =========================================================================
"""

from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks.extraction.cases import Case, messages_for
from benchmarks.extraction.ladders import (
    feedback_full,
    feedback_last,
    feedback_repair,
    ladder,
    ladder_fresh,
    ladder_repair,
    ladder_schema,
    ladder_sketch,
    single_repair,
)
from benchmarks.extraction.records import (
    Budget,
    Record,
    Strategy,
    Target,
    brief,
    constrained_format,
    judge,
    make_record,
)
from retrylib.client import acompletion
from retrylib.extract import extract_text, extract_usage

__all__ = ["INSTRUCTOR_MODES", "STRATEGIES", "Budget", "Record", "Target", "brief",
           "instructor_reask"]


async def _sample(name: str, case: Case, target: Target, budget: Budget, tries: int,
                  **kw: Any) -> Record:
    """Up to ``tries`` independent calls (no feedback); stop at the first valid answer."""
    t0 = time.monotonic()
    tin = tout = n = 0
    parsed = text = error = None
    for i in range(tries):
        n += 1
        seed = budget.seed + i if kw.get("temperature", 0) > 0 else budget.seed
        try:
            resp = await acompletion(messages_for(case), model=target.model, api_base=target.api_base,
                                     max_tokens=budget.max_tokens, timeout=budget.timeout,
                                     seed=seed, **kw)
        except Exception as exc:  # a transport failure costs the attempt, as it would in production
            error = brief(exc)
            continue
        a, b = extract_usage(resp)
        tin, tout = tin + a, tout + b
        text = extract_text(resp)
        parsed = await judge(case, text)
        if parsed is not None:
            break
    return make_record(case, name, target, parsed, t0, n, tin, tout, text, error=error)


async def single_shot(case: Case, target: Target, budget: Budget) -> Record:
    """One call at temperature 0."""
    return await _sample("single_shot", case, target, budget, 1, temperature=0)


async def resample(case: Case, target: Target, budget: Budget) -> Record:
    """Naive resampling: up to ``resample_attempts`` calls at temperature > 0, no feedback."""
    return await _sample("resample", case, target, budget, budget.resample_attempts,
                         temperature=budget.resample_temperature)


async def constrained(case: Case, target: Target, budget: Budget) -> Record:
    """One call with the schema as ``response_format`` (the grammar-safe copy retrylib sends)."""
    return await _sample("constrained", case, target, budget, 1, temperature=0,
                         response_format=constrained_format(case))


INSTRUCTOR_MODES = ("json", "md_json", "json_schema", "tools")


async def instructor_reask(case: Case, target: Target, budget: Budget, mode: str | None = None) -> Record:
    """instructor 1.17's own re-ask loop against the same server (OpenAI SDK client).

    Tokens and attempts are counted from every raw response instructor received (its
    ``completion:response`` hook), so failed attempts are included.
    """
    import instructor
    import openai

    # instructor logs every failed attempt in full; the record keeps the short story.
    logging.getLogger("instructor").setLevel(logging.CRITICAL)
    mode = mode or budget.instructor_mode
    t0 = time.monotonic()
    client = openai.AsyncOpenAI(base_url=target.api_base, api_key="sk-local", max_retries=0,
                                timeout=budget.timeout)
    ic = instructor.from_openai(client, mode=_instructor_mode(mode))
    seen: list[Any] = []
    errors: list[str] = []
    ic.on("completion:response", seen.append)
    ic.on("completion:error", lambda e, **kw: errors.append(brief(e)))
    parsed = error = None
    try:
        parsed = await ic.chat.completions.create(
            model=target.served_name, response_model=case.model, messages=messages_for(case),
            max_retries=budget.instructor_attempts - 1, max_tokens=budget.max_tokens,
            temperature=0, seed=budget.seed)
    except Exception as exc:  # instructor gave up (or the request itself failed)
        error = brief(exc)
    finally:
        await client.close()
    usage = [getattr(r, "usage", None) for r in seen]
    tin = sum(int(getattr(u, "prompt_tokens", 0) or 0) for u in usage if u is not None)
    tout = sum(int(getattr(u, "completion_tokens", 0) or 0) for u in usage if u is not None)
    text = _instructor_text(seen[-1]) if seen else None
    attempts = max(len(seen), 1 if (error or errors) else 0)
    name = f"instructor_{mode}" if mode != budget.instructor_mode else "instructor"
    return make_record(case, name, target, parsed, t0, attempts, tin, tout, text, error=error)


def _instructor_mode(mode: str) -> Any:
    from instructor import Mode

    return {"json": Mode.JSON, "md_json": Mode.MD_JSON, "json_schema": Mode.JSON_SCHEMA,
            "tools": Mode.TOOLS}[mode]


def _instructor_text(resp: Any) -> str | None:
    try:
        msg = resp.choices[0].message
    except (AttributeError, IndexError):
        return None
    if getattr(msg, "tool_calls", None):
        return msg.tool_calls[0].function.arguments
    return msg.content


async def instructor(case: Case, target: Target, budget: Budget) -> Record:
    """instructor's re-ask in ``budget.instructor_mode``."""
    return await instructor_reask(case, target, budget)


STRATEGIES: dict[str, Strategy] = {
    "single_shot": single_shot,
    "resample": resample,
    "feedback_full": feedback_full,
    "feedback_last": feedback_last,
    "instructor": instructor,
    "constrained": constrained,
    "ladder": ladder,
    "ladder_schema": ladder_schema,
    "ladder_sketch": ladder_sketch,
    "ladder_fresh": ladder_fresh,
    "single_repair": single_repair,
    "feedback_repair": feedback_repair,
    "ladder_repair": ladder_repair,
}
