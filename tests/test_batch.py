"""retrylib.batch: many calls with bounded concurrency, one row per call, a call's failure
never the batch's; and the same batch on a real Dask LocalCluster (2 worker processes)
against the upstream-free fault proxy, the workers sharing the loop's budget and breaker
(``config.budget``, ``config.breaker``) in a real Redis."""

from __future__ import annotations

import asyncio
import sys

import pytest

from retrylib import RetryConfig, RetryResult
from retrylib import validators as V
from retrylib.batch import BatchRow, batch_summary, rows_frame, run_batch, run_batch_sync
from retrylib.breaker import CircuitBreaker
from retrylib.budget import RetryBudget
from retrylib.client import make_call
from retrylib.errors import ConfigError
from retrylib.state import RedisStore
from retrylib.testing import ScriptedCall, http_error, reply, set_testing
from retrylib.validators.base import ValidationResult

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _no_sleeps():
    """No backoff sleeps: the batch is about rows, not about waiting."""
    with set_testing(True):
        yield


async def test_one_row_per_call_in_order_whatever_each_call_did():
    """ok, exhausted, non-retryable, human and a broken call each become their row, in
    input order, with their attempts, stage and error; the batch itself never raises."""
    calls = [
        {"call": ScriptedCall([http_error(503), '{"a": 1}']), "validators": [V.JsonObject()]},
        {"call": ScriptedCall([http_error(503)] * 3)},
        {"call": ScriptedCall([http_error(401)])},
        {"call": ScriptedCall(["no", "nope"]), "validators": [V.JsonObject()],
         "config": RetryConfig(max_attempts=3, max_attempts_before_human=2)},
        {"call": ScriptedCall(["x"]), "config": "not a RetryConfig"},
    ]
    rows = await run_batch(calls, messages=HI, config=RetryConfig(max_attempts=3), progress=False)
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert [r.outcome for r in rows] == ["ok", "exhausted", "non_retryable", "human", "error"]
    assert [r.attempts for r in rows[:4]] == [2, 3, 1, 2]
    assert (rows[0].content, rows[0].parsed, rows[0].error_type) == ('{"a": 1}', {"a": 1}, None)
    assert (rows[1].reason, rows[1].error_type) == ("max_attempts", "RetryExhaustedError")
    assert rows[2].reason == "not_retryable:http_401" and "401" in (rows[2].error or "")
    assert (rows[3].reason, rows[3].stage_reached) == ("human", "human")
    assert rows[4].error_type is not None and rows[4].content is None
    assert all(isinstance(r, BatchRow) and r.latency >= 0 for r in rows)


async def test_concurrency_is_bounded():
    """12 calls with concurrency=3: never more than 3 in flight, and 3 at the peak."""
    in_flight = peak = 0

    async def slow(messages, **kw):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return "ok"

    rows = await run_batch([HI] * 12, call=slow, concurrency=3, progress=False)
    assert peak == 3 and [r.outcome for r in rows] == ["ok"] * 12


async def test_shared_keywords_reach_every_call_and_an_items_own_win():
    """temperature=0.5 is shared; the item that sets 0.9 sends 0.9; both went over the call."""
    call = ScriptedCall(["a", "b"])
    await run_batch([{"messages": HI}, {"messages": HI, "temperature": 0.9}], call=call,
                    temperature=0.5, concurrency=1, progress=False)
    assert [r.kwargs["temperature"] for r in call.requests] == [0.5, 0.9]


async def test_malformed_items_are_refused_before_any_call():
    """An item that is not a dict or messages, or lacks call/messages, is a ConfigError naming
    its index, and no call was made."""
    call = ScriptedCall(["never"])
    with pytest.raises(ConfigError, match=r"calls\[1\] must be a dict"):
        await run_batch([HI, 42], call=call, progress=False)
    with pytest.raises(ConfigError, match=r"calls\[0\] has no call"):
        await run_batch([HI], progress=False)
    with pytest.raises(ConfigError, match="concurrency"):
        await run_batch([HI], call=call, concurrency=0, progress=False)
    assert call.requests == []


async def test_the_progress_bar_counts_the_outcomes(capsys):
    """With progress on (tqdm installed), the bar reaches 3/3 and shows each outcome's count."""
    await run_batch([HI] * 3, call=ScriptedCall(["ok", "ok", http_error(401)]), progress=True,
                    desc="probe")
    err = capsys.readouterr().err
    assert "probe" in err and "3/3" in err and "ok=2" in err and "non_retryable=1" in err


def test_the_sync_wrapper_and_the_summary():
    """run_batch_sync from plain code; batch_summary counts outcomes and requests per call;
    rows_frame has one row per call."""
    rows = run_batch_sync([HI] * 4, call=ScriptedCall([http_error(503), "a", "b", "c", "d"]),
                          concurrency=1, progress=False)
    s = batch_summary(rows)
    assert (s["calls"], s["outcomes"], s["api_calls"], s["requests_per_call"]) == (4, {"ok": 4}, 5, 1.25)
    frame = rows_frame(rows)
    assert list(frame["attempts"]) == [2, 1, 1, 1] and "stage_reached" in frame.columns


# -- Dask --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    """A real LocalCluster: 2 worker processes, one thread each; this module pickles by value
    (the workers cannot import the test module)."""
    import cloudpickle
    from distributed import Client, LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_dask_batch_runs_on_two_workers_against_the_fault_proxy(dask_client, chaos_free):
    """40 calls over the proxy route, one in four first answered 503: every call succeeds,
    the rows come from both worker processes, and the proxy received exactly the requests
    the rows account for."""
    from retrylib.batch import run_batch_dask

    calls = []
    for i in range(40):
        chaos_free.set_plan("503" if i % 4 == 0 else None, key=f"ok{i}")
        calls.append({"messages": HI, "extra_headers": {"X-Chaos-Key": f"ok{i}"}})
    rows = run_batch_dask(calls, client=dask_client, call=make_call("proxy/m", api_base=chaos_free.url),
                          config=RetryConfig(max_attempts=3, initial_delay=0.01), progress=False)
    assert [r.index for r in rows] == list(range(40))
    assert all(r.outcome == "ok" for r in rows)
    assert [r.attempts for r in rows] == [2 if i % 4 == 0 else 1 for i in range(40)]
    assert len({r.worker for r in rows}) == 2
    assert len(chaos_free.journal()) == sum(r.api_calls for r in rows) == 50


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dask_workers_share_the_loops_budget_and_breaker_in_redis(dask_client, chaos_free, redis_server):
    """100 % upstream failure, 40 calls of up to 4 attempts on 2 worker processes, gated by the
    retry loop itself: ``config.budget`` (10 tokens, retries need > 5) and ``config.breaker``,
    both in one Redis. The proxy receives 40 first attempts and exactly 5 retries in all
    (45 / 40 = 1.125 ≤ 1.2), the breaker counted every worker's failures, and every call has
    exactly one row, which accounts for its requests."""
    from retrylib.batch import run_batch_dask

    store = RedisStore(redis_server.url, prefix="dask:", on_error="raise")
    budget = RetryBudget(max_tokens=10, token_ratio=0.5, store=store)
    breaker = CircuitBreaker(failure_threshold=1000, cooldown=60, store=store)
    calls = []
    for i in range(40):
        chaos_free.set_plan(["503"] * 10, key=f"dead{i}")
        calls.append({"messages": HI, "extra_headers": {"X-Chaos-Key": f"dead{i}"}})
    rows = run_batch_dask(calls, client=dask_client, call=make_call("proxy/dead", api_base=chaos_free.url),
                          chunk_size=5, concurrency=5, progress=False,
                          config=RetryConfig(max_attempts=4, initial_delay=0.01, budget=budget,
                                             breaker=breaker))
    journal = chaos_free.journal()
    assert sorted(r.index for r in rows) == list(range(40)) and len(rows) == 40
    assert len({r.worker for r in rows}) == 2 and "lost" not in {r.worker for r in rows}
    assert {r.outcome for r in rows} <= {"budget", "exhausted"}
    assert sum(r.outcome == "budget" for r in rows) >= 35
    assert len(journal) == sum(r.api_calls for r in rows) == 45
    assert sum(r.attempts - 1 for r in rows) == 5  # the retries, from both workers together
    assert len({e["key"] for e in journal}) == 40

    async def shared() -> tuple[float, int]:
        try:
            return await budget.level("proxy/dead"), (await breaker.state("proxy/dead")).failures
        finally:
            await store.aclose()

    assert asyncio.run(shared()) == (5.0, 45)


def test_a_dask_batch_warns_about_gates_on_a_memory_store():
    """A budget or breaker on a MemoryStore, given as a keyword or inside config=, would not be
    shared by the chunks of a Dask batch: each is named in a warning; a RedisStore is not."""
    from loguru import logger

    from retrylib.batch import _warn_local_state

    seen: list[str] = []
    handler = logger.add(lambda m: seen.append(str(m)), level="WARNING", format="{message}")
    try:
        _warn_local_state({"config": RetryConfig(budget=RetryBudget(), breaker=CircuitBreaker())})
        _warn_local_state({"breaker": CircuitBreaker(),
                           "budget": RetryBudget(store=RedisStore("redis://127.0.0.1:1/0"))})
    finally:
        logger.remove(handler)
    assert [m.split(" keeps")[0] for m in seen] == [
        "run_batch_dask: config.budget", "run_batch_dask: config.breaker", "run_batch_dask: breaker="]
    assert all("each chunk" in m for m in seen)


class PaidCheck:
    """A validator that makes a model call of its own (as LLMJudge does), recorded in the
    context's subresults: 7 tokens and $0.25 each time it runs; passes "ok" only."""

    def validate(self, text, context):
        context.subresults.append(RetryResult(content="", response=None, metrics={
            "total_api_calls": 1, "tokens_in": 5, "tokens_out": 2, "cost": 0.25}))
        return ValidationResult.ok() if text == "ok" else ValidationResult.fail("say ok")


async def test_a_rows_use_includes_its_validators_calls():
    """A call whose validator paid for two calls of its own: the row's tokens and cost hold
    the validator's (its attempts cost nothing here), and so do its api_calls."""
    call = ScriptedCall([reply("no", tokens=(3, 1)), reply("ok", tokens=(3, 1))])
    rows = await run_batch([HI], call=call, validators=[PaidCheck()], progress=False)
    r = rows[0]
    assert (r.outcome, r.attempts, r.api_calls) == ("ok", 2, 4)
    assert (r.tokens_in, r.tokens_out, r.cost) == (6 + 10, 2 + 4, 0.5)
