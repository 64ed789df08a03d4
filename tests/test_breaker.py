"""CircuitBreaker: per-model closed → open → half-open, driven by a clock the test steps (no
sleeps), shared through a real redis-server, and in front of a dead primary behind the
fault proxy (no request reaches it while the breaker is open), by hand and through the retry
loop with a fallback model behind a second proxy."""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid
from datetime import timedelta

import pytest

from retrylib import FallbackModel, RetryConfig, retry_with_validation
from retrylib.breaker import CircuitBreaker, attempt_ok
from retrylib.client import make_call
from retrylib.errors import (
    CircuitOpenError,
    ConfigError,
    ProxyHTTPError,
    RetryError,
    RetryExhaustedError,
)
from retrylib.result import Attempt
from retrylib.state import MemoryStore, RedisStore
from retrylib.testing.chaos import ChaosProxy


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(params=["memory", "redis"])
def store(request):
    """The breaker's store: in-process, or a real redis-server with a fresh prefix."""
    if request.param == "memory":
        return MemoryStore()
    server = request.getfixturevalue("redis_server")
    return RedisStore(server.url, prefix=f"c{uuid.uuid4().hex[:8]}:", on_error="raise")


def test_the_defaults():
    """5 consecutive failures, a 30 s cooldown, one half-open probe; cooldown as timedelta."""
    b = CircuitBreaker()
    assert (b.failure_threshold, b.cooldown, b.half_open_max_calls) == (5, 30.0, 1)
    assert CircuitBreaker(cooldown=timedelta(minutes=2)).cooldown == 120.0
    assert "failure_threshold=5" in repr(b)


async def test_a_whole_cycle_on_a_stepped_clock(store):
    """5 failures open it; it refuses for 30 s (retry_in counts down); then one probe goes,
    and its success closes the breaker."""
    clock = Clock()
    b = CircuitBreaker(store=store, clock=clock)
    for _ in range(4):
        assert (await b.record("openai/x", ok=False)).state == "closed"
    opened = await b.record("openai/x", ok=False)
    assert (opened.state, opened.failures) == ("open", 5)
    clock.advance(12)
    d = await b.allow("openai/x")
    assert (d.allowed, d.retry_in) == (False, pytest.approx(18.0))
    clock.advance(18)
    assert (await b.state("openai/x")).state == "half_open"
    probe = await b.allow("openai/x")
    assert probe.allowed and probe.probe
    assert not (await b.allow("openai/x")).allowed  # the probe is out
    assert (await b.record("openai/x", ok=True)).state == "closed"
    assert (await b.allow("openai/x")).allowed


async def test_a_failed_probe_reopens_for_a_whole_cooldown(store):
    """A probe's failure re-opens the breaker; it refuses for another full cooldown."""
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown=10, store=store, clock=clock)
    await b.record("m", ok=False)
    clock.advance(10)
    assert (await b.allow("m")).probe
    clock.advance(3)
    assert (await b.record("m", ok=False)).state == "open"
    clock.advance(9.5)
    assert not (await b.allow("m")).allowed
    clock.advance(0.5)
    assert (await b.allow("m")).probe


async def test_models_have_their_own_breakers(store):
    """An open breaker for one model leaves another model's closed."""
    b = CircuitBreaker(failure_threshold=2, store=store, clock=Clock())
    for _ in range(2):
        await b.record("dead/primary", ok=False)
    assert not (await b.allow("dead/primary")).allowed
    assert (await b.allow("good/fallback")).allowed


async def test_only_one_probe_among_many_concurrent_requests(store):
    """50 concurrent requests when the cooldown ends: exactly one goes, as the probe."""
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, cooldown=5, store=store, clock=clock)
    await b.record("m", ok=False)
    clock.advance(5)
    decisions = await asyncio.gather(*(b.allow("m") for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 1
    assert sum(d.probe for d in decisions) == 1


async def test_two_workers_share_one_breaker_through_redis(redis_server):
    """Two breakers (two workers) on one Redis: failures seen by one open the other's, on the
    server's clock (no clock given)."""
    a = CircuitBreaker(failure_threshold=4, store=RedisStore(redis_server.url, prefix="w:"))
    b = pickle.loads(pickle.dumps(a))  # another worker rebuilds it from its spec
    assert b.spec() == a.spec() and b is not a
    for breaker in (a, b, a, b):
        await breaker.record("proxy/m", ok=False)
    d = await b.allow("proxy/m")
    assert (d.state, d.allowed, d.failures) == ("open", False, 4)
    assert 0 < d.retry_in <= 30


def test_what_counts_as_a_failure():
    """Retryable transport errors count against the server; an answer (valid or not) and a
    deliberate non-retryable error (400, 401) count for it."""
    def a(outcome: str, retryable: bool | None = None) -> Attempt:
        return Attempt(number=1, start=0, end=0, outcome=outcome,  # type: ignore[arg-type]
                       retryable=retryable)

    assert attempt_ok(a("transport_error", True)) is False
    assert attempt_ok(a("transport_error", None)) is False
    assert attempt_ok(a("transport_error", False)) is True
    assert attempt_ok(a("validation_failed")) is True
    assert attempt_ok(a("ok")) is True


async def test_a_refusal_becomes_a_clear_error(store):
    """decision.error() is a CircuitOpenError naming the model, the failures and the wait;
    it is a RetryError and pickles."""
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, cooldown=20, store=store, clock=clock)
    for _ in range(3):
        await b.record("proxy/dead", ok=False)
    clock.advance(7.5)
    err = (await b.allow("proxy/dead")).error(attempts=["a"])
    assert str(err) == ("circuit breaker open for 'proxy/dead' after 3 consecutive transport "
                        "failures: the request was not sent; the next probe in 12.5 s")
    assert isinstance(err, RetryError) and err.reason == "circuit_open" and err.attempts == ["a"]
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, CircuitOpenError) and (copy.key, copy.retry_in) == ("proxy/dead", 12.5)


@pytest.mark.parametrize("kwargs, field", [
    ({"failure_threshold": 0}, "failure_threshold"), ({"failure_threshold": 2.5}, "failure_threshold"),
    ({"cooldown": 0}, "cooldown"), ({"cooldown": "30"}, "cooldown"),
    ({"half_open_max_calls": 0}, "half_open_max_calls"), ({"clock": 5}, "clock"),
    ({"key": None}, "key"),
])
def test_bad_breaker_arguments_are_config_errors(kwargs, field):
    """Each bad argument is refused with a ConfigError that names it."""
    with pytest.raises(ConfigError, match=field):
        CircuitBreaker(**kwargs)


async def test_no_request_reaches_a_dead_primary_while_open(chaos_free):
    """A primary that answers 503 to everything, called through the proxy route: after
    failure_threshold failures the breaker opens, and the proxy's journal shows that none of
    the next 20 requests was sent; after the cooldown one probe is."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30, clock=clock)
    chaos_free.set_plan(["503"] * 100, key="dead")
    call = make_call("proxy/primary", api_base=chaos_free.url,
                     extra_headers={"X-Chaos-Key": "dead"})
    messages = [{"role": "user", "content": "hi"}]
    sent = refused = 0
    for _ in range(23):
        decision = await breaker.allow(call.model)
        if not decision.allowed:
            refused += 1
            continue
        sent += 1
        try:
            await call(messages=messages)
            ok = True
        except ProxyHTTPError:
            ok = False
        await breaker.record(call.model, ok=ok)
    assert (sent, refused) == (3, 20)
    assert len(chaos_free.journal("dead")) == 3
    clock.advance(30)
    assert (await breaker.allow(call.model)).probe
    with pytest.raises(ProxyHTTPError):
        await call(messages=messages)
    assert len(chaos_free.journal("dead")) == 4  # the probe went over the wire


async def test_a_dead_primary_fails_over_within_one_cooldown_and_is_spared_while_open():
    """Through the retry loop, over two fault proxies: a primary that answers 503 to everything
    and a healthy fallback. The first call succeeds on the fallback well within one breaker
    cooldown of the outage's start; while the breaker is open, the primary's journal does not
    grow (every call goes straight to the fallback); after the cooldown exactly one probe
    reaches it, and the call still succeeds on the fallback."""
    cooldown, skipped = 5.0, [0.0]
    breaker = CircuitBreaker(failure_threshold=3, cooldown=cooldown,
                             clock=lambda: time.monotonic() + skipped[0])
    with ChaosProxy(upstream=None, upstream_free=True, plan=["503"] * 1000) as primary, \
            ChaosProxy(upstream=None, upstream_free=True) as fallback:
        # Only the breaker moves calls here (not the primary's share of transport failures).
        config = RetryConfig(max_attempts=5, initial_delay=0.01, max_delay=0.02, breaker=breaker,
                             fallback_models=[FallbackModel(model="proxy/fallback",
                                                            api_base=fallback.url)],
                             fallback_on=("breaker_open",))
        call = make_call("proxy/primary", api_base=primary.url)
        messages = [{"role": "user", "content": "hi"}]
        t0 = time.monotonic()  # the primary is down from here
        first = await retry_with_validation(call, messages, None, config)
        took = time.monotonic() - t0
        assert took < cooldown, took
        assert [a.model for a in first.attempts] == ["proxy/primary"] * 3 + ["proxy/fallback"]
        assert "breaker open" in (first.attempts[-1].note or "")
        assert (len(primary.journal()), len(fallback.journal())) == (3, 1)
        for i in range(10):  # the breaker is open: nothing reaches the primary
            assert (await breaker.state("proxy/primary")).state == "open"
            r = await retry_with_validation(call, messages, None, config)
            assert [(a.model, a.outcome) for a in r.attempts] == [("proxy/fallback", "ok")]
            assert (len(primary.journal()), len(fallback.journal())) == (3, 2 + i)
        skipped[0] += cooldown  # one cooldown later: half-open, one probe goes
        probed = await retry_with_validation(call, messages, None, config)
        assert [a.model for a in probed.attempts] == ["proxy/primary", "proxy/fallback"]
        assert probed.attempts[0].breaker_state == "half_open"
        assert [e["status"] for e in primary.journal()] == [503] * 4
        assert (await breaker.state("proxy/primary")).state == "open"
        await retry_with_validation(call, messages, None, config)
        assert len(primary.journal()) == 4


@pytest.mark.parametrize(("kw", "share"), [({}, 3), ({"max_attempts_before_fallback": 2}, 2),
                                          ({"fallback_after_transport_failures": 1}, 1)])
async def test_without_a_breaker_a_dead_primary_uses_up_its_share_then_the_fallback_answers(kw, share):
    """No breaker, no setting: a primary that answers 503 to everything gets its share of the
    attempts (max_attempts=5 over two models: 3; or max_attempts_before_fallback, or
    fallback_after_transport_failures), then the call moves to the fallback and succeeds
    there. It used to spend all 5 attempts on the dead primary and fail."""
    with ChaosProxy(upstream=None, upstream_free=True, plan=["503"] * 100) as primary, \
            ChaosProxy(upstream=None, upstream_free=True) as fallback:
        config = RetryConfig(max_attempts=5, initial_delay=0.0, max_delay=0.0, **kw,
                             fallback_models=[FallbackModel(model="proxy/fallback",
                                                            api_base=fallback.url)])
        r = await retry_with_validation(make_call("proxy/primary", api_base=primary.url),
                                        [{"role": "user", "content": "hi"}], None, config)
    assert [a.model for a in r.attempts] == ["proxy/primary"] * share + ["proxy/fallback"]
    assert r.attempts[-1].outcome == "ok" and len(primary.journal()) == share
    assert "transport failures in a row" in (r.attempts[-1].note or "")


async def test_fallback_on_breaker_only_keeps_transport_failures_on_the_primary():
    """fallback_on=("breaker_open",): a dead primary's transport failures stay on it."""
    with ChaosProxy(upstream=None, upstream_free=True, plan=["503"] * 100) as primary, \
            ChaosProxy(upstream=None, upstream_free=True) as fallback:
        config = RetryConfig(max_attempts=4, initial_delay=0.0, max_delay=0.0,
                             fallback_on=("breaker_open",),
                             fallback_models=[FallbackModel(model="proxy/fallback",
                                                            api_base=fallback.url)])
        with pytest.raises(RetryExhaustedError):
            await retry_with_validation(make_call("proxy/primary", api_base=primary.url),
                                        [{"role": "user", "content": "hi"}], None, config)
    assert len(primary.journal()) == 4 and fallback.journal() == []
