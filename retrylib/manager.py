"""``retry_with_validation``: the retry loop, its stages and its attempt records.

One call, step by step:

1. Send the caller's messages (deep-copied) plus the replayed failures (``feedback``).
2. A transport failure is classified (``classify``). Not retryable: ``NonRetryableError``
   after that one call. Retryable: sleep the next backoff delay, or longer if the server
   sent ``Retry-After``, and try again. Validation failures are re-asked at once (the server
   is fine; the answer was not) unless ``delay_validation_retries`` is set.
3. The answer's text is extracted and validated. Valid: return a ``RetryResult``. Invalid:
   the failure count grows, the escalation ladder (``RetryConfig``) picks the next stage,
   and the errors go back to the model.
4. At the ``max_attempts_before_human``-th failure, ``HumanReviewNeededError`` (with a review
   store configured, the case is written to it first: ``retrylib.review``; a reviewed call
   goes on with ``continue_with_validation``); when the
   attempts, the deadline or the patience for ``Retry-After`` run out,
   ``RetryExhaustedError`` — unless some answer failed only ``Soft`` checks: then the best
   of those (fewest soft errors, latest on a tie) is returned, its errors as ``warnings``.

All state lives in the call's own frame: concurrent calls share nothing mutable.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import os
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from loguru import logger

from retrylib._testmode import MODE
from retrylib.backoff import Backoff
from retrylib.classify import classify, error_facts
from retrylib.config import STAGES, RetryConfig, stage_at
from retrylib.constrained import (
    asks_for_schema,
    grammar_safe_schema,
    looks_like_schema_rejection,
    response_format_for,
    schema_from_validators,
)
from retrylib.errors import (
    ExtractionError,
    HumanReviewNeededError,
    NonRetryableError,
    RetryError,
    RetryExhaustedError,
)
from retrylib.extract import (
    extract_finish_reason,
    extract_model,
    extract_text,
    extract_usage,
    is_cache_hit,
    response_cost,
)
from retrylib.feedback import Exchange, build_messages, feedback_text
from retrylib.result import Attempt, RetryResult, summarize
from retrylib.validators.base import ValidationContext, ValidationResult, Validator
from retrylib.validators.combine import AllOf, _children, named_errors

if TYPE_CHECKING:
    from retrylib.review.store import ReviewStore

Call = Callable[..., Awaitable[Any] | Any]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Rss:
    """The resident set size, read cheaply on every attempt.

    ``psutil`` costs ~11 µs a read (it opens and parses a /proc file each time); a kept
    ``/proc/self/statm`` descriptor read with ``pread`` costs ~1 µs. Reopened after a fork.
    Where there is no ``/proc`` (macOS), psutil is used if installed, else the peak RSS
    from ``getrusage``.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._pid = -1

    def __call__(self) -> int:
        pid = os.getpid()
        try:
            if self._pid != pid:
                self._fd, self._pid = os.open("/proc/self/statm", os.O_RDONLY), pid
            return int(os.pread(self._fd, 64, 0).split()[1]) * _PAGE  # type: ignore[arg-type]
        except (OSError, ValueError, IndexError):
            return _rss_without_proc()


def _rss_without_proc() -> int:
    try:
        import psutil
    except ImportError:
        import resource

        # ru_maxrss is the peak, in KiB on Linux and bytes on macOS: the best there is here.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    return int(psutil.Process().memory_info().rss)


_rss = _Rss()


_LEVEL = {s: i for i, s in enumerate(STAGES)}
_CUT_OFF = ("Your previous answer was cut off at the token limit before it was complete: "
            "give a shorter answer that fits.")
_CONSTRAINED, _FALLBACK, _TOOL = _LEVEL["constrained"], _LEVEL["fallback"], _LEVEL["tool"]


class _Loop:
    """The state of one call. Made per call, never shared."""

    def __init__(self, call: Call, messages: Sequence[dict[str, Any]], validators: Sequence[Validator],
                 config: RetryConfig, response_format: Any, depth: int, call_kwargs: dict[str, Any]):
        self.call = call
        self.base = copy.deepcopy(list(messages))
        self.validators = list(validators)  # as given: a review case records each one
        # One validator is used as is (AllOf around it only costs time; _children checks it).
        self.validator = (_children("validators", tuple(validators))[0] if len(validators) == 1
                          else AllOf(*validators) if validators else None)
        self.config = config
        self.response_format = response_format
        self.depth = depth
        self.call_kwargs = call_kwargs
        self.attempts: list[Attempt] = []
        self.history: list[Exchange] = []
        self.subresults: list[Any] = []
        self.failures = 0
        self.stage_reached = "normal"
        self.t0 = time.monotonic()
        self.deadline_at = self.t0 + config.deadline if config.deadline else None
        self.last_error: dict[str, Any] | None = None
        self.last_response: Any = None
        self.last_text: str | None = None
        self.last_errors: list[str] = []
        self.last_suggestions: tuple[str, ...] = ()
        self.last_messages: list[dict[str, Any]] = []
        self.case_id: str | None = None  # the review case this call continues, if any
        self.has_k = config.max_attempts_before_constrained is not None
        schema = schema_from_validators(validators) if self.has_k else None
        self.schema: dict[str, Any] | None
        self.schema_dropped: list[str]
        self.schema, self.schema_dropped = grammar_safe_schema(schema) if schema else (None, [])
        self.constrained_off: str | None = None if self.schema else (
            "no validator provides a JSON schema" if self.has_k else None)
        self.constrained_tried = False
        self.caller_constrains = asks_for_schema(response_format)
        self.ladder = config.ladder()  # computed once: the hot path asks for it per attempt
        self.stage = stage_at(self.ladder, 0)  # the stage of the next attempt; moves on each failure
        self.call_model = getattr(call, "model", None)
        self.fresh = config.escalation_history == "fresh"
        self.history_from = 0  # with ``fresh``: where the current stage's history starts
        self.prev_stage = ""
        # Answers that failed only soft checks: (soft errors, -attempt number, result, response, text)
        self.softly: list[tuple[int, int, ValidationResult, Any, str]] = []

    # -- one attempt's request -------------------------------------------------------------
    def request(self, stage: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """The messages and kwargs of the next attempt, and facts about them."""
        c = self.config
        if self.fresh and stage != self.prev_stage and stage in ("constrained", "fallback"):
            self.history_from = len(self.history)  # the stage starts over (see RetryConfig)
        self.prev_stage = stage
        history = self.history[self.history_from:] if self.history_from else self.history
        msgs = build_messages(self.base, history, c.feedback_history)
        kw = dict(self.call_kwargs)
        # "grammar": retrylib itself put the schema in this request (so it can take it out again).
        facts: dict[str, Any] = {"constrained": self.caller_constrains, "grammar": False,
                                 "mcp": False, "note": None}
        if c.attempt_timeout is not None:
            kw.setdefault("timeout", c.attempt_timeout)
        if self.response_format is not None:
            kw["response_format"] = self.response_format
        level = _LEVEL[stage]
        if level >= _CONSTRAINED and self.has_k:
            if self.schema is not None and self.constrained_off is None:
                kw["response_format"] = response_format_for(self.schema, c.constrained_format)
                facts["constrained"] = facts["grammar"] = True
                if self.schema_dropped:
                    facts["note"] = "left to the validators: " + "; ".join(self.schema_dropped)
            else:
                facts["note"] = f"constrained stage skipped: {self.constrained_off}"
        if level >= _FALLBACK and c.fallback_models:
            idx = min(self.failures - (c.max_attempts_before_fallback or 0), len(c.fallback_models) - 1)
            kw.update(c.fallback_models[max(0, idx)].call_kwargs())
        if level >= _TOOL and c.debug_tool_mcp_config is not None:
            kw["mcp_config"] = copy.deepcopy(c.debug_tool_mcp_config)
            facts["mcp"] = True
        return msgs, kw, facts

    def exchange(self, answer: str, guidance: str | None = None) -> Exchange:
        """The replay of the last failed answer: its feedback, written for the current stage."""
        c = self.config
        suggestions = self.last_suggestions
        if guidance:  # a reviewer's words come first: they say what the validators could not
            suggestions = (f"A human reviewer's guidance: {guidance}", *suggestions)
        return Exchange(answer, feedback_text(
            self.last_errors, suggestions, original_prompt=c.original_user_prompt,
            tool_name=c.debug_tool_name if _LEVEL[self.stage] >= _TOOL else None))

    # -- recorded state (a review case), and continuing from it --------------------------------
    def state(self) -> dict[str, Any]:
        """The call's state as plain data: enough for :func:`continue_with_validation`."""
        return {"base": copy.deepcopy(self.base), "attempts": [a.to_dict() for a in self.attempts],
                "history": [[e.answer, e.feedback] for e in self.history],
                "failures": self.failures, "stage_reached": self.stage_reached,
                "history_from": self.history_from, "constrained_off": self.constrained_off,
                "constrained_tried": self.constrained_tried, "last_text": self.last_text,
                "last_errors": list(self.last_errors), "last_suggestions": list(self.last_suggestions)}

    def restore(self, state: Mapping[str, Any], guidance: str | None = None) -> None:
        """Go on from ``state`` (:meth:`state` of a call that stopped at the human stage).

        The last failed answer is replayed with its feedback (and ``guidance``) on the next
        attempt, as it would have been had the call not stopped; attempt numbers continue.
        """
        from retrylib.review.case import attempt_from

        self.attempts = [attempt_from(a) for a in state["attempts"]]
        self.history = [Exchange(a, f) for a, f in state["history"]]
        self.failures = int(state["failures"])
        self.stage_reached = state.get("stage_reached", "normal")
        self.history_from = int(state.get("history_from", 0))
        self.constrained_off = state.get("constrained_off", self.constrained_off)
        self.constrained_tried = bool(state.get("constrained_tried"))
        self.last_text = state.get("last_text")
        self.last_errors = list(state.get("last_errors", ()))
        self.last_suggestions = tuple(state.get("last_suggestions", ()))
        self.case_id = state.get("case_id")
        self.stage = stage_at(self.ladder, self.failures)
        # The resumed leg goes on in its stage: no "fresh" restart that would drop the guidance.
        self.prev_stage = self.stage
        self.history.append(self.exchange(self.last_text or "", guidance))
        # The attempts' time axis goes on where it stopped (the review's wait is left out; the
        # wall-clock ``timestamp`` shows it); the deadline, if any, starts afresh.
        now = time.monotonic()
        self.t0 = now - (self.attempts[-1].end if self.attempts else 0.0)
        self.deadline_at = now + self.config.deadline if self.config.deadline else None
        # The validators' calls of the first leg still count in the metrics.
        self.subresults = [SimpleNamespace(metrics=dict(state.get("validator_metrics") or {}))]

    def remaining(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - time.monotonic()

    def record(self, fields: dict[str, Any]) -> Attempt:
        """Make the attempt's record from ``fields`` (the number and RSS are added here)."""
        a = Attempt(number=len(self.attempts) + 1, rss_bytes=_rss(), **fields)
        self.attempts.append(a)
        if self.config.debug_mode:
            logger.debug(
                "attempt {} [{}] {} slept={:.3f}s{}{}", a.number, a.stage, a.outcome, a.slept,
                f" error={a.error_type}({a.status_code})" if a.error_type else "",
                f" validation={list(a.validation_errors)[:3]}" if a.validation_errors else "",
            )
        return a

    def metrics(self, peak: int | None) -> dict[str, Any]:
        return summarize(self.attempts, self.subresults, self.stage_reached, peak)

    def exhausted(self, message: str, reason: str) -> RetryExhaustedError:
        return RetryExhaustedError(message, reason=reason, attempts=list(self.attempts),
                                   last_error=self.last_error)

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> RetryResult:
        try:
            return await self._run()
        except (HumanReviewNeededError, RetryExhaustedError):
            if not self.softly:
                raise
            # Some answer failed only soft checks: it is the result, with warnings.
            _, neg_number, result, response, text = min(self.softly)
            self.stage_reached = max((a.stage for a in self.attempts), key=_LEVEL.__getitem__)
            return RetryResult(content=text, response=response, parsed=result.parsed,
                               attempts=list(self.attempts), metrics={},
                               warnings=result.errors, accepted_attempt=-neg_number)

    async def _run(self) -> RetryResult:
        c = self.config
        backoff = Backoff(c)
        retry_after: float | None = None
        last_kind = ""  # "transport" | "rejected" (the route refused the schema) | "validation" | ""
        # Test mode (retrylib.testing.set_testing) may cap the attempts, and skips the sleeps.
        first = len(self.attempts) + 1  # > 1 when the call goes on from recorded state
        max_attempts = c.max_attempts
        if MODE.testing and MODE.attempts:
            max_attempts = min(max_attempts, first - 1 + MODE.attempts)
        for n in range(first, max_attempts + 1):
            scheduled = slept = 0.0
            if n > first:
                planned = next(backoff)
                if last_kind == "transport" or c.delay_validation_retries:
                    scheduled = planned
                wait = scheduled
                if last_kind == "transport" and retry_after is not None and c.respect_retry_after:
                    if retry_after > c.max_retry_after:
                        raise self.exhausted(
                            f"the server asked to wait {retry_after:.1f}s, more than max_retry_after "
                            f"({c.max_retry_after}s)", "retry_after_too_long")
                    wait = max(wait, retry_after)
                left = self.remaining()
                if left is not None and wait >= left:
                    raise self.exhausted(
                        f"the deadline ({c.deadline}s) would pass during the {wait:.2f}s backoff "
                        f"before attempt {n}", "deadline")
                if wait > 0 and not MODE.testing:
                    t = time.monotonic()
                    await asyncio.sleep(wait)  # CancelledError propagates: the call ends now
                    slept = time.monotonic() - t
            stage = self.stage
            if _LEVEL[stage] > _LEVEL[self.stage_reached]:
                self.stage_reached = stage
            msgs, kw, facts = self.request(stage)
            self.last_messages = msgs
            if facts["constrained"]:
                self.constrained_tried = True
            left = self.remaining()
            if left is not None:
                kw["timeout"] = min(kw.get("timeout") or left, left)
            common = dict(stage=stage, scheduled_delay=scheduled, slept=slept,
                          retry_after=retry_after, tool_suggested=_LEVEL[stage] >= _TOOL
                          and bool(c.debug_tool_name) and bool(self.history),
                          mcp_config_sent=facts["mcp"], constrained=facts["constrained"],
                          model=kw.get("model") or self.call_model, messages_sent=len(msgs),
                          timestamp=time.time())
            start = time.monotonic() - self.t0
            try:
                response = await self._invoke(msgs, kw, left)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                verdict = classify(exc)
                self.last_error = error_facts(exc, verdict)
                note = facts["note"]
                if facts["grammar"] and looks_like_schema_rejection(
                        verdict.status_code, verdict.retryable, verdict.reason):
                    # The route refused the schema: skip the stage and retry at once.
                    self.constrained_off = f"route rejected response_format ({verdict.error_type} {verdict.status_code})"
                    note = f"constrained stage skipped: {self.constrained_off}"
                    retry_after, last_kind = None, "rejected"
                else:
                    retry_after, last_kind = verdict.retry_after, "transport"
                common.update(start=start, end=time.monotonic() - self.t0, outcome="transport_error",
                              error_type=verdict.error_type, status_code=verdict.status_code,
                              error_message=str(exc)[:500], retryable=verdict.retryable, note=note)
                self.record(common)
                if last_kind == "rejected":
                    continue
                if not verdict.retryable:
                    raise NonRetryableError(
                        f"not retryable ({verdict.reason}): {type(exc).__name__}: {str(exc)[:300]}",
                        status_code=verdict.status_code, reason=verdict.reason,
                        attempts=list(self.attempts), last_error=self.last_error) from exc
                left = self.remaining()
                if left is not None and left <= 0:
                    raise self.exhausted(f"the deadline ({c.deadline}s) passed during attempt {n}",
                                         "deadline") from exc
                continue
            end = time.monotonic() - self.t0
            result = await self._validate(response, msgs, n)
            text = self.last_text
            if type(response) is str:  # a plain-text route: no usage, cost, cache flag or model
                common.update(start=start, end=end, text=text, note=facts["note"])
            else:
                tin, tout = extract_usage(response)
                common.update(start=start, end=end, text=text, tokens_in=tin, tokens_out=tout,
                              cost=response_cost(response), cache_hit=is_cache_hit(response),
                              note=facts["note"], model=common["model"] or extract_model(response),
                              finish_reason=extract_finish_reason(response))
            if result.valid:
                common["outcome"] = "ok"
                self.record(common)
                await self._verdict_to_route("accept", msgs, kw)
                return RetryResult(content=text or "", response=response, parsed=result.parsed,
                                   attempts=list(self.attempts), metrics={},
                                   accepted_attempt=self.attempts[-1].number)
            self.failures += 1
            retry_after, last_kind = None, "validation"
            self.last_errors = list(result.errors)
            common.update(outcome="validation_failed", validation_errors=tuple(result.errors))
            a = self.record(common)
            if result.soft and text is not None:
                self.softly.append((len(result.errors), -a.number, result, response, text))
            await self._verdict_to_route("reject", msgs, kw)
            self.last_suggestions = tuple(result.suggestions)
            if common.get("finish_reason") == "length":  # the answer was cut, not just wrong
                self.last_suggestions = (_CUT_OFF, *self.last_suggestions)
            m = c.max_attempts_before_human
            if m is not None and self.failures >= m:
                self.stage_reached = "human"
                raise HumanReviewNeededError(
                    f"{self.failures} answers failed validation (max_attempts_before_human={m}); "
                    f"last errors: {'; '.join(self.last_errors)[:300]}",
                    attempts=list(self.attempts), messages=self.last_messages,
                    last_response=self.last_response, last_text=self.last_text,
                    validation_errors=self.last_errors, config=c.model_dump(),
                    last_error=self.last_error)
            self.stage = stage_at(self.ladder, self.failures)
            self.history.append(self.exchange(text or ""))
        raise self.exhausted(
            f"all {max_attempts} attempts failed; last: "
            + ("; ".join(self.last_errors)[:300] if last_kind == "validation"
               else str((self.last_error or {}).get("message", ""))[:300]),
            "max_attempts")

    async def _invoke(self, msgs: list[dict[str, Any]], kw: dict[str, Any], left: float | None) -> Any:
        out = self.call(messages=msgs, **kw)
        if inspect.isawaitable(out):
            if left is None:
                return await out
            # The route's own timeout should fire first; this is the backstop for the deadline.
            async with asyncio.timeout(left):
                return await out
        return out

    async def _validate(self, response: Any, msgs: list[dict[str, Any]], n: int) -> ValidationResult:
        self.last_response = response
        try:
            text = extract_text(response)
        except ExtractionError as exc:
            self.last_text = None
            return ValidationResult.fail(f"empty response: {exc}",
                                         suggestions=("Reply with the requested content.",))
        self.last_text = text
        if self.validator is None:
            return ValidationResult.ok()
        ctx = ValidationContext(attempt=n, messages=msgs, depth=self.depth,
                                max_depth=self.config.max_validator_depth)
        try:
            r = await self.validator.validate(text, ctx)
        finally:
            self.subresults.extend(ctx.subresults)
        if not r.valid and not r.errors:  # say which check failed, as AllOf does
            r = ValidationResult(False, named_errors(self.validator, r), r.suggestions, r.parsed, r.soft)
        return r

    async def _verdict_to_route(self, verdict: str, msgs: list[dict[str, Any]], kw: dict[str, Any]) -> None:
        """Tell the route (``call.accept`` / ``call.reject``) what became of its answer.

        The route caches only accepted answers and evicts rejected ones, so a rejected
        answer is never served from a cache again.
        """
        hook = getattr(self.call, verdict, None)
        if hook is not None:
            try:
                out = hook(messages=msgs, **kw)
                if inspect.isawaitable(out):
                    await out
            except Exception as exc:  # a cache that fails must not end the call
                logger.warning("cache {} failed: {}: {}", verdict, type(exc).__name__, exc)


async def retry_with_validation(
    call: Call,
    messages: Sequence[dict[str, Any]],
    validators: Sequence[Validator] | None = None,
    config: RetryConfig | None = None,
    response_format: Any = None,
    *,
    depth: int = 0,
    review_store: ReviewStore | str | None = None,
    **call_kwargs: Any,
) -> RetryResult:
    """Call ``call`` until its answer passes every validator.

    Args:
        call: ``async call(messages=..., **kw)`` (or a plain function) returning an OpenAI
            or Anthropic dict, a litellm ``ModelResponse`` or a ``str``. For the fallback
            stage it must accept ``model=`` (and ``api_base=``) overrides, as
            :func:`retrylib.client.make_call` does. If it has ``accept``/``reject(messages=..., **kw)``
            methods, they hear each verdict (the route caches only accepted answers).
        messages: the conversation; never mutated.
        validators: every one must pass; none means any extractable text is accepted.
        config: the retry configuration (defaults to ``RetryConfig()``).
        response_format: passed through to every attempt (the constrained stage overrides).
        depth: how many validation calls enclose this one (set by ``LLMJudge``).
        review_store: where a call that reaches the human stage is queued for review (a
            :class:`~retrylib.review.ReviewStore` or a SQLite path); default
            ``config.review_store``, else ``$RETRYLIB_REVIEW_STORE``, else nowhere.
        **call_kwargs: passed to every call (``temperature``, ``extra_headers``, ...).

    Returns:
        A :class:`RetryResult` whose ``content`` passed validation.

    Raises:
        NonRetryableError: after one call, on an error retrying cannot fix.
        RetryExhaustedError: attempts, deadline or ``Retry-After`` patience ran out.
        HumanReviewNeededError: the ``max_attempts_before_human``-th validation failure;
            with a review store, the case is written first and ``case_id`` names it.
        asyncio.CancelledError: cancellation ends the call at once, even mid-backoff.
    """
    config = config or RetryConfig()
    loop = _Loop(call, messages, list(validators or ()), config, response_format, depth, call_kwargs)
    return await _drive(loop, review_store)


async def continue_with_validation(
    call: Call,
    state: Mapping[str, Any],
    validators: Sequence[Validator] | None = None,
    config: RetryConfig | None = None,
    response_format: Any = None,
    *,
    guidance: str | None = None,
    depth: int = 0,
    review_store: ReviewStore | str | None = None,
    **call_kwargs: Any,
) -> RetryResult:
    """Continue a call that stopped at the human stage, from its recorded state.

    Nothing that already happened is sent again: the next request replays the last failed
    answer with its feedback (and ``guidance``), the attempt log goes on and attempt numbers
    continue. :func:`retrylib.review.resume` is the way in from a review case.

    Args:
        call: the route, as for :func:`retry_with_validation`.
        state: ``_Loop.state()`` as a review case holds it, plus ``case_id`` (the case that a
            new human stage updates) and ``validator_metrics``.
        validators: the call's validators.
        config: the configuration of this leg (its ``max_attempts`` counts every attempt,
            the recorded ones too).
        response_format: as for :func:`retry_with_validation`.
        guidance: a reviewer's words, added to the re-ask of the last answer.
        depth: as for :func:`retry_with_validation`.
        review_store: where a new human stage is recorded.
        **call_kwargs: passed to every call.

    Returns:
        A :class:`RetryResult` whose ``attempts`` hold the recorded attempts and the new ones.

    Raises:
        The errors of :func:`retry_with_validation`.
    """
    config = config or RetryConfig()
    loop = _Loop(call, state["base"], list(validators or ()), config, response_format, depth,
                 call_kwargs)
    loop.restore(state, guidance)
    return await _drive(loop, review_store)


async def _drive(loop: _Loop, review_store: ReviewStore | str | None) -> RetryResult:
    config = loop.config
    started_tracing = False
    if config.trace_memory and not tracemalloc.is_tracing():
        tracemalloc.start()
        started_tracing = True
    try:
        result = await loop.run()
    except RetryError as exc:
        exc.metrics = _finish(loop, started_tracing)
        if isinstance(exc, HumanReviewNeededError):
            _queue_for_review(loop, exc, review_store)
        raise
    except BaseException:
        _finish(loop, started_tracing)
        raise
    result.metrics = _finish(loop, started_tracing)
    result.metrics["accepted_with_warnings"] = bool(result.warnings)
    return result


def _queue_for_review(loop: _Loop, exc: HumanReviewNeededError,
                      review_store: ReviewStore | str | None) -> None:
    """Write the case to the review store, if one is configured, before ``exc`` is raised."""
    if review_store is None and loop.config.review_store is None and loop.case_id is None \
            and not os.environ.get("RETRYLIB_REVIEW_STORE"):
        return  # no store: not even the import
    from retrylib.review.hook import queue_case

    queue_case(loop, exc, review_store)


def _finish(loop: _Loop, started_tracing: bool) -> dict[str, Any]:
    traced = loop.config.trace_memory and tracemalloc.is_tracing()
    peak = tracemalloc.get_traced_memory()[1] if traced else None
    if started_tracing:
        tracemalloc.stop()
    metrics = loop.metrics(peak)
    if loop.config.debug_mode:
        logger.debug("call ended after {} attempts: {}", len(loop.attempts), metrics)
    return metrics


def run_sync(awaitable: Awaitable[Any]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(awaitable)  # type: ignore[arg-type]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, awaitable).result()  # type: ignore[arg-type]


def retry_with_validation_sync(*args: Any, **kwargs: Any) -> RetryResult:
    """The sync wrapper of :func:`retry_with_validation`, for scripts."""
    return run_sync(retry_with_validation(*args, **kwargs))
