"""What the strategies share: the model under test, the budget, the per-case record.

A strategy is ``async (case, target, budget) -> Record``. :func:`judge` is the one validity
test every strategy's final answer goes through (``PydanticSchema(case.model)``), and
:func:`make_record` scores it against the case's expected values.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.extraction.cases import Case, score
from retrylib.constrained import grammar_safe_schema, response_format_for
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
        ladder: the knobs of the ``ladder`` strategy: thresholds K, F, M, ``history``
            (feedback_history), ``escalation`` (escalation_history), ``grounded``
            (``"soft"``, ``"hard"`` or ``None``: the grounding check).
        ladder_sketch: the same for ``ladder_sketch`` (and ``ladder_fresh``).
        timeout: seconds per call.
    """

    max_tokens: int = 192
    seed: int = 7
    reask_attempts: int = 3
    resample_attempts: int = 5
    resample_temperature: float = 0.8
    instructor_attempts: int = 5
    instructor_mode: str = "json"
    ladder: dict[str, Any] = field(default_factory=lambda: {
        "K": 0, "F": 1, "M": 2, "history": "last", "escalation": "fresh", "grounded": "soft"})
    ladder_sketch: dict[str, Any] = field(default_factory=lambda: {
        "K": 1, "F": 2, "M": 4, "history": "last", "escalation": "keep"})
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


async def judge(case: Case, text: str | None) -> Any:
    """The validated instance, or ``None`` when the text does not validate."""
    if text is None:
        return None
    result = await PydanticSchema(case.model).validate(text, ValidationContext())
    return result.parsed if result.valid else None


def brief(exc: BaseException, n: int = 200) -> str:
    """An exception as one short line (instructor's messages run to many lines)."""
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())[:n]


def make_record(case: Case, name: str, target: Target, parsed: Any, t0: float, attempts: int,
            tin: int, tout: int, text: str | None, **extra: Any) -> Record:
    correct, acc = score(case, parsed)
    return Record(case=case.id, strategy=name, model=target.name, valid=parsed is not None,
                  correct=correct, field_accuracy=acc, attempts=attempts, prompt_tokens=tin,
                  completion_tokens=tout, seconds=time.monotonic() - t0,
                  answer=(text or "")[:300] or None, **extra)


def constrained_format(case: Case) -> dict[str, Any]:
    """The ``response_format`` retrylib's constrained stage sends for this case's model."""
    return response_format_for(grammar_safe_schema(PydanticSchema(case.model).json_schema())[0])
