"""The strategies compared: each is ``async (case, target, budget) -> Record``.

Every strategy sends the same messages (:func:`~benchmarks.extraction.cases.messages_for`),
judges validity with the same validator (``PydanticSchema(case.model)``; instructor uses
the same pydantic model), and scores correctness apart from validity
(:func:`~benchmarks.extraction.cases.score`). Tokens are what the server reported for every
call made, failed ones included.

================  =========================================================================
name              what it does
================  =========================================================================
single_shot       one call, temperature 0
resample          up to N calls at temperature > 0 with fresh seeds, no feedback
feedback_full     ``retry_with_validation``: re-ask with the errors, every failure resent
feedback_last     the same, only the latest failure resent
instructor        instructor's re-ask (``max_retries``), in ``budget.instructor_mode``
constrained       one call with the schema as ``response_format`` (llama.cpp grammar)
ladder            retrylib's ladder: plain, then constrained (K), then the fallback model
                  (F), then a human (M)
ladder_cf         the ladder with the schema from the first attempt (the caller passes
                  ``response_format``), then fallback model, then a human
ladder_grounded   ``ladder_cf`` with a grounding validator too (strings must occur in the
                  text), so well-formed but invented values also climb the ladder
================  =========================================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.extraction.cases import Case, messages_for, score
from benchmarks.extraction.grounding import Grounded
from retrylib import FallbackModel, RetryConfig, retry_with_validation
from retrylib.client import acompletion, make_call
from retrylib.constrained import grammar_safe_schema, response_format_for
from retrylib.errors import HumanReviewNeededError, RetryError
from retrylib.extract import extract_text, extract_usage
from retrylib.validators import PydanticSchema
from retrylib.validators.base import ValidationContext


@dataclass(frozen=True)
class Target:
    """A model under test, where it is served, and what the ladder falls back to.

    Attributes:
        name: short name (``smollm2``, ``gemma3``).
        model: litellm model string (``openai/smollm2``).
        api_base: the server's ``/v1`` URL.
        fallbacks: the models of the ladder's fallback stage.
    """

    name: str
    model: str
    api_base: str
    fallbacks: tuple[Target, ...] = ()

    @property
    def served_name(self) -> str:
        """The name the server knows the model by (``model`` without the provider)."""
        return self.model.split("/", 1)[-1]


@dataclass(frozen=True)
class Budget:
    """What every strategy may spend, and the knobs of each.

    Attributes:
        max_tokens: reply cap of every call.
        seed: base seed (per-call seeds derive from it).
        reask_attempts: total attempts of the feedback re-ask strategies.
        resample_attempts: total attempts of naive resampling.
        resample_temperature: its temperature.
        instructor_attempts: total attempts of instructor (``max_retries`` = this - 1).
        instructor_mode: ``json``, ``md_json``, ``json_schema`` or ``tools``.
        ladder: ``RetryConfig`` thresholds of the ``ladder`` strategy (K, F, M, history).
        ladder_cf: the same for ``ladder_cf``.
        timeout: seconds per call.
    """

    max_tokens: int = 192
    seed: int = 7
    reask_attempts: int = 3
    resample_attempts: int = 5
    resample_temperature: float = 0.8
    instructor_attempts: int = 5
    instructor_mode: str = "json"
    ladder: dict[str, Any] = field(default_factory=lambda: {"K": 1, "F": 2, "M": 4, "history": "last"})
    # The schema goes out from attempt 1 (as the caller's response_format), so no K here.
    ladder_cf: dict[str, Any] = field(default_factory=lambda: {"F": 1, "M": 3, "history": "last"})
    timeout: float = 300.0


@dataclass
class Record:
    """One strategy on one case: the verdict and what it cost."""

    case: str
    strategy: str
    model: str
    valid: bool
    correct: bool
    field_accuracy: float
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    stage_reached: str | None = None
    error: str | None = None
    answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Strategy = Callable[[Case, Target, Budget], Awaitable[Record]]


async def _judge(case: Case, text: str | None) -> Any:
    """The validated instance, or ``None`` when the text does not validate."""
    if text is None:
        return None
    result = await PydanticSchema(case.model).validate(text, ValidationContext())
    return result.parsed if result.valid else None


def brief(exc: BaseException, n: int = 200) -> str:
    """An exception as one short line (instructor's messages run to many lines)."""
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())[:n]


def _record(case: Case, name: str, target: Target, parsed: Any, t0: float, attempts: int,
            tin: int, tout: int, text: str | None, **extra: Any) -> Record:
    correct, acc = score(case, parsed)
    return Record(case=case.id, strategy=name, model=target.name, valid=parsed is not None,
                  correct=correct, field_accuracy=acc, attempts=attempts, prompt_tokens=tin,
                  completion_tokens=tout, seconds=time.monotonic() - t0,
                  answer=(text or "")[:300] or None, **extra)


def constrained_format(case: Case) -> dict[str, Any]:
    """The ``response_format`` retrylib's constrained stage sends for this case's model."""
    return response_format_for(grammar_safe_schema(PydanticSchema(case.model).json_schema())[0])


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
        parsed = await _judge(case, text)
        if parsed is not None:
            break
    return _record(case, name, target, parsed, t0, n, tin, tout, text, error=error)


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


async def _retrylib(name: str, case: Case, target: Target, budget: Budget, config: RetryConfig,
                    extra_validators: tuple[Any, ...] = (), **kw: Any) -> Record:
    t0 = time.monotonic()
    call = make_call(target.model, api_base=target.api_base, max_tokens=budget.max_tokens,
                     temperature=0, seed=budget.seed, timeout=budget.timeout)
    try:
        r = await retry_with_validation(call, messages_for(case),
                                        [PydanticSchema(case.model), *extra_validators], config, **kw)
        attempts, metrics, parsed, text, error = r.attempts, r.metrics, r.parsed, r.content, None
    except RetryError as exc:
        attempts, metrics, parsed = exc.attempts, exc.metrics or {}, None
        text = next((a.text for a in reversed(attempts) if a.text is not None), None)
        error = ("human review needed" if isinstance(exc, HumanReviewNeededError)
                 else brief(exc))
    return _record(case, name, target, parsed, t0, len(attempts), metrics.get("tokens_in", 0),
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


async def ladder_grounded(case: Case, target: Target, budget: Budget) -> Record:
    """``ladder_cf`` plus the grounding validator: answers whose strings are not in the text
    are re-asked, then handed to the fallback model (validity is still judged by the schema)."""
    return await _retrylib("ladder_grounded", case, target, budget,
                           ladder_config(budget.ladder_cf, target, budget.seed),
                           (Grounded(case.text, case.model),),
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
    return _record(case, f"instructor_{mode}" if mode != budget.instructor_mode else "instructor",
                   target, parsed, t0, attempts, tin, tout, text, error=error)


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
    "ladder_cf": ladder_cf,
    "ladder_grounded": ladder_grounded,
}
