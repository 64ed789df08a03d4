"""``RetryConfig``: every knob of the retry manager, validated once, frozen.

Times are seconds (``float``) or ``datetime.timedelta``; they are converted once, here.
Invalid values raise :class:`~retrylib.errors.ConfigError` naming the field and the rule.

The escalation ladder
---------------------
Stages are chosen by how many attempts have *failed validation* so far (transport errors
do not count). In ladder order, each one switched on by its own threshold:

==============  =====================================  =====================================
stage           threshold field                        what later attempts get
==============  =====================================  =====================================
normal          (always)                               the prompt, plus feedback on failures
constrained     ``max_attempts_before_constrained`` K  a schema-constrained ``response_format``
fallback        ``max_attempts_before_fallback`` F     the next model of ``fallback_models``
tool            ``max_attempts_before_tool_use`` N     the debug-tool suggestion + ``mcp_config``
human           ``max_attempts_before_human`` M        no call: ``HumanReviewNeededError``
==============  =====================================  =====================================

K may be 0: the schema is asked for from the first attempt (the fallback model and the
human then follow as usual). Stages accumulate: once on, a stage stays on. The thresholds that are set must keep that
order, K < F < N ≤ M ≤ max_attempts (N may equal M, as in the original design, where the
tool stage then never happens). Two stages on the same threshold would hide one of them, so
that is a ``ConfigError``. ``RetryConfig.ladder()`` returns the order explicitly.

What an escalated attempt sees
------------------------------
``escalation_history="keep"`` (the default) replays the failed answers and their feedback
into every later attempt, as ``feedback_history`` says. ``"fresh"`` starts the constrained
and the fallback stage over: their first attempt gets the caller's messages only, and later
attempts in the stage see only that stage's own failures. Measured on SmolLM2-135M and
Gemma 3 270M (``benchmarks/extraction``): an escalated attempt that still sees a failed
answer copies it word for word, even under the grammar and even on the other model, so a
ladder for small models wants ``fresh``. The tool stage always keeps the history: the
debugging tool needs the failures.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retrylib.errors import ConfigError
from retrylib.patterns import MAX_SPAN
from retrylib.schema_refs import MAX_DEPTH

if TYPE_CHECKING:
    from retrylib.stages import Ladder

Jitter = Literal["none", "full", "equal", "decorrelated"]


def _seconds(v: Any) -> Any:
    return v.total_seconds() if isinstance(v, timedelta) else v


class FallbackModel(BaseModel):
    """One rung of the model-fallback stage.

    Attributes:
        model: a litellm model string (``"openai/gemma3"``, ``"proxy/smollm2"``, ...).
        api_base: where that model is served, when not the provider default.
        api_key: its key, when not taken from the environment.
        kwargs: extra keyword arguments for its calls.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def call_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, **self.kwargs}
        if self.api_base:
            out["api_base"] = self.api_base
        if self.api_key:
            out["api_key"] = self.api_key
        return out


class RetryConfig(BaseModel):
    """How to retry one LLM call until its output is valid.

    Attributes:
        max_attempts: total calls, including the first; 1 means no retry.
        initial_delay: the first backoff delay, in seconds.
        backoff_factor: each delay is the previous one times this (before jitter).
        max_delay: no delay is longer than this.
        jitter: ``none``, ``full``, ``equal`` or ``decorrelated`` (see ``retrylib.backoff``).
        seed: makes the jittered schedule reproducible.
        attempt_timeout: the per-call timeout, passed to the route as ``timeout``.
        deadline: the whole call, sleeps included, ends by then (``RetryExhaustedError``).
        respect_retry_after: wait at least what ``Retry-After``/``retry-after-ms`` ask for.
        max_retry_after: a server that asks for a longer wait ends the call.
        delay_validation_retries: back off before re-asking after a failed validation too
            (by default the re-ask is immediate: the server is fine, the answer was not).
        max_attempts_before_constrained: K, see the ladder above; 0 asks for the schema from
            the first attempt.
        max_attempts_before_fallback: F.
        max_attempts_before_tool_use: N.
        max_attempts_before_human: M.
        fallback_models: the models of the fallback stage, in order.
        constrained_format: how to ask for constrained output: ``llama_cpp`` sends
            ``{"type": "json_object", "schema": ...}``, ``openai`` sends ``json_schema``.
        runaway_max_items: the runaway guard. Once an answer of the call was cut at the
            token limit (``finish_reason`` ``length``), every later constrained attempt
            sends a schema in which each list without ``maxItems`` has this many items at
            most (:func:`retrylib.constrained.bound_runaways`); the note names the bounds.
            16 is more than most extracted lists hold (line items, authors, attendees, tags)
            and about 500 tokens of small objects, so the bounded answer fits a modest
            ``max_tokens``; the answer that was cut did not fit anyway. The validators keep
            the original schema, so a longer list cut to this length is not caught: raise it
            for longer lists. 1 to 1000 (llama.cpp's grammar parser fails on more optional
            repeats); ``None`` leaves lists alone.
        runaway_max_length: the same guard for free strings (no ``enum``, ``const``,
            ``pattern``, ``maxLength`` or a format the grammar holds): at most this many
            characters. 500 (about 125 tokens) holds names, titles, addresses and a
            paragraph of description; a model that repeats itself inside a string is
            stopped there. 1 to 1000; ``None`` leaves strings alone.
        runaway_max_depth: the same guard for recursive models (a tree, a thread of
            replies): each recursive definition is unrolled to this many levels, below
            which its lists are empty and its optional parts left out
            (:func:`retrylib.schema_refs.unroll_recursion`). 4 holds most trees people
            extract from a page; a small model under the grammar otherwise nests until
            ``max_tokens``. 1 to 32; ``None`` leaves recursion alone.
        debug_tool_name: the tool suggested from the tool stage on.
        debug_tool_mcp_config: its MCP config, added to the call kwargs as ``mcp_config``.
        original_user_prompt: repeated in every feedback message, so it stays in context.
        feedback_history: ``full`` resends every failed answer; ``last`` only the latest.
        escalation_history: ``keep`` or ``fresh`` (see "What an escalated attempt sees").
        debug_mode: log each attempt with its delay, error and stage.
        trace_memory: record tracemalloc's peak while the call ran in the metrics
            (``process_traced_peak_bytes``). tracemalloc is process-wide, so the figure
            includes every call running at the same time (``retrylib.hooks.MemoryHook``).
        max_validator_depth: how deep validators that call models (``LLMJudge``) may nest.
        review_store: the SQLite file where a call that reaches the human stage is queued
            for review (:mod:`retrylib.review`). ``None``: ``$RETRYLIB_REVIEW_STORE`` if set,
            else no store (nothing is written unless asked for); ``False``: never.
        max_replay_chars: a failed answer longer than this is cut (head and tail kept) when
            it is replayed in a re-ask; the attempt's ``note`` says so. ``None``: no cap.
        repair_json: before re-asking, try to repair an answer that failed validation with
            ``json-repair`` (a trailing comma, single quotes, prose around the object, an
            unclosed list): if the repaired text passes every validator, it is the answer,
            at zero extra calls, and the attempt's ``note`` says it was repaired (the
            ``[repair]`` extra). Off by default (see the README's extraction table).
        human_when_exhausted: when the attempts run out with ``max_attempts_before_human``
            set but not reached (transport errors took some attempts), hand the case to a
            human anyway: ``HumanReviewNeededError`` (queued in the review store like any
            other) instead of ``RetryExhaustedError``. The original design's semantics,
            which ``llm_call`` switches on; off for the Python API, where running out of
            attempts is the caller's to handle.
        tool_mode: what the tool stage does with ``debug_tool_mcp_config``: ``inject`` adds
            it to the request as ``mcp_config`` (the original design: a proxy that reads the
            key starts the tools), ``execute`` starts the MCP servers here and runs the
            model's tool calls, ``both`` does both. Default ``inject``: the original design's
            behaviour, and no process is started unless asked for.
        tool_max_rounds: in ``execute`` mode, tool rounds per attempt (then a final answer).
        tool_choice: in ``execute`` mode, ``force``: the first tool round forces a call of
            ``debug_tool_name`` (of the first tool offered when no tool has that name), later
            rounds are ``auto``; ``auto``: the model chooses in every round. Measured on
            SmolLM2/Gemma under llama.cpp: in ``auto`` a small model often rambles instead
            of calling, so ``force`` is the default.
        tool_timeout: in ``execute`` mode, seconds per tool call.
        stages: extra ladder entries ``(failures, Stage)`` beside the built-in ones that the
            threshold fields switch on (see ``retrylib.stages``).
        hooks: objects told about each call and attempt (see ``retrylib.hooks``).
        retry_on: classifies a transport failure: ``classify`` (the default) or a callable
            ``(exception) -> Classification | bool | None`` (a bool overrides ``retryable``
            only; ``None`` keeps the default verdict).
        max_total_tokens, max_total_cost: a cap on the call's tokens (in + out) and cost
            across all its attempts: the call ends with ``CallCapExceededError`` when the
            next attempt would pass it (estimated as the mean of the answered attempts:
            ``retrylib.budget.CallCap``).
        budget: a ``retrylib.budget.RetryBudget`` that every extra request of the call
            draws on (retries, re-asks, fallback calls, the calls of an ``LLMJudge``);
            ``None`` (the default): no budget, nothing changes. Share one between calls (and,
            with a ``RedisStore``, between processes).
        breaker: a ``retrylib.breaker.CircuitBreaker``, asked before each attempt and told
            its result; an open breaker moves the call to the next fallback model at once
            (or ends it with ``CircuitOpenError`` when none is left).
        fallback_on: what moves a call to the next of ``fallback_models`` besides failed
            validations: ``breaker_open`` (the model's breaker refuses it) and ``transport``
            (``fallback_after_transport_failures`` transport failures in a row on one
            model). pydantic-ai's ``fallback_on``.
        fallback_after_transport_failures: transport failures in a row on one model that
            move the call to the next of ``fallback_models`` (with ``transport`` in
            ``fallback_on``). ``None`` (the default): the model's share of the attempts,
            ``max_attempts_before_fallback`` when it is set, else ``max_attempts`` split
            evenly over the primary and the fallback models (rounded up); so a dead primary
            never takes every attempt of a call that has somewhere to go. Without
            ``fallback_models`` nothing moves. ``fallback_on=("breaker_open",)`` keeps
            transport failures on the same model.
        wait: the delay before retry ``n`` (``n = 1`` before attempt 2): a callable
            ``(n) -> float``; default the backoff of ``initial_delay``, ``backoff_factor``,
            ``max_delay`` and ``jitter``. ``Retry-After`` still applies on top.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True,
                              allow_inf_nan=False, arbitrary_types_allowed=True)

    max_attempts: int = Field(3, ge=1, le=10_000)
    initial_delay: float = Field(0.5, ge=0)
    backoff_factor: float = Field(2.0, ge=1)
    max_delay: float = Field(30.0, ge=0)
    jitter: Jitter = "full"
    seed: int | None = None
    attempt_timeout: float | None = Field(None, gt=0)
    deadline: float | None = Field(None, gt=0)
    respect_retry_after: bool = True
    max_retry_after: float = Field(60.0, ge=0)
    delay_validation_retries: bool = False

    max_attempts_before_constrained: int | None = Field(None, ge=0)
    max_attempts_before_fallback: int | None = Field(None, ge=1)
    max_attempts_before_tool_use: int | None = Field(None, ge=1)
    max_attempts_before_human: int | None = Field(None, ge=1)
    fallback_models: tuple[FallbackModel, ...] = ()
    constrained_format: Literal["llama_cpp", "openai"] = "llama_cpp"
    runaway_max_items: int | None = Field(16, ge=1, le=MAX_SPAN)
    runaway_max_length: int | None = Field(500, ge=1, le=MAX_SPAN)
    runaway_max_depth: int | None = Field(4, ge=1, le=MAX_DEPTH)

    debug_tool_name: str | None = None
    debug_tool_mcp_config: dict[str, Any] | None = None
    original_user_prompt: str | None = None
    feedback_history: Literal["full", "last"] = "full"
    escalation_history: Literal["keep", "fresh"] = "keep"
    debug_mode: bool = False
    trace_memory: bool = False
    max_validator_depth: int = Field(2, ge=0, le=10)
    review_store: str | Literal[False] | None = None
    max_replay_chars: int | None = Field(32_000, ge=100)
    repair_json: bool = False
    human_when_exhausted: bool = False
    tool_mode: Literal["inject", "execute", "both"] = "inject"
    tool_max_rounds: int = Field(2, ge=0, le=20)
    tool_choice: Literal["force", "auto"] = "force"
    tool_timeout: float = Field(10.0, gt=0)

    max_total_tokens: int | None = Field(None, gt=0)
    max_total_cost: float | None = Field(None, gt=0)
    fallback_on: tuple[Literal["breaker_open", "transport"], ...] = ("breaker_open", "transport")
    fallback_after_transport_failures: int | None = Field(None, ge=1)

    # Objects, not data: left out of model_dump() (a review case stores the data only).
    budget: Any = Field(None, exclude=True)
    breaker: Any = Field(None, exclude=True)
    stages: tuple[tuple[int, Any], ...] = Field((), exclude=True)
    hooks: tuple[Any, ...] = Field((), exclude=True)
    retry_on: Callable[..., Any] | None = Field(None, exclude=True)
    wait: Callable[[int], float] | None = Field(None, exclude=True)

    @property
    def outage_after(self) -> int | None:
        """Transport failures in a row on one model that move the call to the next fallback
        model (see ``fallback_after_transport_failures``); ``None``: never."""
        if "transport" not in self.fallback_on or not self.fallback_models:
            return None
        if self.fallback_after_transport_failures is not None:
            return self.fallback_after_transport_failures
        if self.max_attempts_before_fallback is not None:
            return self.max_attempts_before_fallback
        return max(1, -(-self.max_attempts // (1 + len(self.fallback_models))))

    @field_validator(
        "initial_delay", "max_delay", "attempt_timeout", "deadline", "max_retry_after", mode="before"
    )
    @classmethod
    def _timedelta_to_seconds(cls, v: Any) -> Any:
        return _seconds(v)

    @field_validator("runaway_max_items", "runaway_max_length", "runaway_max_depth", mode="before")
    @classmethod
    def _no_bool_bound(cls, v: Any) -> Any:
        if isinstance(v, bool):  # True would pass as 1
            raise ValueError("must be an int or None, not a bool")
        return v

    @field_validator("review_store", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if v == "" or v is True:
            raise ValueError("review_store must be a file path, False (never) or None (the "
                             "environment's RETRYLIB_REVIEW_STORE)")
        return v

    @field_validator("hooks", mode="before")
    @classmethod
    def _hooks_tuple(cls, v: Any) -> Any:
        if v is None:
            return ()
        if callable(v) or not isinstance(v, list | tuple):
            v = (v,)
        return tuple(v)

    @field_validator("stages", mode="before")
    @classmethod
    def _check_stages(cls, v: Any) -> Any:
        from retrylib.stages import Stage

        out = []
        for i, entry in enumerate(v or ()):
            if isinstance(entry, Stage):
                raise ValueError(f"stages[{i}]: give (failures, stage), got a bare {entry!r}")
            t, stage = entry
            if isinstance(stage, type) and issubclass(stage, Stage):
                stage = stage()
            if not isinstance(stage, Stage):
                raise ValueError(f"stages[{i}]: {stage!r} is not a retrylib.stages.Stage")
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                raise ValueError(f"stages[{i}]: the failure count must be an int >= 0, got {t!r}")
            out.append((t, stage))
        return tuple(out)

    @field_validator("fallback_models", mode="before")
    @classmethod
    def _coerce_fallbacks(cls, v: Any) -> Any:
        if v is None:
            return ()
        return tuple({"model": m} if isinstance(m, str) else m for m in v)

    @model_validator(mode="after")
    def _check_ladder(self) -> RetryConfig:
        if self.initial_delay > self.max_delay:
            raise ValueError(
                f"initial_delay ({self.initial_delay}) must not exceed max_delay ({self.max_delay})"
            )
        ladder = [(s, t) for s, t in self._thresholds() if t is not None]
        for (s1, t1), (s2, t2) in itertools.pairwise(ladder):
            # Only tool == human is allowed (the original design's semantics).
            if t1 > t2 or (t1 == t2 and (s1, s2) != ("tool", "human")):
                raise ValueError(
                    f"escalation thresholds overlap or are out of order: {s1} at {t1} must come "
                    f"before {s2} at {t2} (required: constrained < fallback < tool <= human)"
                )
        for stage, t in ladder:
            if t > self.max_attempts:
                raise ValueError(
                    f"max_attempts_before_{'tool_use' if stage == 'tool' else stage} ({t}) must not "
                    f"exceed max_attempts ({self.max_attempts})"
                )
        if self.max_attempts_before_fallback is not None and not self.fallback_models:
            raise ValueError("max_attempts_before_fallback is set but fallback_models is empty")
        if self.fallback_after_transport_failures is not None and not self.fallback_models:
            raise ValueError("fallback_after_transport_failures is set but fallback_models is empty")
        for name, kind in (("budget", "RetryBudget"), ("breaker", "CircuitBreaker")):
            obj = getattr(self, name)
            if obj is not None and type(obj).__name__ != kind and not hasattr(obj, "allow"):
                raise ValueError(f"{name} must be a retrylib {kind}, got {type(obj).__name__}")
        if self.max_attempts_before_tool_use is not None and not self.debug_tool_name:
            raise ValueError("max_attempts_before_tool_use is set but debug_tool_name is empty")
        taken = {t: s for s, t in ladder}
        for t, stage in self.stages:
            if t > self.max_attempts:
                raise ValueError(f"stage {stage.name!r} at {t} must not exceed max_attempts "
                                 f"({self.max_attempts})")
            if t in taken or t == 0:
                raise ValueError(f"stage {stage.name!r} at {t} would hide "
                                 f"{taken.get(t, 'normal')!r}, which starts at {t} too")
            taken[t] = stage.name
        return self

    def _thresholds(self) -> list[tuple[str, int | None]]:
        return [
            ("constrained", self.max_attempts_before_constrained),
            ("fallback", self.max_attempts_before_fallback),
            ("tool", self.max_attempts_before_tool_use),
            ("human", self.max_attempts_before_human),
        ]

    def ladder(self) -> list[tuple[str, int]]:
        """The stages of the ladder, in order, with the failure count that starts each: the
        built-ins the threshold fields switch on, and the entries of ``stages``.

        ``normal`` starts at 0 failures and is always first.
        """
        lad = self.stage_ladder
        return list(zip(lad.names, lad.thresholds, strict=True))

    def stage_for(self, failures: int) -> str:
        """The name of the stage of an attempt made after ``failures`` failed validations."""
        return stage_at(self.ladder(), failures)

    @cached_property
    def stage_ladder(self) -> Ladder:
        """The ladder as stage objects: the built-ins switched on, plus ``stages``, in order."""
        from retrylib.stages import BUILT_IN, Ladder

        built = [("normal", 0)] + [(s, t) for s, t in self._thresholds() if t is not None]
        entries = [(t, i, BUILT_IN[s]()) for i, (s, t) in enumerate(built)]
        entries += [(t, len(entries) + i, st) for i, (t, st) in enumerate(self.stages)]
        entries.sort(key=lambda e: (e[0], e[1]))
        return Ladder(tuple(t for t, _, _ in entries), tuple(st for _, _, st in entries))

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error("RetryConfig", exc)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> RetryConfig:
        """As pydantic's, but a broken rule is a :class:`ConfigError`, as for the constructor."""
        if isinstance(obj, cls):
            return obj
        if not isinstance(obj, Mapping):
            raise ConfigError(f"invalid RetryConfig: expected a mapping of fields, got "
                              f"{type(obj).__name__}")
        return cls(**obj)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> RetryConfig:
        import json

        try:
            data = json.loads(json_data)
        except ValueError as exc:
            raise ConfigError(f"invalid RetryConfig: not JSON ({exc})") from None
        return cls.model_validate(data)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> RetryConfig:
        """A validated copy: ``update`` goes through every rule (pydantic's own skips them)."""
        return self.replace(**dict(update or {}))

    def replace(self, **changes: Any) -> RetryConfig:
        """A copy with ``changes`` applied and validated."""
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**fields, **changes})


def stage_at(ladder: list[tuple[str, int]], failures: int) -> str:
    """The stage that ``failures`` failed validations reach on ``ladder`` (``RetryConfig.ladder()``)."""
    stage = "normal"
    for s, t in ladder:
        if failures >= t:
            stage = s
    return stage


def format_validation_error(what: str, exc: ValidationError) -> str:
    """One readable line per broken rule: ``field: rule (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(config)"
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        got = err.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{loc}: {msg}{got_s}")
    return f"invalid {what}: " + "; ".join(lines)
