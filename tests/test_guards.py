"""The loop with its gates: one retry budget for every extra request, a breaker per model,
fallback on outage, and a per-call cap (issue 12), in process with scripted routes; and the
gates on a real redis-server that dies mid-call or mid-batch."""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid

import pytest

from retrylib import RetryConfig, RetryResult, retry_with_validation
from retrylib import validators as V
from retrylib.batch import batch_summary, run_batch
from retrylib.breaker import CircuitBreaker
from retrylib.budget import RetryBudget
from retrylib.errors import (
    BudgetExhaustedError,
    CallCapExceededError,
    CircuitOpenError,
    RetryError,
    StateStoreError,
    StateStoreUnavailableError,
)
from retrylib.state import RedisStore
from retrylib.testing import Delay, ScriptedCall, http_error, reply, set_testing

PROMPT = [{"role": "user", "content": "Say ok."}]


def by_model(down: set[str], answer: str = "ok") -> ScriptedCall:
    """A route whose models in ``down`` answer 503, the others ``answer``."""

    def serve(messages, model=None, **kw):
        return http_error(503) if (model or "primary") in down else reply(answer, tokens=(5, 1))

    return ScriptedCall([], then=serve, model="primary")


def cfg(**kw):
    return RetryConfig(**{"max_attempts": 5, "initial_delay": 0, "max_delay": 0,
                          "jitter": "none", **kw})


async def _run_many(call, n, config, validators=None):
    outcomes = []
    for _ in range(n):
        try:
            r = await retry_with_validation(call, PROMPT, validators, config)
            outcomes.append(("ok", r))
        except Exception as exc:  # each call ends once, with a result or an error
            outcomes.append((type(exc).__name__, exc))
    return outcomes


async def test_budget_bounds_amplification_at_total_outage():
    """100% failure, calls of 5 attempts: without a budget 5 requests a call; with the default
    budget the 500 calls send 50 retries in all (1.1 requests a call, ≤ 1.2), and the refused
    calls end with BudgetExhaustedError."""
    dead = by_model({"primary"})
    out = await _run_many(dead, 100, cfg())
    assert dead.calls == 500 and {k for k, _ in out} == {"RetryExhaustedError"}
    dead = by_model({"primary"})
    budget = RetryBudget()
    out = await _run_many(dead, 500, cfg(budget=budget))
    assert dead.calls == 550 and dead.calls / 500 <= 1.2
    assert sum(k == "BudgetExhaustedError" for k, _ in out) >= 450
    err = next(e for k, e in out if k == "BudgetExhaustedError")
    assert err.reason == "budget" and "primary" in str(err) and err.attempts
    assert err.key == "primary" and err.level <= budget.threshold
    level = await budget.level("primary")
    assert 0 <= level <= budget.max_tokens


async def test_budget_changes_no_outcome_at_ten_percent_failure():
    """200 calls in flight, 10 % of them (20) fail at once: with the default budget every call
    still succeeds; A6's defaults (10 tokens, token_ratio 0.1) would refuse 15 of those
    retries, which is why they are not retrylib's."""

    async def wave(budget: RetryBudget) -> list[object]:
        served = [0]

        def serve(messages, **kw):
            served[0] += 1  # the 20 first requests fail; they end first (same delay, FIFO)
            return Delay(0.01, http_error(503) if served[0] <= 20 else reply("ok", tokens=(5, 1)))

        call = ScriptedCall([], then=serve, model="primary")
        return await asyncio.gather(*(retry_with_validation(call, PROMPT, None, cfg(budget=budget))
                                      for _ in range(200)), return_exceptions=True)

    assert all(isinstance(r, RetryResult) for r in await wave(RetryBudget()))
    a6 = await wave(RetryBudget(max_tokens=10, token_ratio=0.1))
    assert sum(isinstance(r, BudgetExhaustedError) for r in a6) == 15


async def test_every_attempt_records_the_budget_level_and_breaker_state():
    """The budget's level and the breaker's state are in each attempt record."""
    call = ScriptedCall([http_error(503), "ok"])
    r = await retry_with_validation(call, PROMPT, None, cfg(budget=RetryBudget(),
                                                            breaker=CircuitBreaker()))
    assert [a.breaker_state for a in r.attempts] == ["closed", "closed"]
    assert [a.budget_level for a in r.attempts] == [100.0, 99.5]


async def test_reasks_and_judge_calls_draw_on_the_budget(chaos_free):
    """A re-ask after an invalid answer and an LLMJudge's call both take budget tokens."""
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    key = uuid.uuid4().hex
    chaos_free.set_plan(['reply:{"pass": true, "reason": "says ok"}'], key=key)
    judge = V.LLMJudge("openai/judge", "The answer says ok.", api_base=chaos_free.url,
                       api_key="sk-local", extra_headers={"X-Chaos-Key": key},
                       config=cfg(max_attempts=1))
    call = ScriptedCall(["bad", "ok"])
    r = await retry_with_validation(call, PROMPT, [V.RegexMatch("^ok$"), judge],
                                    cfg(budget=budget))
    assert r.content == "ok" and len(chaos_free.journal(key)) == 1
    # one re-ask on the route's key, one judge call on the judge's: each cost 1, each
    # success gave back 0.1
    assert await budget.level("scripted") == pytest.approx(10 - 1 + 0.1)
    assert await budget.level("openai/judge") == pytest.approx(10 - 1 + 0.1)


async def test_open_breaker_moves_to_the_fallback_and_spares_the_dead_primary():
    """Primary down: the first call fails over after failure_threshold tries; later calls go
    straight to the fallback model: no request reaches the primary while the breaker is open."""
    call = by_model({"primary"})
    breaker = CircuitBreaker(failure_threshold=2, cooldown=60)
    config = cfg(breaker=breaker, fallback_models=["backup"])
    first = await retry_with_validation(call, PROMPT, None, config)
    assert [a.model for a in first.attempts] == ["primary", "primary", "backup"]
    assert "breaker open" in (first.attempts[-1].note or "")
    seen = call.calls
    for _ in range(5):
        r = await retry_with_validation(call, PROMPT, None, config)
        assert [a.model for a in r.attempts] == ["backup"]
    assert [q.kwargs.get("model") for q in call.requests[seen:]] == ["backup"] * 5
    assert (await breaker.state("primary")).state == "open"


async def test_open_breaker_without_a_fallback_ends_the_call_clearly():
    """No fallback left: CircuitOpenError names the model and when it may be tried again."""
    call = by_model({"primary"})
    config = cfg(breaker=CircuitBreaker(failure_threshold=2, cooldown=60))
    with pytest.raises(CircuitOpenError) as info:
        await retry_with_validation(call, PROMPT, None, config)
    assert call.calls == 2 and info.value.reason == "circuit_open"
    assert "primary" in str(info.value) and len(info.value.attempts) == 2
    with pytest.raises(CircuitOpenError) as again:
        await retry_with_validation(call, PROMPT, None, config)
    assert call.calls == 2 and again.value.attempts == []


async def test_transport_failures_move_to_the_fallback_without_a_breaker():
    """``fallback_after_transport_failures=2``: after two 503s in a row, the next model."""
    call = by_model({"primary", "backup1"})
    config = cfg(fallback_models=["backup1", "backup2"], fallback_after_transport_failures=2)
    r = await retry_with_validation(call, PROMPT, None, config)
    assert [a.model for a in r.attempts] == ["primary", "primary", "backup1", "backup1", "backup2"]
    assert r.content == "ok"


async def test_fallback_on_can_exclude_transport():
    """``fallback_on=("breaker_open",)``: transport failures stay on the model."""
    call = by_model({"primary"})
    config = cfg(fallback_models=["backup"], fallback_after_transport_failures=1,
                 fallback_on=("breaker_open",))
    with pytest.raises(Exception, match="all 5 attempts failed"):
        await retry_with_validation(call, PROMPT, None, config)
    assert {q.kwargs.get("model") for q in call.requests} == {None}


async def test_outage_fallback_reaches_the_fallback_stage():
    """With a fallback stage on the ladder, an outage move puts the call in it."""
    call = by_model({"primary"})
    config = cfg(fallback_models=["backup"], max_attempts_before_fallback=3,
                 fallback_after_transport_failures=1)
    r = await retry_with_validation(call, PROMPT, None, config)
    assert [(a.stage, a.model) for a in r.attempts] == [("normal", "primary"), ("fallback", "backup")]
    assert r.metrics["stage_reached"] == "fallback"


async def test_token_cap_ends_the_call_before_the_attempt_that_would_pass_it():
    """``max_total_tokens``: the next attempt's estimate would pass the cap: CallCapExceededError."""
    call = ScriptedCall([reply("bad", tokens=(40, 10))] * 5)
    with pytest.raises(CallCapExceededError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch("^ok$")],
                                    cfg(max_total_tokens=120))
    assert call.calls == 2 and info.value.reason == "cap_tokens"
    assert "120" in str(info.value)


async def test_the_first_attempt_is_never_refused_by_the_budget():
    """An empty bucket still lets every call make its first attempt."""
    budget = RetryBudget(max_tokens=2, token_ratio=0.1)
    dead = by_model({"primary"})
    await _run_many(dead, 10, cfg(budget=budget))
    call = ScriptedCall(["ok"], model="primary")
    r = await retry_with_validation(call, PROMPT, None, cfg(budget=budget))
    assert r.content == "ok"


async def test_budget_shared_by_concurrent_calls_is_never_overspent():
    """200 concurrent calls at total outage: retries granted ≤ the bucket's spendable tokens."""
    budget = RetryBudget()
    dead = by_model({"primary"})
    with set_testing(True):
        out = await asyncio.gather(*[
            retry_with_validation(dead, PROMPT, None, cfg(budget=budget)) for _ in range(200)
        ], return_exceptions=True)
    assert len(out) == 200 and all(isinstance(e, Exception) for e in out)
    assert dead.calls - 200 <= (budget.max_tokens - budget.threshold) / budget.retry_cost




async def test_a_call_the_cap_ends_takes_no_half_open_probe():
    """The cap refuses a call's next attempt while its model's breaker is half-open: no probe
    is taken for the request that is not sent, so the next call gets the probe, is sent, and
    its success closes the breaker (a leaked probe would refuse it for another cooldown)."""
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, clock=lambda: now[0])

    async def opened_elsewhere(messages, **kw):
        await breaker.record("primary", ok=False)  # another worker's failure opens the breaker
        return reply("bad", tokens=(50, 50))

    class CooldownPasses:
        """Between this call's attempts, the breaker's cooldown passes: it is half-open."""

        def attempt_ended(self, details):
            now[0] += 10

    call = ScriptedCall([opened_elsewhere], model="primary")
    with pytest.raises(CallCapExceededError):
        await retry_with_validation(call, PROMPT, [V.RegexMatch("^ok$")],
                                    cfg(breaker=breaker, max_total_tokens=150,
                                        hooks=(CooldownPasses(),)))
    assert call.calls == 1
    state = await breaker.state("primary")
    assert (state.state, state.allowed) == ("half_open", True)
    nxt = ScriptedCall(["ok"], model="primary")
    r = await retry_with_validation(nxt, PROMPT, None, cfg(breaker=breaker))
    assert r.content == "ok" and nxt.calls == 1 and r.attempts[0].breaker_state == "half_open"
    assert (await breaker.state("primary")).state == "closed"


@pytest.mark.timeout(60)
async def test_concurrent_calls_race_for_one_probe_and_the_losers_spend_no_budget(redis_server):
    """20 calls move at once to a fallback model whose breaker (in Redis) is half-open: exactly
    one is sent, as the probe; the others end unsent, and the tokens those that lost the probe
    had taken went back, so the bucket paid for the one request sent."""
    store = RedisStore(redis_server.url, prefix="race:", on_error="raise")
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, store=store, clock=lambda: now[0])
    budget = RetryBudget(max_tokens=10, token_ratio=0.5, store=store)
    await breaker.record("backup", ok=False)
    now[0] = 10.0  # the backup's cooldown has passed: one probe may go

    arrived, together = [0], asyncio.Event()

    async def serve(messages, model=None, **kw):
        if model == "backup":
            return Delay(0.2, "ok")  # the probe is still in flight while the others ask
        arrived[0] += 1
        if arrived[0] == 20:
            together.set()
        await together.wait()  # the 20 primary failures end at once: their gates interleave
        return http_error(503)

    call = ScriptedCall([], then=serve, model="primary")
    config = cfg(breaker=breaker, budget=budget, fallback_models=["backup"],
                 fallback_after_transport_failures=1)
    out = await asyncio.gather(*(retry_with_validation(call, PROMPT, None, config)
                                 for _ in range(20)), return_exceptions=True)
    ok = [r for r in out if not isinstance(r, BaseException)]
    assert len(ok) == 1 and [a.model for a in ok[0].attempts] == ["primary", "backup"]
    assert ok[0].attempts[1].breaker_state == "half_open"
    # the losers: refused by the breaker, or by the budget while the other losers' tokens
    # were still out; none was sent
    assert all(isinstance(e, CircuitOpenError | BudgetExhaustedError) and len(e.attempts) == 1
               for e in out if e not in ok)
    assert [q.kwargs.get("model") for q in call.requests].count("backup") == 1
    assert await budget.level("backup") == 10 - 1 + 0.5
    assert (await breaker.state("backup")).state == "closed"
    await store.aclose()


# -- Redis goes away mid-call --------------------------------------------------------------------


def _gates(url: str, on_error: str, **store_kw) -> tuple[RedisStore, RetryConfig]:
    store = RedisStore(url, prefix=f"{uuid.uuid4().hex[:8]}:", on_error=on_error, **store_kw)
    return store, cfg(budget=RetryBudget(max_tokens=10, token_ratio=0.5, store=store),
                      breaker=CircuitBreaker(failure_threshold=1000, store=store))


@pytest.mark.timeout(60)
async def test_redis_killed_mid_call_ends_it_clearly_with_its_attempts(redis_server):
    """on_error="raise": Redis dies during the second attempt. The attempt's answer is kept
    (the failed update is noted on it), and the call ends before its third attempt with
    StateStoreUnavailableError: a RetryError (reason "state_store") and a StateStoreError,
    carrying both attempts and their requests in its metrics."""
    _, config = _gates(redis_server.url, "raise")

    def killed_meanwhile(messages, **kw):
        redis_server.kill()
        return http_error(503)

    call = ScriptedCall([http_error(503), killed_meanwhile, "ok"], model="primary")
    with pytest.raises(StateStoreUnavailableError) as info:
        await retry_with_validation(call, PROMPT, None, config)
    err = info.value
    assert isinstance(err, RetryError) and isinstance(err, StateStoreError)
    assert err.reason == "state_store" and err.url == redis_server.url
    assert "did not answer" in str(err) and "before attempt 3" in str(err)
    assert call.calls == 2 and [a.outcome for a in err.attempts] == ["transport_error"] * 2
    assert "budget/breaker not updated" in (err.attempts[1].note or "")
    assert err.metrics["api_calls"] == 2 and err.last_error["status_code"] == 503
    assert isinstance(err.__cause__, StateStoreError)
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.reason, len(copy.attempts)) == (StateStoreUnavailableError, "state_store", 2)


@pytest.mark.timeout(60)
async def test_redis_killed_mid_batch_rows_count_the_requests_sent(redis_server):
    """on_error="raise" in a batch: the row of the call Redis died under counts its 2 attempts
    and 2 requests, a call after it ends at once with 0, and the rows add up to the route's."""
    _, config = _gates(redis_server.url, "raise")

    def killed_meanwhile(messages, **kw):
        redis_server.kill()
        return http_error(503)

    call = ScriptedCall(["ok", http_error(503), killed_meanwhile], model="primary")
    rows = await run_batch([PROMPT] * 3, call=call, config=config, concurrency=1, progress=False)
    assert [(r.outcome, r.reason, r.attempts, r.api_calls) for r in rows] == [
        ("ok", None, 1, 1), ("state_store", "state_store", 2, 2), ("state_store", "state_store", 0, 0)]
    assert rows[1].error_type == "StateStoreUnavailableError" and "did not answer" in (rows[1].error or "")
    assert batch_summary(rows)["api_calls"] == call.calls == 3


@pytest.mark.timeout(60)
async def test_redis_killed_mid_batch_with_local_fallback_finishes_the_batch(redis_server, warnings_logged):
    """on_error="local": Redis dies after 60 of a 200-call batch's requests (8 in flight).
    The batch finishes promptly, every call succeeds, one warning says Redis did not answer,
    and every request sent is in some row."""
    store, config = _gates(redis_server.url, "local", socket_timeout=0.5, connect_timeout=0.5)
    served = [0]

    async def serve(messages, **kw):
        served[0] += 1
        n = served[0]
        if n == 60:
            redis_server.kill()
        await asyncio.sleep(0.002)
        return http_error(503) if n % 10 == 0 else reply("ok", tokens=(5, 1))

    call = ScriptedCall([], then=serve, model="primary")
    t0 = time.monotonic()
    rows = await run_batch([PROMPT] * 200, call=call, config=config, concurrency=8, progress=False)
    assert time.monotonic() - t0 < 30
    assert [r.outcome for r in rows] == ["ok"] * 200
    assert sum(r.api_calls for r in rows) == call.calls > 200
    assert store.degraded
    said = [w for w in warnings_logged if "did not answer" in w]
    assert len(said) == 1 and redis_server.url in said[0] and "process-local" in said[0]


async def test_the_cost_cap_counts_what_the_validators_spent():
    """``max_total_cost``: a validator's own model calls ($0.25 per answer checked) count in
    the call's cost, so the call ends before the attempt after the cap was passed, even though
    the attempts themselves report no cost."""

    class PaidCheck:
        def validate(self, text, context):
            context.subresults.append(RetryResult(content="", response=None, metrics={
                "total_api_calls": 1, "tokens_in": 5, "tokens_out": 2, "cost": 0.25}))
            return V.RegexMatch("^ok$").validate(text, context)

    call = ScriptedCall([reply("bad", tokens=(3, 1))] * 5)
    with pytest.raises(CallCapExceededError) as info:
        await retry_with_validation(call, PROMPT, [PaidCheck()], cfg(max_total_cost=0.6))
    assert call.calls == 3 and info.value.reason == "cap_cost"
    assert info.value.used == 0.75 and info.value.metrics["validator_cost"] == 0.75


async def test_an_attempt_the_calls_deadline_cuts_is_not_a_breaker_failure():
    """Polly's order: the total deadline is outside the breaker. A slow answer cut by the
    call's deadline leaves the breaker closed (noted in the attempt); the same answer cut by
    ``attempt_timeout`` is the model's failure and opens it."""
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    call = ScriptedCall([Delay(5, "ok")] * 2, model="primary")
    with pytest.raises(RetryError) as info:
        await retry_with_validation(call, PROMPT, None, cfg(breaker=breaker, deadline=0.2))
    assert info.value.reason == "deadline" and call.calls == 1
    assert "cut by the call's deadline" in info.value.attempts[0].note
    assert (await breaker.state("primary")).state == "closed"
    with pytest.raises(RetryError):
        await retry_with_validation(call, PROMPT, None, cfg(breaker=breaker, max_attempts=1,
                                                            attempt_timeout=0.2, deadline=30))
    assert (await breaker.state("primary")).state == "open"
