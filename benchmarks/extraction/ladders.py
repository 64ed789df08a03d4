"""Strategies that run through ``retry_with_validation``: feedback re-asks and the ladders.

================  =========================================================================
name              what it does
================  =========================================================================
feedback_full     re-ask with the validation errors, every failed answer resent
feedback_last     the same, only the latest failed answer resent
ladder            retrylib's ladder as configured for extraction (``Budget.ladder``): the
                  schema from the first attempt (K=0), the fallback model after one
                  failure (F=1), a human at M=2; escalated stages start fresh; a ``Soft``
                  ``Grounded`` check (extracted strings must occur in the text) makes a
                  schema-valid but ungrounded answer escalate, and is returned with
                  warnings if nothing better comes
ladder_schema     the same ladder without the grounding check: what the schema alone buys
ladder_sketch     the ladder as the issue sketches it (``Budget.ladder_sketch``): plain
                  attempts, constrained after K=1 failure, fallback after F=2, human at M=4,
                  every failed answer kept in the conversation
ladder_fresh      the sketch's thresholds with ``escalation_history="fresh"``
single_repair     one call (no re-ask) with ``repair_json=True``: the single shot plus the
                  zero-call repair, so any difference from ``single_shot`` is the repair's
feedback_repair   ``feedback_last`` with ``repair_json=True``: an answer that fails is first
                  repaired with ``json-repair`` (no call) and validated again
ladder_repair     ``ladder`` with ``repair_json=True``
================  =========================================================================

Why ``fresh``: measured on SmolLM2 and Gemma 3 270M, an escalated attempt that still sees the
failed answer in the conversation copies it, word for word, even under a grammar and even on
the other model (Gemma, a base model, continues the transcript).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.extraction.cases import Case, messages_for
from benchmarks.extraction.records import Budget, Record, Target, brief, make_record
from retrylib import FallbackModel, RetryConfig, retry_with_validation
from retrylib.client import make_call
from retrylib.errors import HumanReviewNeededError, RetryError
from retrylib.validators import Grounded, PydanticSchema, Soft


async def _retrylib(name: str, case: Case, target: Target, budget: Budget, config: RetryConfig,
                    extra_validators: tuple[Any, ...] = (), **kw: Any) -> Record:
    """Run one case through ``retry_with_validation`` and record it (a failed call too).

    An answer returned with ``warnings`` (it failed only soft checks) counts as returned:
    validity and correctness are judged on it like on any other answer.
    """
    t0 = time.monotonic()
    call: Any = make_call(target.model, api_base=target.api_base, max_tokens=budget.max_tokens,
                          temperature=0, seed=budget.seed, timeout=budget.timeout)
    try:
        r = await retry_with_validation(call, messages_for(case),
                                        [PydanticSchema(case.model), *extra_validators], config, **kw)
        attempts, metrics, parsed, text, error = r.attempts, r.metrics, r.parsed, r.content, None
        if r.warnings:
            error = f"returned with warnings: {'; '.join(r.warnings)[:150]}"
    except RetryError as exc:
        attempts, metrics, parsed = exc.attempts, exc.metrics or {}, None
        text = next((a.text for a in reversed(attempts) if a.text is not None), None)
        error = ("human review needed" if isinstance(exc, HumanReviewNeededError)
                 else brief(exc))
    return make_record(case, name, target, parsed, t0, len(attempts), metrics.get("tokens_in", 0),
                       metrics.get("tokens_out", 0), text, error=error,
                       stage_reached=metrics.get("stage_reached"))


def _feedback_config(budget: Budget, history: str, **extra: Any) -> RetryConfig:
    return RetryConfig(max_attempts=budget.reask_attempts, initial_delay=0.2, seed=budget.seed,
                       feedback_history=history, **extra)


async def feedback_full(case: Case, target: Target, budget: Budget) -> Record:
    """Re-ask with the validation errors; every failed answer is resent."""
    return await _retrylib("feedback_full", case, target, budget, _feedback_config(budget, "full"))


async def feedback_last(case: Case, target: Target, budget: Budget) -> Record:
    """Re-ask with the validation errors; only the latest failed answer is resent."""
    return await _retrylib("feedback_last", case, target, budget, _feedback_config(budget, "last"))


async def single_repair(case: Case, target: Target, budget: Budget) -> Record:
    """One call; an answer that fails is repaired with ``json-repair`` and validated again."""
    return await _retrylib("single_repair", case, target, budget,
                           RetryConfig(max_attempts=1, seed=budget.seed, repair_json=True))


async def feedback_repair(case: Case, target: Target, budget: Budget) -> Record:
    """``feedback_last`` with the zero-call JSON repair before each re-ask."""
    return await _retrylib("feedback_repair", case, target, budget,
                           _feedback_config(budget, "last", repair_json=True))


def ladder_config(knobs: dict[str, Any], target: Target, seed: int) -> RetryConfig:
    """The ``RetryConfig`` of a ladder: K, F and M; without a fallback model, no F and M
    capped at F (the rungs above exist to reach the fallback model).

    Args:
        knobs: ``{"K": int, "F": int, "M": int, "history": "last"|"full",
            "escalation": "keep"|"fresh"}``; K and F may be left out (no constrained
            stage; no fallback stage). Other keys (``grounded``) are for the strategy.
        target: the model under test; its ``fallbacks`` fill ``fallback_models``.
        seed: the backoff seed.
    """
    fb = tuple(FallbackModel(model=t.model, api_base=t.api_base) for t in target.fallbacks)
    m = int(knobs["M"])
    if not fb and knobs.get("F") is not None:
        # No model to fall back to (the gemma3 row: it is the fallback): the ladder stops
        # where the fallback stage would start. Measured in the first full run (commit
        # "Full extraction benchmark, one run"): re-asking the same model there, even with
        # the grounding errors, changed no answer on Gemma and cost 1.73x the tokens.
        m = min(m, int(knobs["F"]))
    return RetryConfig(
        max_attempts=m, initial_delay=0.2, seed=seed, feedback_history=knobs.get("history", "last"),
        escalation_history=knobs.get("escalation", "keep"),
        max_attempts_before_constrained=knobs.get("K"),
        max_attempts_before_fallback=knobs.get("F") if fb else None,
        fallback_models=fb, max_attempts_before_human=m)


def _grounding(knobs: dict[str, Any], case: Case) -> tuple[Any, ...]:
    kind = knobs.get("grounded")
    if not kind:
        return ()
    check = Grounded(case.text, case.model)
    return (Soft(check),) if kind == "soft" else (check,)


async def _ladder(name: str, knobs: dict[str, Any], case: Case, target: Target, budget: Budget,
                  **extra: Any) -> Record:
    config = ladder_config(knobs, target, budget.seed)
    return await _retrylib(name, case, target, budget, config.model_copy(update=extra) if extra else config,
                           _grounding(knobs, case))


async def ladder(case: Case, target: Target, budget: Budget) -> Record:
    """retrylib's ladder for extraction, as ``Budget.ladder`` configures it."""
    return await _ladder("ladder", budget.ladder, case, target, budget)


async def ladder_schema(case: Case, target: Target, budget: Budget) -> Record:
    """``ladder`` without the grounding check."""
    return await _ladder("ladder_schema", {**budget.ladder, "grounded": None}, case, target, budget)


async def ladder_sketch(case: Case, target: Target, budget: Budget) -> Record:
    """The issue's sketch: plain, constrained after K, fallback after F, human at M; history kept."""
    return await _ladder("ladder_sketch", budget.ladder_sketch, case, target, budget)


async def ladder_fresh(case: Case, target: Target, budget: Budget) -> Record:
    """The sketch's thresholds, escalated stages started fresh."""
    return await _ladder("ladder_fresh", {**budget.ladder_sketch, "escalation": "fresh"},
                         case, target, budget)


async def ladder_repair(case: Case, target: Target, budget: Budget) -> Record:
    """``ladder`` with the zero-call JSON repair before each re-ask."""
    return await _ladder("ladder_repair", budget.ladder, case, target, budget, repair_json=True)
