"""Strategies that run through ``retry_with_validation``: feedback re-asks and the ladders.

================  =========================================================================
name              what it does
================  =========================================================================
feedback_full     re-ask with the validation errors, every failed answer resent
feedback_last     the same, only the latest failed answer resent
ladder            retrylib's ladder as the issue sketches it: plain attempts, constrained
                  after K failures, the fallback model after F, a human at M
ladder_fresh      the same ladder, but an escalated attempt (schema newly on, or another
                  model) gets the original messages without the failed answers
ladder_cf         the schema from the first attempt (the caller's ``response_format``), then
                  the fallback model, then a human
ladder_grounded   ``ladder_cf`` plus a grounding validator (strings must occur in the text),
                  with fresh escalation
================  =========================================================================

Why ``fresh``: measured on SmolLM2 and Gemma 3 270M, an escalated attempt that still sees the
failed answer in the conversation copies it, word for word, even under a grammar and even on
the other model (Gemma, a base model, continues the transcript). retrylib's
``feedback_history`` has no setting that leaves the failed answers out, so this variant
does it with a call wrapper (:class:`FreshEscalation`), as a prototype of such an option.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.extraction.cases import Case, messages_for
from benchmarks.extraction.grounding import Grounded
from benchmarks.extraction.records import (
    Budget,
    Record,
    Target,
    brief,
    constrained_format,
    make_record,
)
from retrylib import FallbackModel, RetryConfig, retry_with_validation
from retrylib.client import make_call
from retrylib.errors import HumanReviewNeededError, RetryError
from retrylib.validators import PydanticSchema


class FreshEscalation:
    """A call wrapper: an escalated attempt gets only the original messages.

    An attempt is escalated when it asks for another model than the primary, or for a
    ``response_format`` other than the caller's (the constrained stage switched on).

    Args:
        call: the underlying call (a ``ModelCall``).
        n_base: how many messages the caller sent (the rest are replayed failures).
        primary: the model under test.
        caller_format: the ``response_format`` the caller passes to every attempt.
    """

    def __init__(self, call: Any, n_base: int, primary: str, caller_format: Any = None):
        self.call, self.n_base, self.primary, self.caller_format = call, n_base, primary, caller_format
        self.fresh_attempts = 0

    async def __call__(self, messages: list[dict[str, Any]], **kw: Any) -> Any:
        escalated = (kw.get("model", self.primary) != self.primary
                     or kw.get("response_format") != self.caller_format)
        if escalated:
            self.fresh_attempts += 1
            messages = messages[: self.n_base]
        return await self.call(messages=messages, **kw)


async def _retrylib(name: str, case: Case, target: Target, budget: Budget, config: RetryConfig,
                    extra_validators: tuple[Any, ...] = (), fresh: bool = False,
                    **kw: Any) -> Record:
    """Run one case through ``retry_with_validation`` and record it (a failed call too)."""
    t0 = time.monotonic()
    call: Any = make_call(target.model, api_base=target.api_base, max_tokens=budget.max_tokens,
                          temperature=0, seed=budget.seed, timeout=budget.timeout)
    if fresh:
        call = FreshEscalation(call, len(messages_for(case)), target.model, kw.get("response_format"))
    try:
        r = await retry_with_validation(call, messages_for(case),
                                        [PydanticSchema(case.model), *extra_validators], config, **kw)
        attempts, metrics, parsed, text, error = r.attempts, r.metrics, r.parsed, r.content, None
    except RetryError as exc:
        attempts, metrics, parsed = exc.attempts, exc.metrics or {}, None
        text = next((a.text for a in reversed(attempts) if a.text is not None), None)
        error = ("human review needed" if isinstance(exc, HumanReviewNeededError)
                 else brief(exc))
    return make_record(case, name, target, parsed, t0, len(attempts), metrics.get("tokens_in", 0),
                   metrics.get("tokens_out", 0), text, error=error,
                   stage_reached=metrics.get("stage_reached"))


def _feedback_config(budget: Budget, history: str) -> RetryConfig:
    return RetryConfig(max_attempts=budget.reask_attempts, initial_delay=0.2, seed=budget.seed,
                       feedback_history=history)


async def feedback_full(case: Case, target: Target, budget: Budget) -> Record:
    """Re-ask with the validation errors; every failed answer is resent."""
    return await _retrylib("feedback_full", case, target, budget, _feedback_config(budget, "full"))


async def feedback_last(case: Case, target: Target, budget: Budget) -> Record:
    """Re-ask with the validation errors; only the latest failed answer is resent."""
    return await _retrylib("feedback_last", case, target, budget, _feedback_config(budget, "last"))


def ladder_config(knobs: dict[str, Any], target: Target, seed: int) -> RetryConfig:
    """The ``RetryConfig`` of a ladder: K, F (only when a fallback model exists), M.

    Args:
        knobs: ``{"K": int, "F": int, "M": int, "history": "last"|"full"}``; K and F may be
            left out (no constrained stage; no fallback stage).
        target: the model under test; its ``fallbacks`` fill ``fallback_models``.
        seed: the backoff seed.
    """
    fb = tuple(FallbackModel(model=t.model, api_base=t.api_base) for t in target.fallbacks)
    m = int(knobs["M"])
    return RetryConfig(
        max_attempts=m, initial_delay=0.2, seed=seed, feedback_history=knobs.get("history", "last"),
        max_attempts_before_constrained=knobs.get("K"),
        max_attempts_before_fallback=knobs.get("F") if fb else None,
        fallback_models=fb, max_attempts_before_human=m)


async def ladder(case: Case, target: Target, budget: Budget) -> Record:
    """retrylib's ladder: plain attempts, then constrained, then the fallback model, then a human."""
    return await _retrylib("ladder", case, target, budget,
                           ladder_config(budget.ladder, target, budget.seed))


async def ladder_cf(case: Case, target: Target, budget: Budget) -> Record:
    """The ladder with the schema from the first attempt, then fallback model, then a human."""
    return await _retrylib("ladder_cf", case, target, budget,
                           ladder_config(budget.ladder_cf, target, budget.seed),
                           response_format=constrained_format(case))


async def ladder_fresh(case: Case, target: Target, budget: Budget) -> Record:
    """The ``ladder`` thresholds, with escalated attempts sent fresh (:class:`FreshEscalation`)."""
    return await _retrylib("ladder_fresh", case, target, budget,
                           ladder_config(budget.ladder, target, budget.seed), fresh=True)


async def ladder_grounded(case: Case, target: Target, budget: Budget) -> Record:
    """``ladder_cf`` plus the grounding validator, escalating fresh: an answer whose strings
    are not in the text goes to the fallback model (validity is still judged by the schema)."""
    return await _retrylib("ladder_grounded", case, target, budget,
                           ladder_config(budget.ladder_cf, target, budget.seed),
                           (Grounded(case.text, case.model),), fresh=True,
                           response_format=constrained_format(case))
