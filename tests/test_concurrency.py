"""Concurrency and loop properties: every call ends exactly once; attempts stay bounded."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from retrylib import RetryConfig, RetryError, make_call, retry_with_validation
from retrylib import validators as V

PROMPT = [{"role": "user", "content": "say good"}]
FAULTS = ["503", "429:retry-after-ms=20", "reset", "malformed", "500", "reply:bad", "empty"]


async def test_100_concurrent_calls_with_mixed_faults(chaos_free):
    """100 calls at once, each with its own fault plan: each ends once, nothing lost or doubled."""
    rng = random.Random(5)
    plans = {}
    for i in range(100):
        key = f"c{i}"
        plan = [rng.choice(FAULTS) for _ in range(rng.randint(0, 4))]
        if i % 10 == 0:
            plan.append("401")  # a tenth end in a non-retryable error
        plans[key] = [*plan, "reply:good"]
        chaos_free.set_plan(plans[key], key=key)
    call = make_call("openai/m", api_base=chaos_free.url)
    cfg = RetryConfig(max_attempts=4, initial_delay=0.01, max_delay=0.05, seed=3)

    async def one(key):
        return await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], cfg,
                                           extra_headers={"X-Chaos-Key": key})

    outcomes = await asyncio.gather(*(one(k) for k in plans), return_exceptions=True)
    assert len(outcomes) == 100
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, RetryError)]
    assert not unexpected, unexpected[:3]
    for key, out in zip(plans, outcomes, strict=True):
        attempts = out.attempts
        journal = chaos_free.journal(key)
        assert len(journal) == len(attempts), key  # requests received == calls made
        assert [e["fault"] for e in journal] == plans[key][:len(journal)]
        if not isinstance(out, BaseException):
            assert out.content == "good" and attempts[-1].outcome == "ok"
    ok = sum(not isinstance(o, BaseException) for o in outcomes)
    assert ok + sum(isinstance(o, RetryError) for o in outcomes) == 100
    assert ok >= 50


@given(
    script=st.lists(st.sampled_from(["good", "bad", "reset", "refused", "timeout"]), max_size=12),
    max_attempts=st.integers(1, 8),
)
@settings(max_examples=60, deadline=None)
def test_loop_never_exceeds_max_attempts(script, max_attempts):
    """Whatever happens, the loop calls at most max_attempts times and ends exactly once."""
    calls = []

    async def call(messages, **kw):
        # An in-process callable (retry_with_validation accepts any): a scripted model.
        step = script[len(calls)] if len(calls) < len(script) else "good"
        calls.append(step)
        if step == "reset":
            raise ConnectionResetError("reset by peer")
        if step == "refused":
            raise ConnectionRefusedError("refused")
        if step == "timeout":
            raise TimeoutError("timed out")
        return step

    cfg = RetryConfig(max_attempts=max_attempts, initial_delay=0.0, max_delay=0.0)

    async def run():
        try:
            return await retry_with_validation(call, PROMPT, [V.RegexMatch("^good$")], cfg)
        except RetryError as exc:
            return exc

    out = asyncio.run(run())
    assert 1 <= len(calls) <= max_attempts
    assert len(out.attempts) == len(calls)
    expected_ok = "good" in ([*script, "good"])[:max_attempts]
    assert (not isinstance(out, RetryError)) == expected_ok
