"""Hypothesis state machines over sequences of spends, successes, failures and time steps,
on the in-process store and on a real redis-server.

They show: a bucket's level never goes below 0 nor above its maximum; every breaker
transition is a legal one (closed → open only on a failure, half-open → closed only on a
success, open is left only once its cooldown has passed); an open breaker never lets a
request through and a half-open one never more than ``half_open_max_calls`` probes; and
each store answers exactly what a small reference model of the documented semantics
(``retrylib.state.base``) answers.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from retrylib.state import BreakerPolicy, MemoryStore, RedisStore, StateStore
from retrylib.testing.redis import RedisServer

MAX = 10.0
POLICY = BreakerPolicy(failure_threshold=3, cooldown=5.0, half_open_max_calls=2)
KEYS = st.sampled_from(["a", "b"])
# Halves of a second: exact in binary, so no boundary depends on a rounding.
STEPS = st.integers(0, 16).map(lambda n: n / 2)

LEGAL = {
    ("closed", "allow", "closed"), ("closed", "state", "closed"), ("closed", "ok", "closed"),
    ("closed", "fail", "closed"), ("closed", "fail", "open"),
    ("open", "allow", "open"), ("open", "state", "open"), ("open", "ok", "open"),
    ("open", "fail", "open"),
    # once the cooldown has passed, open is half-open before the operation applies:
    ("open", "allow", "half_open"), ("open", "state", "half_open"), ("open", "ok", "closed"),
    ("half_open", "allow", "half_open"), ("half_open", "state", "half_open"),
    ("half_open", "ok", "closed"), ("half_open", "fail", "open"),
}


class RefBreaker:
    """The documented breaker semantics, written out independently of the stores."""

    def __init__(self) -> None:
        self.state, self.failures, self.opened, self.probes, self.probe_at = "closed", 0, 0.0, 0, 0.0

    def observe(self, now: float) -> None:
        if self.state == "open" and now >= self.opened + POLICY.cooldown:
            self.state, self.probes, self.probe_at = "half_open", 0, 0.0
        if self.state == "half_open" and self.probes and now >= self.probe_at + POLICY.cooldown:
            self.probes = 0

    def allow(self, now: float) -> tuple[str, bool, bool]:
        self.observe(now)
        if self.state == "closed":
            return self.state, True, False
        if self.state == "half_open" and self.probes < POLICY.half_open_max_calls:
            self.probes, self.probe_at = self.probes + 1, now
            return self.state, True, True
        return self.state, False, False

    def record(self, ok: bool, now: float) -> str:
        self.observe(now)
        if ok:
            if self.state == "half_open":
                self.state, self.failures, self.probes = "closed", 0, 0
            elif self.state == "closed":
                self.failures = 0
        else:
            self.failures += 1
            if self.state == "half_open" or (self.state == "closed"
                                             and self.failures >= POLICY.failure_threshold):
                self.state, self.opened, self.probes = "open", now, 0
        return self.state


class StoreMachine(RuleBasedStateMachine):
    """Random operations on one store, checked against the reference after every step."""

    make_store: ClassVar = staticmethod(MemoryStore)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: StateStore = self.make_store()
        self.now = 0.0
        self.levels: dict[str, int] = {}  # reference levels, in micro-tokens
        self.breakers: dict[str, RefBreaker] = {}
        self.seen: dict[str, str] = {}  # each breaker's state as last observed

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.aclose())
        self.loop.close()

    # -- buckets --------------------------------------------------------------------------
    @rule(key=KEYS, cost=st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0]),
          threshold=st.sampled_from([0.0, 5.0]))
    def spend(self, key: str, cost: float, threshold: float) -> None:
        allowed, level = self.run(self.store.bucket_spend(key, cost, MAX, threshold))
        ref = self.levels.get(key, 10_000_000)
        expect = ref > threshold * 1_000_000
        if expect:
            ref = max(0, ref - round(cost * 1_000_000))
        self.levels[key] = ref
        assert (allowed, level) == (expect, ref / 1_000_000)

    @rule(key=KEYS, amount=st.sampled_from([0.1, 0.25, 1.0, -1.0, -20.0]))
    def credit(self, key: str, amount: float) -> None:
        level = self.run(self.store.bucket_credit(key, amount, MAX))
        ref = self.levels.get(key, 10_000_000) + round(amount * 1_000_000)
        self.levels[key] = min(10_000_000, max(0, ref))
        assert level == self.levels[key] / 1_000_000

    # -- breakers -------------------------------------------------------------------------
    @rule(dt=STEPS)
    def advance(self, dt: float) -> None:
        self.now += dt

    def _check(self, key: str, op: str, state: str) -> None:
        before = self.seen.get(key, "closed")
        assert (before, op, state) in LEGAL, f"illegal transition {before} --{op}--> {state}"
        self.seen[key] = state

    @rule(key=KEYS)
    def allow(self, key: str) -> None:
        d = self.run(self.store.breaker_allow(key, POLICY, self.now))
        ref = self.breakers.setdefault(key, RefBreaker())
        assert (d.state, d.allowed, d.probe) == ref.allow(self.now)
        assert not (d.state == "open" and d.allowed)
        assert ref.probes <= POLICY.half_open_max_calls
        self._check(key, "allow", d.state)

    @rule(key=KEYS, ok=st.booleans())
    def record(self, key: str, ok: bool) -> None:
        d = self.run(self.store.breaker_record(key, ok, POLICY, self.now))
        ref = self.breakers.setdefault(key, RefBreaker())
        assert d.state == ref.record(ok, self.now)
        assert d.failures == ref.failures
        self._check(key, "ok" if ok else "fail", d.state)

    @rule(key=KEYS)
    def state(self, key: str) -> None:
        d = self.run(self.store.breaker_state(key, POLICY, self.now))
        ref = self.breakers.setdefault(key, RefBreaker())
        probe = RefBreaker()
        probe.__dict__.update(ref.__dict__)  # a read: the reference must not move either
        probe.observe(self.now)
        assert d.state == probe.state
        self._check(key, "state", d.state)

    @invariant()
    def levels_stay_in_the_bucket(self) -> None:
        for key in ("a", "b"):
            level = self.run(self.store.bucket_level(key, MAX))
            assert 0.0 <= level <= MAX
            assert level == self.levels.get(key, 10_000_000) / 1_000_000


def test_the_memory_store_follows_the_model():
    """200 random sequences on MemoryStore: levels in [0, max], legal transitions, the model's answers."""
    run_state_machine_as_test(StoreMachine, settings=settings(
        max_examples=200, stateful_step_count=40, deadline=None))


@pytest.fixture(scope="module")
def shared_redis():
    """One redis-server for the module's machines (each machine uses its own prefix)."""
    with RedisServer() as server:
        yield server


@pytest.mark.timeout(300)
def test_the_redis_store_follows_the_model(shared_redis):
    """40 random sequences on a real Redis, with the same checks (the Lua scripts match)."""
    url = shared_redis.url

    class RedisMachine(StoreMachine):
        make_store = staticmethod(lambda: RedisStore(url, prefix=f"h{uuid.uuid4().hex}:",
                                                     on_error="raise"))

    run_state_machine_as_test(RedisMachine, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
