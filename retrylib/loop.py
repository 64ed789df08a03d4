"""One call's state, and how one attempt is made (the loop itself is ``retrylib.manager``).

:class:`_Loop` is made per call and never shared. :meth:`_Loop.attempt` makes one attempt
and returns its tagged :class:`~retrylib.decision.Outcome`: it builds the request from the
ladder's stages, sends it within the attempt's bounds, reads and validates the answer, and
writes the attempt's record. :meth:`_Loop.apply` carries out a decision's effects on the
state (the failure count, the stage, the replayed history) and says which answer the route
must hear rejected (the loop sends that verdict).

Bounds: ``attempt_timeout`` covers the whole attempt, body included (a route's own timeout
is per read, so a body that drips would pass it); the deadline covers sleeps, attempts and
validators. A plain (sync) call function or validator runs in a worker thread when a
deadline or a timeout must hold over it. A thread cannot be killed: past its bound the call
ends on time, and the thread runs on until the function returns (its result is dropped).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from loguru import logger

from retrylib.budget import CallCap
from retrylib.classify import Classification, classify, error_facts
from retrylib.config import RetryConfig
from retrylib.constrained import (
    asks_for_schema,
    grammar_safe_schema,
    looks_like_schema_rejection,
    schema_from_validators,
)
from retrylib.decision import ESCALATE, INVALID, OK, RAISE, REJECTED, TRANSPORT, Decision, Outcome
from retrylib.errors import ConfigError, ExtractionError
from retrylib.extract import (
    extract_finish_reason,
    extract_model,
    extract_text,
    extract_usage,
    is_cache_hit,
    response_cost,
)
from retrylib.feedback import Exchange, build_messages, cap_text, feedback_text, is_flat
from retrylib.hooks import AttemptDetails, CallInfo, safely
from retrylib.result import Attempt, summarize
from retrylib.result import Outcome as AttemptOutcome
from retrylib.stages import Fallback, Request
from retrylib.validators.base import (
    ValidationContext,
    ValidationResult,
    Validator,
    is_async,
    run_validator,
    validator_name,
)
from retrylib.validators.combine import AllOf, _children, named_errors
from retrylib.validators.structured import escape_raw_controls

if TYPE_CHECKING:
    from retrylib.decision import Policy

_CUT_OFF = ("Your previous answer was cut off at the token limit before it was complete: "
            "give a shorter answer that fits.")


class ValidatorCrash(Exception):
    """A validator raised: carried to the loop, which ends the call with ``ValidatorError``."""

    def __init__(self, name: str, exc: BaseException):
        super().__init__(f"validator {name!r} raised {type(exc).__name__}: {exc}")
        self.name, self.exc = name, exc


class _Loop:
    """The state of one call. Made per call, never shared."""

    def __init__(self, call: Callable[..., Any], messages: Sequence[dict[str, Any]],
                 validators: Sequence[Validator], config: RetryConfig, response_format: Any,
                 depth: int, call_kwargs: dict[str, Any], policy: Policy, hooks: tuple[Any, ...]):
        self.call = call
        self.base_flat = all(is_flat(m) for m in messages)
        self.base = [dict(m) for m in messages] if self.base_flat else copy.deepcopy(list(messages))
        self.validators = list(validators)  # as given: a review case records each one
        # One validator is used as is (AllOf around it only costs time; _children checks it).
        self.validator = (_children("validators", tuple(validators))[0] if len(validators) == 1
                          else AllOf(*validators) if validators else None)
        self.config = config
        self.response_format = response_format
        self.depth = depth
        self.call_kwargs = call_kwargs
        # What every attempt's kwargs start from (each attempt gets its own copy: stages edit it).
        self.base_kwargs = dict(call_kwargs)
        if config.attempt_timeout is not None:
            self.base_kwargs.setdefault("timeout", config.attempt_timeout)
        if response_format is not None:
            self.base_kwargs["response_format"] = response_format
        self.policy = policy
        self.hooks = hooks
        self.ladder = config.stage_ladder
        self.attempts: list[Attempt] = []
        self.history: list[Exchange] = []
        self.subresults: list[Any] = []
        self.failures = 0
        self.stage = policy.stage_for(0)  # the ladder index of the next attempt
        self.reached = 0  # the highest ladder index an attempt was made on
        self.outage_moves = 0  # fallback models skipped because the model was down
        self.t0 = time.monotonic()
        self.deadline_at = self.t0 + config.deadline if config.deadline else None
        self.last_exc: BaseException | None = None
        self.last_verdict: Classification | None = None
        self._last_error: dict[str, Any] | None = None  # made when asked for: last_error
        self.last_response: Any = None
        self.last_text: str | None = None
        self.last_errors: list[str] = []
        self.last_suggestions: tuple[str, ...] = ()
        self.last_messages: list[dict[str, Any]] = []
        self.last_request: Request | None = None
        self.case_id: str | None = None  # the review case this call continues, if any
        self.scheduled = self.slept = 0.0
        self.retry_after: float | None = None
        self.replay_note: str | None = None
        has_k = config.max_attempts_before_constrained is not None
        schema = schema_from_validators(validators) if has_k else None
        self.schema: dict[str, Any] | None
        self.schema_dropped: list[str]
        self.schema, self.schema_dropped = grammar_safe_schema(schema) if schema else (None, [])
        self.constrained_off: str | None = None if self.schema else (
            "no validator provides a JSON schema" if has_k else None)
        self.constrained_tried = False
        self.caller_constrains = asks_for_schema(response_format)
        self.call_model = getattr(call, "model", None)
        self.fresh = config.escalation_history == "fresh"
        self.history_from = 0  # with ``fresh``: where the current stage's history starts
        self._sync_call: bool | None = None  # is_async costs 2 µs: asked only when a bound needs it
        self.route_bounds = getattr(call, "bounds_attempt", False) is True
        self.tool_session: Any = None
        self.call_key: str | int | None = None  # with a seed: the backoff's key (retrylib.backoff)
        self.last_result: ValidationResult = _VALID
        self.crash: ValidatorCrash | None = None
        self.repair_note: str | None = None
        # Answers that failed only soft checks: (soft errors, -attempt number, result, response,
        # text, request); their verdict to the route waits until the call ends.
        self.softly: list[tuple[int, int, ValidationResult, Any, str, Request]] = []
        self.info = CallInfo.new(self.call_model, policy.max_attempts) if hooks else None
        # The gates (retrylib.budget, retrylib.breaker) and what they leave in the records.
        self.fallback_idx, self.suggests_tool = _ladder_facts(config)
        self.has_verdicts = hasattr(call, "accept") or hasattr(call, "reject")
        self.budget = config.budget
        self.outer = False  # the call is an LLMJudge's: its every attempt is an extra request
        self.cap = (CallCap(config.max_total_tokens, config.max_total_cost)
                    if config.max_total_tokens or config.max_total_cost else None)
        self.guarded = bool(config.breaker is not None or self.budget is not None or self.cap)
        self.first_number = 1  # the number of this leg's first attempt
        self.model_failures = 0  # transport failures in a row on the current model
        self.next_kind = "transport"  # what the next extra request is for (the budget's kind)
        self.breaker_state: str | None = None
        self.budget_level: float | None = None
        self.gate_note: str | None = None
        self.gate_error: Exception | None = None

    @property
    def last_error(self) -> dict[str, Any] | None:
        """The facts of the last transport failure (``classify.error_facts``), made when first
        asked for (an error that ends the call): a call that retries past them never needs them."""
        if self._last_error is None and self.last_exc is not None:
            self._last_error = error_facts(self.last_exc, self.last_verdict)
        return self._last_error

    @property
    def sync_call(self) -> bool:
        """The call function is a plain (sync) one: under a bound it runs in a worker thread."""
        if self._sync_call is None:
            self._sync_call = not is_async(self.call)
        return self._sync_call

    # -- one attempt ---------------------------------------------------------------------------
    def request(self) -> Request:
        """The next attempt's messages and kwargs, shaped by every stage up to the current one."""
        i = self.stage
        history = self.history[self.history_from:] if self.history_from else self.history
        req = Request(build_messages(self.base, history, self.config.feedback_history,
                                     self.base_flat), dict(self.base_kwargs), self.caller_constrains)
        if i:
            for stage in self.ladder.stages[1:i + 1]:
                stage.apply(req, self)
        if self.outage_moves and (self.fallback_idx is None or i < self.fallback_idx):
            self.apply_fallback_model(req.kwargs)
        if self.gate_note:
            req.notes.append(self.gate_note)
        if self.replay_note:
            req.notes.append(self.replay_note)
        return req

    # -- the gates before an attempt: cap, budget, breaker (Polly's order: the deadline and
    # -- the retry are decided; then the breaker; the attempt timeout is the attempt's own)
    async def admit(self) -> Decision | None:
        """Ask the cap, the budget and the breaker about the next attempt.

        Every check that can refuse the attempt comes before the breaker grants it: a
        half-open breaker's probe, once granted, is always sent (a probe granted and not sent
        would keep the model blocked for another cooldown). So the cap is checked first; with
        a budget, the breaker's state is read without taking a probe (an open breaker moves
        the call on before a token is spent), then the budget's token is taken, then the
        breaker is asked. If the breaker refuses after all (another call took the probe in
        between), the token is given back.

        A state store that does not answer and was told ``on_error="raise"`` ends the call
        here with :class:`~retrylib.errors.StateStoreUnavailableError`, which carries the
        attempts made so far (``on_error="local"`` goes on with process-local state).

        Returns:
            ``None``: it may go. Else a ``raise`` decision (``cap``, ``budget``,
            ``breaker_open``, ``state_store``) whose error is ``gate_error``. An open breaker
            with a fallback model left moves the call on instead (``fallback_on`` holding
            ``breaker_open``).
        """
        from retrylib.errors import StateStoreError, StateStoreUnavailableError

        first = len(self.attempts) + 1 == self.first_number
        if self.cap is not None and not first:
            sub = summarize([], self.subresults, "")  # the validators' calls, nested ones too
            cd = self.cap.check(self.attempts, extra_cost=sub["validator_cost"],
                                extra_tokens=sub["validator_tokens_in"] + sub["validator_tokens_out"])
            if not cd.allowed:
                return self._refuse(cd, "cap")
        try:
            return await self._budget_and_breaker(self.budget is not None and (not first or self.outer))
        except StateStoreError as exc:
            err = StateStoreUnavailableError(
                f"{exc}; the call ended before attempt {len(self.attempts) + 1}", exc.url,
                attempts=list(self.attempts), last_error=self.last_error)
            err.__cause__ = exc
            self.gate_error = err
            return Decision(RAISE, failures=self.failures, stage=self.stage, reason="state_store")

    async def _budget_and_breaker(self, extra: bool) -> Decision | None:
        """The budget (``extra``: the attempt is an extra request) and the breaker, for the
        model the attempt goes to, moving on to the next fallback model while its breaker is
        open."""
        breaker = self.config.breaker
        while True:
            model, base = self.target()
            d = None
            if breaker is not None and extra:
                d = await breaker.state(model, api_base=base)  # read only: no probe taken
            if d is None or d.allowed:
                spent = None
                if extra:
                    kind = "judge" if self.outer else self.next_kind
                    spent = await self.budget.allow(model, api_base=base, kind=kind)
                    self.budget_level = spent.level
                    if not spent.allowed:
                        return self._refuse(spent, "budget")
                if breaker is None:
                    return None
                d = await breaker.allow(model, api_base=base)
                if not d.allowed and spent is not None:  # not sent: its token goes back
                    self.budget_level = await self.budget.refund(spent)
            self.breaker_state = d.state
            if d.allowed:
                return None
            if "breaker_open" in self.config.fallback_on and self.can_move():
                self.move_on(f"breaker {d.state} for {d.key} (retry in {d.retry_in:.1f}s)")
                continue
            return self._refuse(d, "breaker_open")

    def _refuse(self, decision: Any, reason: str) -> Decision:
        """End the call before its next attempt: ``decision``'s error, with the attempts so far."""
        self.gate_error = decision.error(attempts=list(self.attempts), last_error=self.last_error)
        return Decision(RAISE, failures=self.failures, stage=self.stage, reason=reason)

    async def report(self, a: Attempt, kwargs: dict[str, Any], ok_for_breaker: bool,
                     breaker: bool = True) -> None:
        """Tell the breaker and the budget what the attempt came to; note their state in it.
        ``ok_for_breaker``: the model answered (or failed in a way that says nothing about it:
        a transport error that is not retryable). ``breaker=False``: the breaker is not told
        (the call's own deadline cut the attempt)."""
        model = a.model
        base = kwargs.get("api_base") or getattr(self.call, "defaults", {}).get("api_base")
        try:  # the answer is in hand: a state store that fails now must not lose it
            if self.config.breaker is not None:
                a.breaker_state = self.breaker_state
                if breaker:
                    await self.config.breaker.record(model, ok_for_breaker, api_base=base)
            if self.budget is not None:
                self.budget_level = a.budget_level = await self.budget.record(
                    model, api_base=base, ok=a.outcome == "ok")
        except Exception as exc:  # StateStoreError (on_error="raise"): noted, not raised
            logger.warning("budget/breaker update after attempt {} failed: {}", a.number, exc)
            _add_note(a, f"budget/breaker not updated: {exc}")

    def cut_by_deadline(self) -> bool:
        """Did the call's deadline (not the model) end the attempt that just failed? Polly's
        order puts the total deadline outside the breaker: an attempt it cancels says nothing
        about the model, so the breaker is not told (a half-open probe it held is freed when
        its lease ends, one cooldown later)."""
        left = self.remaining()
        return (left is not None and left <= 0.01 and self.last_verdict is not None
                and self.last_verdict.reason == "timeout")

    def target(self) -> tuple[str | None, str | None]:
        """The model (and base URL) the next attempt goes to."""
        kw: dict[str, Any] = {}
        if self.fallback_position() >= 0 and (self.outage_moves or (
                self.fallback_idx is not None and self.stage >= self.fallback_idx)):
            self.apply_fallback_model(kw)
        defaults = getattr(self.call, "defaults", None) or {}
        model = kw.get("model") or self.call_kwargs.get("model") or self.call_model
        return model, kw.get("api_base") or self.call_kwargs.get("api_base") or defaults.get("api_base")

    def apply_fallback_model(self, kwargs: dict[str, Any]) -> None:
        models = self.config.fallback_models
        pos = self.fallback_position()
        if models and pos >= 0:
            kwargs.update(models[min(pos, len(models) - 1)].call_kwargs())

    def can_move(self) -> bool:
        return self.fallback_position() + 1 < len(self.config.fallback_models)

    def move_on(self, why: str) -> None:
        """Send the next attempt to the next fallback model (the current one is down)."""
        before, stage = self.target()[0], self.stage
        self.outage_moves += 1
        self.model_failures = 0
        if self.fallback_idx is not None:
            self.enter(max(self.stage, self.fallback_idx), stage)
        self.gate_note = f"{why}: moved from {before} to {self.target()[0]}"

    async def attempt(self) -> Outcome:
        """Make one attempt; record it; return what it came to."""
        n = len(self.attempts) + 1
        if self.stage > self.reached:
            self.reached = self.stage
        req = self.last_request = self.request()
        self.gate_note = None
        self.last_messages = req.messages
        self.constrained_tried = self.constrained_tried or req.constrained
        rounds: Any = None  # the tool stage's ToolRounds, filled in as its rounds go
        starting = req.tools is not None
        if starting:  # first: the start-up spends the deadline the bounds read
            await self.start_tools(req)
            if req.tools is not None:
                from retrylib.tools.rounds import ToolRounds

                rounds = ToolRounds(response=None, text=None)
        left = self.remaining()
        bound = self.config.attempt_timeout
        if bound is not None:
            if self.route_bounds and rounds is None:  # the route holds ``timeout`` over the
                bound = None  # whole request, and keeps its pool wait out (make_call's ModelCall)
            else:  # the route's own timeout fires first; this bounds a dripping body (and
                bound = bound * 1.02 + 0.01  # the tool rounds: several requests and tool calls)
        if left is not None:
            req.kwargs["timeout"] = min(req.kwargs.get("timeout") or left, left)
            bound = left if bound is None else min(bound, left)
        start = time.monotonic() - self.t0
        stamp = time.time()
        failed: Attempt | None = None  # the record of an attempt that got no answer
        if starting and left is not None and left <= 0:  # nothing is sent past the deadline
            late = TimeoutError("the deadline passed while the MCP servers were starting")
            failed, outcome = self.transport_failure(late, req, n, start, stamp, rounds)
        else:
            try:
                if bound is None and req.tools is None:  # invoke's common case, inline
                    aw = self.call(messages=req.messages, **req.kwargs)
                    response = await aw if inspect.isawaitable(aw) else aw
                else:
                    response = await self.invoke(req, bound, rounds)
            except asyncio.CancelledError:
                raise
            except ConfigError:
                raise  # a programmer mistake the route found (a fallback's bad api_base): no retry
            except Exception as exc:  # (not kept in a local: the frame would hold its traceback)
                failed, outcome = self.transport_failure(exc, req, n, start, stamp, rounds)
        if failed is not None:
            if self.guarded:
                cut = self.cut_by_deadline()
                if cut:
                    _add_note(failed, "cut by the call's deadline: not counted by the breaker")
                await self.report(failed, req.kwargs, failed.retryable is False, breaker=not cut)
            self.record(failed)
            return outcome
        end = time.monotonic() - self.t0
        result = await self.check(response, req.messages, n, req.text)
        text = self.last_text
        fatal = ("deadline" if result is _TIMED_OUT else
                 "validator_error" if self.crash is not None else None)
        if self.repair_note:
            req.notes.append(self.repair_note)
            self.repair_note = None
        a = self.new_record(n, start, end, "ok" if result.valid else "validation_failed", req, stamp)
        a.text = text
        if not result.valid:
            a.validation_errors = result.errors
        if type(response) is not str:  # a plain-text route has no usage, cost, cache flag or model
            a.tokens_in, a.tokens_out = extract_usage(response)
            a.cost, a.cache_hit = response_cost(response), is_cache_hit(response)
            a.finish_reason = extract_finish_reason(response)
            a.model = a.model or extract_model(response)
        if rounds is not None:  # every request of the tool rounds, not the final one alone
            a.tokens_in, a.tokens_out, a.cost = rounds.tokens_in, rounds.tokens_out, rounds.cost
            a.requests = rounds.requests
        self.model_failures = 0  # an answer came: the model is up
        if self.guarded:
            await self.report(a, req.kwargs, True)
        self.record(a)
        self.last_result = result
        if result.valid:
            return Outcome(OK)
        # (kind, retryable, retry_after, soft, fatal)
        return Outcome(INVALID, True, None, result.soft and text is not None and fatal is None,
                       fatal)

    def transport_failure(self, exc: Exception, req: Request, n: int, start: float,
                          stamp: float, rounds: Any = None) -> tuple[Attempt, Outcome]:
        """The record of an attempt that got no answer, and its outcome (the caller reports
        and records it). ``rounds``: the tool stage's ToolRounds, whose tool calls, requests
        and tokens so far stay in the record."""
        verdict = self.classify(exc)
        self.last_exc, self.last_verdict, self._last_error = exc, verdict, None
        kind = TRANSPORT
        if req.grammar and looks_like_schema_rejection(verdict.status_code, verdict.retryable,
                                                       verdict.reason):
            # The route refused the schema: skip the stage and retry at once.
            self.constrained_off = (f"route rejected response_format ({verdict.error_type} "
                                    f"{verdict.status_code})")
            req.notes = [f"constrained stage skipped: {self.constrained_off}"]
            kind = REJECTED
        rounds = rounds if rounds is not None else getattr(exc, "tool_rounds", None)
        if rounds is not None:
            req.tool_calls = tuple(r.to_dict() for r in rounds.calls)
            req.notes.append(f"tool stage: {rounds.rounds} tool round(s), {len(rounds.calls)} "
                             f"tool call(s), {rounds.requests} request(s) before it failed"
                             + (f"; {rounds.running} was running when it ended"
                                if rounds.running else ""))
        a = self.new_record(n, start, time.monotonic() - self.t0, "transport_error", req, stamp)
        a.error_type, a.status_code = verdict.error_type, verdict.status_code
        a.error_message, a.retryable = str(exc)[:500], verdict.retryable
        if rounds is not None:  # the requests of the rounds that were answered used tokens
            a.tokens_in, a.tokens_out, a.cost = rounds.tokens_in, rounds.tokens_out, rounds.cost
            a.requests = rounds.requests
        # A failure that counts against the model (one that is not retryable says nothing of it).
        self.model_failures = 0 if verdict.retryable is False else self.model_failures + 1
        return a, Outcome(kind, verdict.retryable, verdict.retry_after if kind == TRANSPORT else None)

    def new_record(self, n: int, start: float, end: float, outcome: AttemptOutcome, req: Request,
                   stamp: float) -> Attempt:
        """An attempt's record, with what its request and the call's state say of it (the
        caller fills in the rest). Built from positional arguments, then set field by field:
        keywords make the 31-field ``Attempt.__init__`` take twice as long (0.85 -> 0.42 µs)."""
        a = Attempt(n, start, end, outcome, self.ladder.stages[self.stage].name, self.scheduled,
                    self.retry_after, self.slept)
        a.tool_suggested, a.mcp_config_sent, a.constrained = req.tool_suggested, req.mcp, req.constrained
        a.model = req.kwargs.get("model") or self.call_model
        a.note = "; ".join(req.notes) if req.notes else None
        a.messages_sent, a.timestamp, a.tool_calls = len(req.messages), stamp, req.tool_calls
        return a

    def classify(self, exc: BaseException) -> Classification:
        custom = self.config.retry_on
        if custom is None:
            return classify(exc)
        verdict = custom(exc)
        if verdict is None:  # no opinion: the default classification
            return classify(exc)
        if isinstance(verdict, bool):
            base = classify(exc)
            return Classification(verdict, base.reason if verdict == base.retryable else
                                  f"retry_on said {'retry' if verdict else 'stop'}",
                                  base.retry_after, base.status_code, base.error_type, base.headers)
        return verdict

    async def invoke(self, req: Request, bound: float | None, rounds: Any = None) -> Any:
        """Send the request; within ``bound`` seconds when there is a bound. The tool stage's
        rounds fill in ``rounds`` (a ToolRounds) as they go."""
        if req.tools is not None:
            from retrylib.tools.rounds import run_tool_rounds

            c = self.config
            force: str | bool | None = None
            if c.tool_choice == "force":
                force = c.debug_tool_name if c.debug_tool_name in req.tools.tools else True
            aw: Any = run_tool_rounds(self.call, req.messages, req.kwargs, req.tools,
                                      max_rounds=c.tool_max_rounds, tool_timeout=c.tool_timeout,
                                      on_request=self.tool_request, force_tool=force,
                                      record=rounds)
        elif bound is not None and self.sync_call:  # a plain function: in a thread, bounded
            aw = _in_thread(self.call, req.messages, req.kwargs)
        else:  # (a plain function without a bound runs inline; it may return an awaitable)
            aw = self.call(messages=req.messages, **req.kwargs)
            if not inspect.isawaitable(aw):
                return aw
        if bound is None:
            out = await aw
        else:
            try:
                async with asyncio.timeout(bound):
                    out = await aw
            except TimeoutError as exc:
                if exc.args:  # the route's own timeout, not ours
                    raise
                left = self.remaining()
                what = "attempt_timeout" if left is None or left > 0 else "the deadline"
                raise TimeoutError(f"the attempt took longer than {bound:.3g}s ({what})") from None
        if req.tools is not None:  # the tool stage's rounds: the final answer, and what ran
            req.tool_calls = tuple(r.to_dict() for r in out.calls)
            req.text = out.text
            req.notes.append(f"tool stage: {out.rounds} tool round(s), {len(out.calls)} tool "
                             f"call(s), {out.requests} request(s), ended {out.ended}")
            return out.response
        return out

    async def start_tools(self, req: Request) -> None:
        """Start the tool stage's MCP servers (once per call; the call closes them), within
        what is left of the deadline. Servers that do not start leave the attempt without
        tools, and the note says why; they are not started again in this call."""
        session = req.tools
        failed = getattr(session, "start_error", None)
        if failed is not None:  # spawning them again on every attempt would fail the same way
            req.notes.append(f"tool stage without tools: the MCP servers did not start earlier "
                             f"in this call ({type(failed).__name__}); not started again")
            req.tools = None
            return
        left = self.remaining()
        try:
            await session.start(timeout=left)
        except Exception as exc:  # ToolServerError, or a command that is gone
            logger.warning("tool stage: the MCP servers did not start: {}", exc)
            within = (f" within the {max(left, 0.0):.3g}s left of the deadline"
                      if left is not None and left < session.startup_timeout else "")
            req.notes.append(f"tool stage without tools: the MCP servers did not start{within} "
                             f"({type(exc).__name__}: {str(exc)[:200]})")
            req.tools = None

    async def tool_request(self, info: dict[str, Any]) -> None:
        """Each request of the tool rounds beyond the attempt's own draws on the budget (it is
        counted, not refused: a round in flight is finished)."""
        extra = info["round"] > 1 if info["kind"] == "tool_round" else info["round"] > 0
        if self.budget is not None and extra:
            model, base = self.target()
            await self.budget.allow(model, api_base=base, kind="tool")

    async def check(self, response: Any, msgs: list[dict[str, Any]], n: int,
                    text: str | None = None) -> ValidationResult:
        """The verdict on ``response`` (its text, or ``text`` when given, is kept in ``last_text``)."""
        self.last_response = response
        try:
            if text is None:
                text = extract_text(response)
        except ExtractionError as exc:
            self.last_text = None
            return ValidationResult.fail(f"empty response: {exc}",
                                         suggestions=("Reply with the requested content.",))
        self.last_text = text
        v = self.validator
        if v is None:
            return _VALID
        left = self.remaining()
        # Under a deadline, a plain (blocking) validate runs in a worker thread, at any depth.
        # (attempt, messages, depth, max_depth, subresults, budget, bounded): positional
        # arguments build it in half the time of keywords
        ctx = ValidationContext(n, msgs, self.depth, self.config.max_validator_depth, [],
                                self.budget, left is not None)
        try:
            if left is None:
                r = await run_validator(v, text, ctx)
            else:
                async with asyncio.timeout(max(left, 0.0)):
                    r = await run_validator(v, text, ctx)
        except TimeoutError:
            return _TIMED_OUT
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the validator: the call ends, its record kept
            self.crash = ValidatorCrash(validator_name(v), exc)
            return ValidationResult(False, (str(self.crash),))
        finally:
            if ctx.subresults:
                self.subresults.extend(ctx.subresults)
        if not r.valid and not r.errors:  # say which check failed, as AllOf does
            r = ValidationResult(False, named_errors(v, r), r.suggestions, r.parsed, r.soft)
        if not r.valid and self.crash is None:
            escaped = escape_raw_controls(text)  # lossless, so always tried
            if escaped is not None:
                r = await self.repaired(text, ctx, r, escaped, "raw control characters inside "
                                        "JSON strings escaped")
            if not r.valid and self.config.repair_json:
                from retrylib._extras import require

                fixed = require("json_repair", "RetryConfig(repair_json=True)").repair_json(text)
                r = await self.repaired(text, ctx, r, fixed, "repaired by json-repair")
        return r

    async def repaired(self, text: str, ctx: ValidationContext, failed: ValidationResult,
                       fixed: Any, how: str) -> ValidationResult:
        """A zero-call repair: ``fixed`` (``text`` mended) if it passes every validator."""
        if not isinstance(fixed, str) or not fixed.strip() or fixed == text:
            return failed
        try:
            r = await run_validator(self.validator, fixed, ctx)
        except Exception:  # a validator that chokes on the repair: keep the first verdict
            return failed
        if not r.valid:
            return failed
        self.last_text = fixed
        self.repair_note = (f"{how} ({len(text)} -> {len(fixed)} chars); the answer as sent "
                            f"failed: {'; '.join(failed.errors)[:200]}")
        return r

    def record(self, a: Attempt) -> None:
        self.attempts.append(a)
        if self.hooks:
            assert self.info is not None
            for h in self.hooks:
                if hasattr(h, "annotate"):
                    safely(h, "annotate", a)
            details = AttemptDetails.of(self.info, a, self.failures)
            for h in self.hooks:
                safely(h, "attempt_ended", details)

    # -- a decision's effects ------------------------------------------------------------------
    def apply(self, d: Decision, outcome: Outcome, planned: float) -> Request | None:
        """Carry out what ``d`` means for the state, before the next attempt or the end.

        Returns:
            The request whose answer the route must now hear rejected
            (:meth:`verdict_to_route`; the loop awaits it), else ``None``.
        """
        kind, before = outcome.kind, self.stage
        self.scheduled = planned if kind == TRANSPORT or self.config.delay_validation_retries else 0.0
        self.retry_after = outcome.retry_after if kind == TRANSPORT else None
        self.slept = 0.0
        self.next_kind = ("fallback" if d.action == ESCALATE else
                          "reask" if kind == INVALID else "transport")
        if d.reason == "outage":
            self.move_on(f"{self.model_failures} transport failures in a row "
                         f"(the model's share: {self.config.outage_after})")
        if kind != INVALID:
            return None
        self.failures = d.failures
        if outcome.fatal:  # never judged (a validator raised, the deadline passed): never served
            return self.last_request if self.has_verdicts else None
        result = self.last_result
        self.last_errors = list(result.errors)
        req = self.last_request
        assert req is not None
        reject = None
        if outcome.soft:  # its verdict waits until the call ends
            a = self.attempts[-1]
            self.softly.append((len(result.errors), -a.number, result, self.last_response,
                                self.last_text or "", req))
        elif self.has_verdicts:
            reject = req
        self.last_suggestions = tuple(result.suggestions)
        if self.attempts[-1].finish_reason == "length":  # the answer was cut, not just wrong
            self.last_suggestions = (_CUT_OFF, *self.last_suggestions)
        if d.reason == "human":
            self.stage = self.reached = d.stage
            return reject
        self.stage = d.stage  # (the exchange is written for the next attempt's stage)
        self.history.append(self.exchange(self.last_text or ""))
        self.enter(d.stage, before)
        return reject

    def enter(self, stage: int, before: int) -> None:
        """Move to ladder entry ``stage``; with ``escalation_history="fresh"`` a stage that
        starts fresh replays none of the earlier stages' failures."""
        self.stage = stage
        if self.fresh and stage != before and self.ladder.stages[stage].fresh_start:
            self.history_from = len(self.history)

    def exchange(self, answer: str, guidance: str | None = None) -> Exchange:
        """The replay of the last failed answer: its feedback, written for the current stage."""
        c = self.config
        suggestions = self.last_suggestions
        if guidance:  # a reviewer's words come first: they say what the validators could not
            suggestions = (f"A human reviewer's guidance: {guidance}", *suggestions)
        tool = c.debug_tool_name if self.suggests_tool[self.stage] else None
        feedback = feedback_text(self.last_errors, suggestions,
                                 original_prompt=c.original_user_prompt, tool_name=tool)
        answer, cut_a = cap_text(answer, c.max_replay_chars)
        feedback, cut_f = cap_text(feedback, c.max_replay_chars)
        self.replay_note = (f"replay capped at max_replay_chars={c.max_replay_chars}: "
                            f"{cut_a + cut_f} characters of attempt {len(self.attempts)} left out"
                            if cut_a or cut_f else None)
        return Exchange(answer, feedback)

    async def verdict_to_route(self, verdict: str, req: Request) -> None:
        """Tell the route (``call.accept`` / ``call.reject``) what became of its answer.

        The route caches only accepted answers and evicts rejected ones, so a rejected
        answer is never served from a cache again.
        """
        hook = getattr(self.call, verdict, None)
        if hook is not None:
            try:
                out = hook(messages=req.messages, **req.kwargs)
                if inspect.isawaitable(out):
                    await out
            except Exception as exc:  # a cache that fails must not end the call
                logger.warning("cache {} failed: {}: {}", verdict, type(exc).__name__, exc)

    def fallback_position(self) -> int:
        """Which of ``fallback_models`` the next attempt goes to (``-1``: the primary): one
        on for each failed validation from the fallback stage on, and for each outage."""
        validated = -1
        if self.fallback_idx is not None:
            t = self.ladder.thresholds[self.fallback_idx]
            if self.failures >= t:
                validated = self.failures - t
        return validated + self.outage_moves

    def remaining(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - time.monotonic()

    def metrics(self) -> dict[str, Any]:
        return summarize(self.attempts, self.subresults, self.ladder.stages[self.reached].name)

    # -- recorded state (a review case), and continuing from it --------------------------------
    def state(self) -> dict[str, Any]:
        """The call's state as plain data: enough for :func:`continue_with_validation`."""
        return {"base": copy.deepcopy(self.base), "attempts": [a.to_dict() for a in self.attempts],
                "history": [[e.answer, e.feedback] for e in self.history],
                "failures": self.failures, "stage_reached": self.ladder.stages[self.reached].name,
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
        self.reached = self.ladder.index_of(state.get("stage_reached", "normal"))
        self.history_from = int(state.get("history_from", 0))
        self.constrained_off = state.get("constrained_off", self.constrained_off)
        self.constrained_tried = bool(state.get("constrained_tried"))
        self.last_text = state.get("last_text")
        self.last_errors = list(state.get("last_errors", ()))
        self.last_suggestions = tuple(state.get("last_suggestions", ()))
        self.case_id = state.get("case_id")
        self.stage = self.policy.stage_for(self.failures)
        # The resumed leg goes on in its stage: no "fresh" restart that would drop the guidance.
        self.history.append(self.exchange(self.last_text or "", guidance))
        # The attempts' time axis goes on where it stopped (the review's wait is left out; the
        # wall-clock ``timestamp`` shows it); the deadline, if any, starts afresh.
        now = time.monotonic()
        self.t0 = now - (self.attempts[-1].end if self.attempts else 0.0)
        self.deadline_at = now + self.config.deadline if self.config.deadline else None
        # The validators' calls of the first leg still count in the metrics.
        self.subresults = [SimpleNamespace(metrics=dict(state.get("validator_metrics") or {}))]


async def _in_thread(call: Callable[..., Any], messages: list[dict[str, Any]],
                     kwargs: dict[str, Any]) -> Any:
    """A plain call run in a worker thread (so a bound can hold over it); an awaitable it
    returns is awaited here."""
    out = await asyncio.to_thread(call, messages=messages, **kwargs)
    return await out if inspect.isawaitable(out) else out


_TIMED_OUT = ValidationResult(False, ("the deadline passed while the answer was being validated",))
_VALID = ValidationResult.ok()  # frozen: one instance serves every call (building one costs ~1 µs)


def _add_note(a: Attempt, note: str) -> None:
    """Add ``note`` to the attempt's note (``"; "`` between notes)."""
    a.note = f"{a.note}; {note}" if a.note else note


def _ladder_facts(config: RetryConfig) -> tuple[int | None, tuple[bool, ...]]:
    """Per config, cached on it (as ``manager._policy`` is): the fallback stage's ladder
    index (``None``: no fallback stage) and, per ladder index, whether the re-ask names the
    debugging tool (some stage up to it suggests the tool)."""
    facts: tuple[int | None, tuple[bool, ...]] | None = config.__dict__.get("_ladder_facts")
    if facts is None:
        ladder = config.stage_ladder
        stages = ladder.stages
        facts = (ladder.index_of("fallback") if ladder.has(Fallback) else None,
                 tuple(any(s.suggests_tool for s in stages[1:i + 1]) for i in range(len(stages))))
        config.__dict__["_ladder_facts"] = facts
    return facts
