"""Hypothesis state machines over the retry loop itself (issue 12): calls whose scripts are
drawn fault sequences (503, 429 with Retry-After, 401, a timeout, an invalid answer, a valid
one), all sharing one ``RetryBudget`` and one ``CircuitBreaker``, in test mode (no sleeps).

After every call they show: its attempts never exceed ``max_attempts``; the route received
exactly as many requests as the call recorded attempts; the call ended exactly once (one
result or one ``RetryError``, one ``call_ended``); the bucket never left ``[0, max]``; no
attempt went to a model whose breaker was open. The sequential machine also replays each
call's attempts against small reference models of the budget (gRPC A6 as
``retrylib.budget`` documents it) and of the breaker (``retrylib.state.base``): every
granted retry was granted above the threshold and refused only at or below it, every
recorded level and breaker state is the reference's. The concurrent machine runs calls at
once and checks that together they never over-spend the bucket.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from retrylib import RetryConfig, RetryError, RetryResult, retry_with_validation
from retrylib import validators as V
from retrylib.breaker import CircuitBreaker, attempt_ok
from retrylib.budget import RetryBudget
from retrylib.errors import BudgetExhaustedError, CircuitOpenError
from retrylib.state import MemoryStore
from retrylib.testing import ScriptedCall, http_error, reply, set_testing, timeout_error

PROMPT = [{"role": "user", "content": "Say ok."}]
OK = V.RegexMatch("^ok$", mode="fullmatch")
MICRO = 1_000_000
COOLDOWN = 5.0
MODELS = ("primary", "backup")
FAULTS = st.sampled_from(["503", "429", "401", "timeout", "invalid", "valid"])
CALLS = dict(faults=st.lists(FAULTS, max_size=8), max_attempts=st.integers(1, 6),
             fallback=st.booleans(), outage=st.sampled_from([None, 1, 2]))


def item(fault: str) -> Any:
    """A script item for one drawn fault: a genuine exception instance or a reply."""
    return {"503": lambda: http_error(503),
            "429": lambda: http_error(429, headers={"retry-after": "1"}),
            "401": lambda: http_error(401), "timeout": timeout_error,
            "invalid": lambda: reply("not ok", tokens=(3, 2)),
            "valid": lambda: reply("ok", tokens=(3, 1))}[fault]()


class Ends:
    """A hook counting how often each call started and ended."""

    def __init__(self) -> None:
        self.started = self.ended = 0

    def call_started(self, info: Any) -> None:
        self.started += 1

    def call_ended(self, info: Any, outcome: Any) -> None:
        self.ended += 1


class RefBreaker:
    """The documented breaker semantics (``retrylib.state.base``), for one key."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.state, self.failures, self.opened, self.probes, self.probe_at = "closed", 0, 0.0, 0, 0.0

    def observe(self, now: float) -> None:
        if self.state == "open" and now >= self.opened + COOLDOWN:
            self.state, self.probes, self.probe_at = "half_open", 0, 0.0
        if self.state == "half_open" and self.probes and now >= self.probe_at + COOLDOWN:
            self.probes = 0

    def allow(self, now: float) -> tuple[str, bool]:
        self.observe(now)
        if self.state == "closed":
            return self.state, True
        if self.state == "half_open" and self.probes < 1:
            self.probes, self.probe_at = self.probes + 1, now
            return self.state, True
        return self.state, False

    def record(self, ok: bool, now: float) -> None:
        self.observe(now)
        if ok:
            if self.state == "half_open":
                self.state, self.failures, self.probes = "closed", 0, 0
            elif self.state == "closed":
                self.failures = 0
        else:
            self.failures += 1
            if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
                self.state, self.opened, self.probes = "open", now, 0


class LoopMachine(RuleBasedStateMachine):
    """Calls, one at a time, on one shared budget and breaker; time moves between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 0.0
        self.calls = self.ended = 0

    def teardown(self) -> None:
        self.loop.close()

    @initialize(max_tokens=st.sampled_from([2.0, 4.0, 10.0]), ratio=st.sampled_from([0.1, 0.5, 1.0]),
                threshold=st.integers(1, 4))
    def gates(self, max_tokens: float, ratio: float, threshold: int) -> None:
        # threshold = max_tokens / 2 >= the cost of 1: a granted spend never clamps at 0.
        self.budget = RetryBudget(max_tokens, ratio, store=MemoryStore())
        self.breaker = CircuitBreaker(failure_threshold=threshold, cooldown=COOLDOWN,
                                      clock=lambda: self.now)
        self.levels = {m: round(max_tokens * MICRO) for m in MODELS}
        self.refs = {m: RefBreaker(threshold) for m in MODELS}

    def config(self, max_attempts: int, fallback: bool, outage: int | None, ends: Ends) -> RetryConfig:
        return RetryConfig(max_attempts=max_attempts, initial_delay=0, max_delay=0, jitter="none",
                           budget=self.budget, breaker=self.breaker, hooks=(ends,),
                           fallback_models=["backup"] if fallback else (),
                           fallback_after_transport_failures=outage if fallback else None)

    async def one(self, faults: list[str], config: RetryConfig) -> tuple[ScriptedCall, Any]:
        call = ScriptedCall([item(f) for f in faults], then=reply("ok", tokens=(3, 1)), model="primary")
        try:
            outcome: Any = await retry_with_validation(call, PROMPT, [OK], config)
        except RetryError as exc:  # any other exception is a bug: it fails the test
            outcome = exc
        return call, outcome

    def check_call(self, call: ScriptedCall, outcome: Any, max_attempts: int) -> list[Any]:
        """What holds for every call, alone or among others; returns its attempts."""
        assert isinstance(outcome, RetryResult | RetryError)
        attempts = outcome.attempts
        assert len(attempts) <= max_attempts
        assert call.calls == len(attempts), (call.calls, len(attempts))
        assert [a.number for a in attempts] == list(range(1, len(attempts) + 1))
        assert all(a.breaker_state in ("closed", "half_open") for a in attempts)
        top = self.budget.max_tokens
        assert all(a.budget_level is not None and 0 <= a.budget_level <= top for a in attempts)
        if isinstance(outcome, BudgetExhaustedError):
            assert attempts, "the budget refused a call's first attempt"
        return attempts

    @rule(dt=st.integers(0, 16).map(lambda n: n / 2))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(**CALLS)
    def run_call(self, faults: list[str], max_attempts: int, fallback: bool, outage: int | None) -> None:
        ends = Ends()
        call, outcome = self.loop.run_until_complete(
            self.one(faults, self.config(max_attempts, fallback, outage, ends)))
        self.calls += 1
        self.ended += ends.ended
        assert (ends.started, ends.ended) == (1, 1)
        attempts = self.check_call(call, outcome, max_attempts)
        self.replay(attempts, outcome)

    def replay(self, attempts: list[Any], outcome: Any) -> None:
        """The call's attempts against the reference budget and breakers, in order."""
        b, now = self.budget, self.now
        cost, ratio, thr, top = (round(x * MICRO) for x in (b.retry_cost, b.token_ratio, b.threshold, b.max_tokens))
        prev = "primary"
        for a in attempts:
            model = a.model
            if model != prev:  # moved on to the fallback model: the note says why
                note = a.note or ""
                assert model == "backup" and ("breaker" in note or "transport failures" in note), note
                if "breaker" in note:  # the primary's breaker refused the request
                    assert not self.refs[prev].allow(now)[1], note
            state, allowed = self.refs[model].allow(now)
            assert allowed and state == a.breaker_state, (state, a.breaker_state, a.note)
            if a.number > 1:
                assert self.levels[model] > thr, "a retry was granted at or below the threshold"
                self.levels[model] -= cost
            self.refs[model].record(attempt_ok(a), now)
            if a.outcome == "ok":
                self.levels[model] = min(top, self.levels[model] + ratio)
            assert round(a.budget_level * MICRO) == self.levels[model], (a.budget_level, self.levels)
            prev = model
        if isinstance(outcome, BudgetExhaustedError):  # refused at or below the threshold
            assert self.levels[outcome.key] <= thr and round(outcome.level * MICRO) == self.levels[outcome.key]
            # The budget is asked before the breaker grants a probe, so no probe was taken.
        if isinstance(outcome, CircuitOpenError):
            assert not self.refs[outcome.key].allow(now)[1]

    @invariant()
    def store_matches_the_reference(self) -> None:
        if not hasattr(self, "budget"):
            return
        for m in MODELS:
            level = self.loop.run_until_complete(self.budget.level(m))
            assert 0 <= level <= self.budget.max_tokens
            assert round(level * MICRO) == self.levels[m]
            d = self.loop.run_until_complete(self.breaker.state(m))
            probe = RefBreaker(self.refs[m].threshold)
            probe.__dict__.update(self.refs[m].__dict__)
            probe.observe(self.now)
            assert d.state == probe.state, (m, d.state, probe.state)

    @invariant()
    def every_call_ended_once(self) -> None:
        assert self.ended == self.calls


class ConcurrentLoopMachine(LoopMachine):
    """Batches of calls at once on the shared gates: the bounds hold, and the bucket is never
    over-spent: for each key, the retries granted (attempts after a call's first) satisfy
    ``(granted - 1) * cost < level before + credits - threshold``."""

    @rule(batch=st.lists(st.fixed_dictionaries(CALLS), min_size=2, max_size=5))
    def run_batch(self, batch: list[dict[str, Any]]) -> None:
        before = {m: round(self.loop.run_until_complete(self.budget.level(m)) * MICRO) for m in MODELS}
        ends = [Ends() for _ in batch]

        async def go() -> list[tuple[ScriptedCall, Any]]:
            return await asyncio.gather(*(self.one(kw["faults"], self.config(
                kw["max_attempts"], kw["fallback"], kw["outage"], e)) for kw, e in zip(batch, ends, strict=True)))

        done = self.loop.run_until_complete(go())
        self.calls += len(batch)
        self.ended += sum(e.ended for e in ends)
        assert all((e.started, e.ended) == (1, 1) for e in ends)
        attempts = [a for (call, outcome), kw in zip(done, batch, strict=True)
                    for a in self.check_call(call, outcome, kw["max_attempts"])]
        b = self.budget
        cost, ratio, thr = (round(x * MICRO) for x in (b.retry_cost, b.token_ratio, b.threshold))
        for m in MODELS:
            granted = sum(a.model == m and a.number > 1 for a in attempts)
            credits = ratio * sum(a.model == m and a.outcome == "ok" for a in attempts)
            if granted:
                assert (granted - 1) * cost < before[m] + credits - thr, (m, granted, before[m], credits)
        # Interleaved calls cannot be replayed one by one: the references start again from
        # the store's state.
        self.levels = {m: round(self.loop.run_until_complete(b.level(m)) * MICRO) for m in MODELS}
        self.refs = {m: self._ref_from_store(m) for m in MODELS}

    def _ref_from_store(self, model: str) -> RefBreaker:
        rec = self.breaker.store._breakers.get(model)  # type: ignore[attr-defined]
        ref = RefBreaker(self.breaker.failure_threshold)
        if rec is not None:
            ref.state = ("closed", "open", "half_open")[rec[0]]
            ref.failures, ref.opened, ref.probes, ref.probe_at = rec[1], rec[2], rec[3], rec[4]
        return ref


def test_the_loop_keeps_its_bounds_call_by_call():
    """200 random call sequences: bounds, exactly-once ends, and the budget and breaker as
    their reference models say, attempt by attempt."""
    with set_testing(True):
        run_state_machine_as_test(LoopMachine, settings=settings(
            max_examples=200, stateful_step_count=20, deadline=None))


def test_concurrent_calls_never_overspend_the_shared_budget():
    """100 random sequences of concurrent batches: bounds, exactly-once ends, no over-spend."""
    with set_testing(True):
        run_state_machine_as_test(ConcurrentLoopMachine, settings=settings(
            max_examples=100, stateful_step_count=10, deadline=None))
