"""RetryBudget (gRPC A6 retry throttling over a shared bucket) and CallCap, on the in-process
store and on a real redis-server."""

from __future__ import annotations

import asyncio
import pickle
import uuid

import pytest

from retrylib.budget import CallCap, RetryBudget
from retrylib.errors import BudgetExhaustedError, CallCapExceededError, ConfigError, RetryError
from retrylib.result import Attempt
from retrylib.state import MemoryStore, RedisStore


@pytest.fixture(params=["memory", "redis"])
def store(request):
    """The budget's store: in-process, or a real redis-server with a fresh prefix."""
    if request.param == "memory":
        return MemoryStore()
    server = request.getfixturevalue("redis_server")
    return RedisStore(server.url, prefix=f"b{uuid.uuid4().hex[:8]}:", on_error="raise")


def test_the_defaults_are_the_measured_setting():
    """max_tokens 100 and token_ratio 0.5 (not A6's 10 and 0.1: see retrylib.budget),
    threshold max/2, a retry costs 1, keyed by model."""
    b = RetryBudget()
    assert (b.max_tokens, b.token_ratio, b.threshold, b.retry_cost, b.key) == (100, 0.5, 50, 1, "model")
    assert "max_tokens=100" in repr(b) and "MemoryStore" in repr(b)


async def test_five_retries_then_refusal_with_a_clear_error(store):
    """A full bucket grants five extra requests (10 → 5), then refuses, naming key and level."""
    budget = RetryBudget(max_tokens=10, token_ratio=0.1, store=store)
    granted = [await budget.allow("openai/x", kind="transport") for _ in range(5)]
    assert [d.level for d in granted] == [9.0, 8.0, 7.0, 6.0, 5.0]
    assert all(d.allowed and d.cost == 1.0 for d in granted)
    refused = await budget.allow("openai/x", kind="reask")
    assert (refused.allowed, refused.level, refused.cost) == (False, 5.0, 0.0)
    err = refused.error(attempts=["a1"])
    assert str(err) == ("retry budget exhausted for key 'openai/x': 5.0 of 10 tokens "
                        "(retries need > 5.0); the reask request was not sent")
    assert (err.key, err.level, err.max_tokens, err.threshold, err.kind) == (
        "openai/x", 5.0, 10.0, 5.0, "reask")
    assert isinstance(err, RetryError) and err.reason == "budget" and err.attempts == ["a1"]


async def test_acquire_raises_and_the_error_pickles(store):
    """acquire() raises BudgetExhaustedError when refused; the error survives pickling."""
    budget = RetryBudget(max_tokens=2, store=store)  # threshold 1: one retry
    await budget.acquire("m")
    with pytest.raises(BudgetExhaustedError) as info:
        await budget.acquire("m", kind="fallback")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.key, copy.level, copy.kind, str(copy)) == ("m", 1.0, "fallback", str(info.value))


async def test_successes_refill_and_failures_cost_nothing_by_themselves(store):
    """record(ok=True) gives back token_ratio (capped at max); record(ok=False) leaves the
    level as it is (the failure's token is taken by its retry's allow)."""
    budget = RetryBudget(max_tokens=10, token_ratio=0.1, store=store)
    for _ in range(5):
        await budget.allow("m")
    assert not (await budget.allow("m")).allowed
    assert await budget.record("m", ok=False) == 5.0
    assert await budget.record("m", ok=True) == pytest.approx(5.1)
    assert (await budget.allow("m")).allowed  # 5.1 > 5: one more retry
    assert not (await budget.allow("m")).allowed
    for _ in range(200):
        await budget.record("m", ok=True)
    assert await budget.level("m") == 10.0


async def test_a_request_may_cost_more(store):
    """allow(cost=...) takes that many tokens (a timeout that costs double, as in AWS's SDK)."""
    budget = RetryBudget(max_tokens=10, store=store)
    assert (await budget.allow("m", cost=2)).level == 8.0
    assert (await budget.allow("m", cost=4)).level == 4.0
    assert not (await budget.allow("m")).allowed


async def test_a_request_not_sent_gets_its_token_back(store):
    """refund() gives back what a granted allow() took (the breaker refused the request after
    all); a refused decision took nothing and gives back nothing."""
    budget = RetryBudget(max_tokens=4, store=store)
    granted = await budget.allow("m", cost=2)
    refused = await budget.allow("m")
    assert (granted.level, refused.allowed) == (2.0, False)
    assert await budget.refund(refused) == 2.0
    assert await budget.refund(granted) == 4.0


async def test_concurrent_calls_at_total_failure_share_five_retries(store):
    """200 concurrent calls whose every request fails, each wanting 4 retries: the budget
    grants 5 retries in all, so requests ÷ calls = 205 / 200."""
    budget = RetryBudget(max_tokens=10, store=store)
    requests = 0

    async def one_call() -> None:
        nonlocal requests
        requests += 1  # the first attempt: never asks, never refused; it fails
        for _ in range(4):
            if not (await budget.allow("dead/model", kind="transport")).allowed:
                return
            requests += 1  # the retry, which fails too
            await budget.record("dead/model", ok=False)

    await asyncio.gather(*(one_call() for _ in range(200)))
    assert requests == 205
    assert requests / 200 <= 1.2


async def test_the_key_picks_the_bucket(store):
    """key="model" (default), "route" (api_base, else provider), a fixed name, or a callable."""
    by_model = RetryBudget(max_tokens=10, store=store)
    assert by_model.key_for("openai/a") == "openai/a" and by_model.key_for(None) == "default"
    by_route = RetryBudget(max_tokens=10, store=store, key="route")
    assert by_route.key_for("openai/a", "HTTP://Example.COM:8443/v1") == "http://example.com:8443"
    assert by_route.key_for("anthropic/claude") == "anthropic"
    shared = RetryBudget(store=store, key="everything")
    assert shared.key_for("a") == shared.key_for("b") == "everything"
    custom = RetryBudget(store=store, key=lambda model, api_base: f"team-a:{model}")
    assert custom.key_for("m") == "team-a:m"
    await by_route.allow("openai/a", api_base="http://h:1/v1")
    assert await by_route.level("openai/b", api_base="http://h:1/v2") == 9.0  # one route
    assert await by_model.level("openai/a") == 10.0  # another key entirely


def test_a_key_function_must_return_a_name():
    """A key callable that returns a non-string is a ConfigError naming what it returned."""
    budget = RetryBudget(key=lambda model, api_base: None)
    with pytest.raises(ConfigError, match="must return a non-empty string, got None"):
        budget.key_for("m")


@pytest.mark.parametrize("kwargs, field", [
    ({"max_tokens": 0}, "max_tokens"), ({"token_ratio": -0.1}, "token_ratio"),
    ({"retry_cost": 0}, "retry_cost"), ({"max_tokens": 1, "token_ratio": 2}, "token_ratio"),
    ({"threshold": 100}, "threshold"), ({"key": ""}, "key"), ({"max_tokens": True}, "max_tokens"),
])
def test_bad_budget_arguments_are_config_errors(kwargs, field):
    """Each bad argument is refused with a ConfigError that names it."""
    with pytest.raises(ConfigError, match=field):
        RetryBudget(**kwargs)


async def test_a_pickled_budget_shares_its_redis_bucket(redis_server):
    """A budget pickles as its spec: the copy (another worker's) draws on the same bucket."""
    store = RedisStore(redis_server.url, prefix="shared:", on_error="raise")
    budget = RetryBudget(max_tokens=4, token_ratio=0.5, key="route", store=store)
    copy = pickle.loads(pickle.dumps(budget))
    assert copy.spec() == budget.spec()
    await budget.allow("openai/x")
    await budget.allow("openai/y")  # same route: the same bucket
    assert not (await copy.allow("openai/z")).allowed
    assert await copy.record("openai/x", ok=True) == 2.5
    assert RetryBudget.from_spec(budget.spec()).threshold == 2.0


# -- CallCap -------------------------------------------------------------------------------------


def _attempt(n: int, tokens_in: int = 0, tokens_out: int = 0, cost: float = 0.0,
             outcome: str = "validation_failed") -> Attempt:
    return Attempt(number=n, start=0.0, end=0.1, outcome=outcome,  # type: ignore[arg-type]
                   tokens_in=tokens_in, tokens_out=tokens_out, cost=cost)


def test_the_first_attempt_is_never_capped():
    """With no attempt yet, nothing is known: the next attempt is allowed."""
    d = CallCap(max_total_tokens=1).check([])
    assert d.allowed and d.next_tokens == 0 and d.answered == 0


def test_the_mean_of_answered_attempts_estimates_the_next():
    """Used 300 + 200 + (a transport error: 0) tokens; the mean of the two answered ones is
    250, so a cap of 750 allows a third attempt (exactly at the cap) and 749 does not."""
    attempts = [_attempt(1, 200, 100), _attempt(2, tokens_in=0, outcome="transport_error"),
                _attempt(3, 150, 50)]
    fits = CallCap(max_total_tokens=750).check(attempts)
    assert (fits.allowed, fits.used_tokens, fits.next_tokens, fits.answered) == (True, 500, 250, 2)
    over = CallCap(max_total_tokens=749).check(attempts)
    assert not over.allowed and over.limit == "tokens" and over.cap == 749


def test_the_last_rule_follows_a_growing_prompt():
    """estimate="last" takes the latest answered attempt (prompts grow with the history)."""
    attempts = [_attempt(1, 100, 10), _attempt(2, 300, 10), _attempt(3, 500, 10)]
    assert CallCap(max_total_tokens=10_000, estimate="last").check(attempts).next_tokens == 510
    assert CallCap(max_total_tokens=10_000).check(attempts).next_tokens == 310


def test_a_cost_cap_ends_the_call_with_a_clear_error():
    """Cost cap: 0.03 used, the next would take about 0.015: 0.04 refuses it, saying so."""
    attempts = [_attempt(1, 10, 10, cost=0.01), _attempt(2, 10, 10, cost=0.02)]
    cap = CallCap(max_total_cost=0.04)
    with pytest.raises(CallCapExceededError) as info:
        cap.enforce(attempts)
    err = info.value
    assert (err.limit, err.reason, err.cap, err.used, err.estimate) == (
        "cost", "cap_cost", 0.04, pytest.approx(0.03), pytest.approx(0.015))
    assert "call cap on cost reached: $0.03 used of $0.04" in str(err)
    assert "the mean of the 2 answered attempts" in str(err)
    assert isinstance(err, RetryError) and len(err.attempts) == 2


def test_validator_calls_count_in_the_use():
    """extra_tokens (an LLMJudge's calls) count towards the cap."""
    attempts = [_attempt(1, 50, 50)]
    assert CallCap(max_total_tokens=250).check(attempts).allowed
    d = CallCap(max_total_tokens=250).check(attempts, extra_tokens=60)
    assert not d.allowed and d.used_tokens == 160
    assert "call cap on tokens reached: 160 used of 250" in str(d.error())


@pytest.mark.parametrize("kwargs, match", [
    ({}, "needs max_total_tokens"), ({"max_total_tokens": 0}, "max_total_tokens"),
    ({"max_total_cost": -1}, "max_total_cost"), ({"max_total_tokens": 5, "estimate": "max"}, "estimate"),
])
def test_bad_caps_are_config_errors(kwargs, match):
    """A cap without a limit, a non-positive limit or an unknown rule is refused by name."""
    with pytest.raises(ConfigError, match=match):
        CallCap(**kwargs)
