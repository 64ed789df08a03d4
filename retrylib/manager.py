"""``retry_with_validation``: the retry loop.

One call, step by step (the loop is :func:`_run`; each step is one function):

1. An attempt (``_Loop.attempt``) sends the caller's messages (deep-copied) plus the
   replayed failures, shaped by the stages of the escalation ladder (``retrylib.stages``),
   and comes back with a tagged outcome: ok, invalid, a transport failure, or a schema the
   route refused (``retrylib.decision``).
2. A pure function, :func:`~retrylib.decision.decide`, maps (state, outcome, policy) to the
   next step: return, raise, retry after a delay (a retryable transport failure: the next
   backoff delay, or longer if the server sent ``Retry-After``), re-ask (an invalid answer:
   at once, unless ``delay_validation_retries``), or escalate to the next stage.
3. At the terminal stage (``max_attempts_before_human``), ``HumanReviewNeededError`` (with
   a review store configured, the case is written to it first: ``retrylib.review``; a
   reviewed call goes on with ``continue_with_validation``); when the attempts, the
   deadline or the patience for ``Retry-After`` run out, ``RetryExhaustedError``; an error
   retrying cannot fix, ``NonRetryableError``. Unless some answer failed only ``Soft``
   checks: then the best of those (fewest soft errors, latest on a tie) is returned, its
   errors as ``warnings``, and it is the one the route caches.

What is measured is a hook (``retrylib.hooks``): a call with none pays for none. All state
lives in the call's own :class:`~retrylib.loop._Loop`: concurrent calls share nothing mutable.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from retrylib._testmode import MODE
from retrylib.backoff import Backoff
from retrylib.config import RetryConfig
from retrylib.decision import OK, RAISE, RETURN, Decision, Policy, State, decide
from retrylib.errors import (
    ConfigError,
    HumanReviewNeededError,
    NonRetryableError,
    RetryError,
    RetryExhaustedError,
    ValidatorError,
)
from retrylib.hooks import LOG_HOOK, MEMORY_HOOK, installed, safely
from retrylib.loop import _Loop
from retrylib.result import RetryResult
from retrylib.sync import retry_with_validation_sync, run_sync  # the sync entry points live there
from retrylib.validators.base import Validator

if TYPE_CHECKING:
    from retrylib.review.store import ReviewStore

__all__ = ["_Loop", "continue_with_validation", "retry_with_validation",
           "retry_with_validation_sync", "run_sync"]

Call = Callable[..., Awaitable[Any] | Any]


async def _run(loop: _Loop) -> RetryResult:
    """The loop: one attempt, one decision, until the decision is to return or to raise."""
    wait = _wait_strategy(loop)
    while True:
        gate = await loop.admit() if loop.guarded else None  # breaker, budget, cap
        if gate is not None:
            return await _give_up(loop, gate)
        outcome = await loop.attempt()
        n = len(loop.attempts)
        planned = wait(n) if outcome.kind != OK else 0.0
        state = State(n, loop.failures, loop.stage, loop.model_failures,
                      loop.policy.outage_after is not None and loop.can_move())
        d = decide(state, outcome, loop.policy, planned=planned, remaining=loop.remaining())
        reject = loop.apply(d, outcome, planned)
        if reject is not None:  # the answer failed: the route must not cache it
            await loop.verdict_to_route("reject", reject)
        if d.action == RETURN:
            return await _accept(loop, loop.attempts[-1].number, loop.last_result,
                                 loop.last_response, loop.last_text or "", warnings=())
        if d.action == RAISE:
            return await _give_up(loop, d)
        if d.delay > 0 and not MODE.testing:
            t = time.monotonic()
            await asyncio.sleep(d.delay)  # CancelledError propagates: the call ends now
            loop.slept = time.monotonic() - t


def _wait_strategy(loop: _Loop) -> Callable[[int], float]:
    """``wait(n)``: the delay before retry ``n``: ``config.wait``, else the call's own backoff
    (seeded with ``(seed, call_key)``: see ``retrylib.backoff``)."""
    if loop.config.wait is not None:
        return loop.config.wait
    backoff = Backoff(loop.config, key=loop.call_key)
    loop.call_key = backoff.key
    return lambda n: next(backoff)


async def _accept(loop: _Loop, number: int, result: Any, response: Any, text: str,
                  warnings: tuple[str, ...]) -> RetryResult:
    """The one return path: the answer is the result, and the route may cache it."""
    req = loop.last_request if not warnings else next(s[5] for s in loop.softly if -s[1] == number)
    assert req is not None
    if loop.has_verdicts:  # (a route without accept/reject has nothing to hear)
        await loop.verdict_to_route("accept", req)
    for *_, other in loop.softly:  # the other softly-failed answers are rejected now
        if other is not req:
            await loop.verdict_to_route("reject", other)
    return RetryResult(content=text, response=response, parsed=getattr(result, "parsed", None),
                       attempts=list(loop.attempts), metrics={}, warnings=warnings,
                       accepted_attempt=number)


async def _give_up(loop: _Loop, d: Decision) -> RetryResult:
    """The one raise path, unless some answer failed only soft checks: then it is returned."""
    if loop.softly and d.reason not in ("validator_error", "cap"):
        _, neg_number, result, response, text, _req = min(loop.softly, key=lambda s: s[:2])
        loop.reached = max(loop.ladder.index_of(a.stage) for a in loop.attempts)
        return await _accept(loop, -neg_number, result, response, text, warnings=result.errors)
    err = _error(loop, d)
    cause = (loop.crash.exc if loop.crash is not None and d.reason == "validator_error" else
             err.__cause__ if d.reason == "state_store" else  # the store's own error
             loop.last_exc if loop.attempts and loop.attempts[-1].outcome == "transport_error"
             else None)
    raise err from cause


def _error(loop: _Loop, d: Decision) -> RetryError:
    """The error that ends the call, for the decision's reason."""
    c, attempts, last = loop.config, list(loop.attempts), loop.last_error
    if d.reason in ("breaker_open", "budget", "cap", "state_store"):
        assert isinstance(loop.gate_error, RetryError)
        return loop.gate_error
    if d.reason == "max_attempts" and c.human_when_exhausted and c.max_attempts_before_human is not None:
        return _human_on_exhaustion(loop)
    if d.reason == "human":
        return _human(loop, f"{loop.failures} answers failed validation (max_attempts_before_human="
                             f"{c.max_attempts_before_human}); last errors: "
                             f"{'; '.join(loop.last_errors)[:300]}",
                      loop.last_text, loop.last_errors)
    if d.reason == "non_retryable":
        v, exc = loop.last_verdict, loop.last_exc
        assert v is not None and exc is not None
        return NonRetryableError(f"not retryable ({v.reason}): {type(exc).__name__}: {str(exc)[:300]}",
                                 status_code=v.status_code, reason=v.reason, attempts=attempts,
                                 last_error=last)
    if d.reason == "validator_error":
        crash = loop.crash
        assert crash is not None
        err = ValidatorError(f"{crash} (attempt {len(attempts)}; a validator must return a "
                             "ValidationResult, not raise)", validator=crash.name,
                             attempts=attempts, last_error=last)
        return err
    if d.reason == "deadline":
        where: tuple[Any, ...] = d.detail or ("validating", len(attempts), 0.0)
        msg = (f"the deadline ({c.deadline}s) would pass during the {where[2]:.2f}s backoff "
               f"before attempt {where[1]}" if where[0] == "backoff" else
               f"the deadline ({c.deadline}s) passed during attempt {where[1]}"
               if where[0] == "during" else
               f"the deadline ({c.deadline}s) passed while attempt {where[1]} was validated")
    elif d.reason == "retry_after":
        msg = (f"the server asked to wait {d.detail:.1f}s, more than max_retry_after "
               f"({c.max_retry_after}s)")
    else:
        invalid = loop.attempts[-1].outcome == "validation_failed"
        msg = (f"all {loop.policy.max_attempts} attempts failed; last: "
               + ("; ".join(loop.last_errors)[:300] if invalid
                  else str((last or {}).get("message", ""))[:300]))
    return RetryExhaustedError(msg, reason=d.reason, attempts=attempts, last_error=last)


def _human_on_exhaustion(loop: _Loop) -> HumanReviewNeededError:
    """The attempts ran out before M failed validations (``human_when_exhausted``): a human
    gets the case, with the last failed answer (if any) and the last transport error."""
    attempts = loop.attempts
    last = next((a for a in reversed(attempts) if a.outcome == "validation_failed"), None)
    why = ("; ".join(loop.last_errors) if attempts[-1].outcome == "validation_failed"
           else str((loop.last_error or {}).get("message", "")))
    loop.reached = loop.ladder.index_of("human")
    return _human(loop, f"Human review required after {len(attempts)} failed attempts "
                        f"(max_attempts_before_human is {loop.config.max_attempts_before_human}); "
                        f"all {loop.policy.max_attempts} attempts failed; last: {why[:300]}",
                  last.text if last else None, list(last.validation_errors) if last else [])


def _human(loop: _Loop, message: str, last_text: str | None,
           errors: list[str]) -> HumanReviewNeededError:
    """The hand-over to a human: the conversation so far, the last answer and its errors."""
    return HumanReviewNeededError(
        message, attempts=list(loop.attempts), messages=loop.last_messages,
        last_response=loop.last_response, last_text=last_text, validation_errors=errors,
        config=loop.config.model_dump(), last_error=loop.last_error)


def _policy(config: RetryConfig, first: int) -> Policy:
    """The decision rules of a call (cached on the config; test mode may cap the attempts)."""
    policy: Policy | None = config.__dict__.get("_policy")
    if policy is None:
        ladder = config.stage_ladder
        outage = config.outage_after
        policy = Policy(config.max_attempts, ladder.thresholds,
                        tuple(s.terminal for s in ladder.stages), config.respect_retry_after,
                        config.max_retry_after, config.delay_validation_retries, outage)
        config.__dict__["_policy"] = policy
    if MODE.testing and MODE.attempts:
        cap = min(config.max_attempts, first - 1 + MODE.attempts)
        if cap != policy.max_attempts:
            return Policy(cap, *(getattr(policy, f) for f in
                                 ("thresholds", "terminal", "respect_retry_after",
                                  "max_retry_after", "delay_validation_retries",
                                  "outage_after")))
    return policy


def _hooks(config: RetryConfig) -> tuple[Any, ...]:
    own = config.hooks
    if config.debug_mode:
        own = (*own, LOG_HOOK)
    if config.trace_memory:
        own = (*own, MEMORY_HOOK)
    glob = installed()
    return (*own, *glob) if glob else own


_ROLES = ("system", "user", "assistant", "tool", "developer", "function")


def check_arguments(call: Any, messages: Any, validators: Any, config: Any) -> RetryConfig:
    """Check the arguments at the door: a ``ConfigError`` names the one that is wrong.

    Returns:
        The ``RetryConfig`` (a mapping is turned into one; ``None`` gives the defaults).
    """
    if not callable(call):
        raise ConfigError(f"call must be callable (async call(messages=..., **kw)), got "
                          f"{type(call).__name__}")
    if not isinstance(messages, list | tuple) or not messages:
        got = type(messages).__name__ if messages is not None else "None"
        raise ConfigError(f"messages must be a non-empty list of message dicts "
                          f"({{'role': ..., 'content': ...}}), got {got}"
                          + (" of length 0" if isinstance(messages, list | tuple) else ""))
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ConfigError(f"messages[{i}] must be a dict with 'role' and 'content', got "
                              f"{type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise ConfigError(f"messages[{i}] has no 'role' (one of {', '.join(_ROLES)})")
        content = m.get("content")
        if content is None and not (m.get("tool_calls") or m.get("function_call")):
            raise ConfigError(f"messages[{i}] ({role}) has no content: give a string or a list of "
                              "content parts (None is only allowed beside tool_calls)")
        if content is not None and not isinstance(content, str | list):
            raise ConfigError(f"messages[{i}] ({role}): content must be a string or a list of "
                              f"content parts, got {type(content).__name__}")
    if validators is not None:
        if not isinstance(validators, list | tuple):
            raise ConfigError(f"validators must be a list of validators, got "
                              f"{type(validators).__name__} (wrap one in a list: [v])")
        for i, v in enumerate(validators):
            if not callable(getattr(v, "validate", None)):
                raise ConfigError(f"validators[{i}] ({type(v).__name__}) is not a validator: it "
                                  "has no validate(text, context) method")
    if config is None:
        return RetryConfig()
    if isinstance(config, RetryConfig):
        return config
    if isinstance(config, Mapping):
        return RetryConfig.model_validate(config)
    raise ConfigError(f"config must be a RetryConfig (or a dict of its fields), got "
                      f"{type(config).__name__}")


async def retry_with_validation(
    call: Call,
    messages: Sequence[dict[str, Any]],
    validators: Sequence[Validator] | None = None,
    config: RetryConfig | Mapping[str, Any] | None = None,
    response_format: Any = None,
    *,
    depth: int = 0,
    review_store: ReviewStore | str | None = None,
    call_key: str | int | None = None,
    outer_budget: Any = None,
    **call_kwargs: Any,
) -> RetryResult:
    """Call ``call`` until its answer passes every validator.

    Args:
        call: ``async call(messages=..., **kw)`` (or a plain function: it runs in a worker
            thread when ``attempt_timeout`` or ``deadline`` must bound it) returning an
            OpenAI or Anthropic dict, a litellm ``ModelResponse`` or a ``str``. For the
            fallback stage it must accept ``model=`` (and ``api_base=``) overrides, as
            :func:`retrylib.client.make_call` does. If it has
            ``accept``/``reject(messages=..., **kw)`` methods, they hear each verdict (the
            route caches only accepted answers).
        messages: the conversation (a non-empty list of ``{"role", "content"}`` dicts);
            never mutated.
        validators: a list; every one must pass; none means any extractable text is accepted.
        config: the retry configuration (a ``RetryConfig``, or a dict of its fields;
            defaults to ``RetryConfig()``).
        response_format: passed through to every attempt (the constrained stage overrides).
        depth: how many validation calls enclose this one (set by ``LLMJudge``).
        review_store: where a call that reaches the human stage is queued for review (a
            :class:`~retrylib.review.ReviewStore` or a SQLite path); default
            ``config.review_store``, else ``$RETRYLIB_REVIEW_STORE``, else nowhere.
        call_key: with ``config.seed``, makes this call's backoff reproducible (the RNG is
            seeded with the pair); by default each call gets its own key, so calls sharing a
            seed do not retry in lockstep. ``metrics["call_key"]`` is the key a call took.
        outer_budget: the ``RetryBudget`` of an enclosing call (``LLMJudge`` passes it): every
            attempt of this call, the first included, is an extra request of that call and
            draws on it.
        **call_kwargs: passed to every call (``temperature``, ``extra_headers``, ...).

    Returns:
        A :class:`RetryResult` whose ``content`` passed validation.

    Raises:
        ConfigError: an argument is wrong (raised before any call is made).
        NonRetryableError: after one call, on an error retrying cannot fix.
        RetryExhaustedError: attempts, deadline or ``Retry-After`` patience ran out.
        BudgetExhaustedError, CircuitOpenError, CallCapExceededError: the retry budget
            refused an extra request, the breaker refused the last model, or the next
            attempt would pass the call's token/cost cap.
        StateStoreUnavailableError: the budget's or breaker's store did not answer before an
            attempt and was told ``on_error="raise"`` (also a ``StateStoreError``).
        HumanReviewNeededError: the ``max_attempts_before_human``-th validation failure;
            with a review store, the case is written first and ``case_id`` names it.
        ValidatorError: a validator raised (the attempts so far are kept).
        asyncio.CancelledError: cancellation ends the call at once, even mid-backoff.
    """
    config = check_arguments(call, messages, validators, config)
    loop = _Loop(call, messages, list(validators or ()), config, response_format, depth,
                 call_kwargs, _policy(config, 1), _hooks(config))
    loop.call_key = call_key
    if outer_budget is not None:
        loop.budget, loop.outer, loop.guarded = outer_budget, True, True
    return await _drive(loop, review_store)


async def continue_with_validation(
    call: Call,
    state: Mapping[str, Any],
    validators: Sequence[Validator] | None = None,
    config: RetryConfig | Mapping[str, Any] | None = None,
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
    config = check_arguments(call, state["base"], validators, config)
    first = len(state.get("attempts") or ()) + 1
    loop = _Loop(call, state["base"], list(validators or ()), config, response_format, depth,
                 call_kwargs, _policy(config, first), _hooks(config))
    loop.restore(state, guidance)
    loop.first_number = first
    return await _drive(loop, review_store)


async def _drive(loop: _Loop, review_store: ReviewStore | str | None) -> RetryResult:
    """Run the call; fill in its metrics; tell the hooks; queue a human case for review."""
    if loop.hooks:
        for h in loop.hooks:
            safely(h, "call_started", loop.info)
    try:
        if loop.config.tool_mode != "inject" and loop.config.debug_tool_mcp_config is not None:
            result = await _with_tools(loop)
        else:
            result = await _run(loop)
    except RetryError as exc:
        exc.metrics = _finish(loop, exc)
        if isinstance(exc, HumanReviewNeededError):
            _queue_for_review(loop, exc, review_store)
        raise
    except BaseException as exc:
        _finish(loop, exc)
        raise
    result.metrics = _finish(loop, result)
    result.metrics["accepted_with_warnings"] = bool(result.warnings)
    # A transport error's traceback holds attempt()'s frame, which holds the loop, which holds
    # the error: a cycle that only the cyclic GC would free (with every attempt record in it).
    # The answer is in hand and the error is no one's: let it go now.
    loop.last_exc = None
    return result


async def _with_tools(loop: _Loop) -> RetryResult:
    """The loop with the tool stage's MCP servers (``tool_mode`` ``execute``/``both``): they
    start when the stage first makes an attempt, once per call, and stop when the call ends,
    however it ends (a cancel or a timeout included: the close is shielded)."""
    from retrylib.tools.session import ToolSession

    c = loop.config
    session = ToolSession(c.debug_tool_mcp_config or {}, timeout=c.tool_timeout)
    loop.tool_session = session
    try:
        return await _run(loop)
    finally:
        await session.aclose()


def _finish(loop: _Loop, outcome: Any) -> dict[str, Any]:
    metrics = loop.metrics()
    if loop.config.seed is not None:
        metrics["call_key"] = loop.call_key
    if loop.hooks:
        for h in loop.hooks:
            extra = safely(h, "call_ended", loop.info, _with_attempts(outcome, loop))
            if isinstance(extra, Mapping):
                metrics.update(extra)
    return metrics


def _with_attempts(outcome: Any, loop: _Loop) -> Any:
    """What ``call_ended`` hooks get: the result or error (a cancel: the loop's attempts)."""
    return outcome if hasattr(outcome, "attempts") else _Ended(outcome, loop.attempts)


class _Ended:
    """A call that ended with an exception that carries no attempts (a cancel, a crash)."""

    __slots__ = ("attempts", "exception")

    def __init__(self, exception: BaseException, attempts: list[Any]):
        self.exception, self.attempts = exception, list(attempts)


def _queue_for_review(loop: _Loop, exc: HumanReviewNeededError,
                      review_store: ReviewStore | str | None) -> None:
    """Write the case to the review store, if one is configured, before ``exc`` is raised."""
    if review_store is None and loop.config.review_store is None and loop.case_id is None \
            and not os.environ.get("RETRYLIB_REVIEW_STORE"):
        return  # no store: not even the import
    from retrylib.review.hook import queue_case

    queue_case(loop, exc, review_store)
