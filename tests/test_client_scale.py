"""client: the proxy route holds 1,000 concurrent calls (issue 16, item 1), and an argument no
retry can fix is a ConfigError before any request (item 6).

Real requests to the upstream-free fault proxy on loopback; its journal says what arrived.
No wall-clock limits: the load's speed is measured in ``benchmarks/load.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import math

import httpx
import pytest

from retrylib import ConfigError, RetryConfig, acompletion, make_call, retry_with_validation
from retrylib import validators as V
from retrylib.classify import classify
from retrylib.client import PROXY_URL_ENV
from retrylib.extract import extract_text
from retrylib.pool import (
    LITELLM_CONCURRENCY_ENV,
    POOL_SIZE_ENV,
    TRANSPORT_ENV,
    TRANSPORTS,
    litellm_concurrency,
    pool,
    pool_size,
    transport,
)
from retrylib.testing.local import free_port

PROMPT = [{"role": "user", "content": "Say OK."}]


async def test_1000_concurrent_proxy_calls_all_arrive(chaos_free):
    """1,000 calls at once on the proxy route, each held 0.2 s by the server: all 1,000 are
    answered, and the server never holds more than the pool's size at once (before: 500 at
    once, and with a 20 s timeout 256 calls failed as PoolTimeout in the wait for the pool)."""
    results = await asyncio.gather(*(
        acompletion(PROMPT, model="proxy/m", api_base=chaos_free.url, timeout=60,
                    extra_headers={"X-Chaos-Fault": "latency:0.2", "X-Chaos-Key": f"k{i}"})
        for i in range(1000)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} failed, first: {failed[0]!r}"
    assert all(r["choices"][0]["message"]["content"] == "OK" for r in results)
    journal = chaos_free.journal()
    assert len(journal) == 1000 and len({e["key"] for e in journal}) == 1000
    assert _max_overlap(journal) <= pool_size()


def _max_overlap(journal: list[dict]) -> int:
    """The most requests the proxy was serving at one instant (from arrivals and durations)."""
    events = sorted(itertools.chain.from_iterable(
        ((e["monotonic"], 1), (e["monotonic"] + e["duration"], -1)) for e in journal),
        key=lambda ev: (ev[0], ev[1]))
    return max(itertools.accumulate(d for _, d in events))


@pytest.mark.parametrize(("model", "env"), [("proxy/m", POOL_SIZE_ENV),
                                            ("openai/m", LITELLM_CONCURRENCY_ENV)])
async def test_the_wait_for_a_slot_is_not_part_of_the_request(chaos_free, monkeypatch, model, env):
    """A gate of 2 on either route, six requests that take 0.6 s each, timeout 1 s: the last
    ones wait 1.2 s for a slot, yet none times out, and at most 2 are in flight at once."""
    monkeypatch.setenv(env, "2")  # read when this test's event loop makes its gate
    chaos_free.set_plan(["latency:0.6"] * 6)
    call = make_call(model, api_base=chaos_free.url)
    await call(messages=PROMPT, extra_headers={"X-Chaos-Key": "warm"})  # litellm's first call is slow
    replies = await asyncio.gather(*(call(messages=PROMPT, timeout=1.0) for _ in range(6)))
    assert [extract_text(r) for r in replies] == ["OK"] * 6
    journal = chaos_free.journal("")
    assert len(journal) == 6 and _max_overlap(journal) <= 2
    # The slot waits show on the wire: the last pair arrived after two rounds of 0.6 s.
    arrivals = sorted(e["monotonic"] for e in journal)
    assert arrivals[-1] - arrivals[0] >= 2 * 0.6 - 0.05


async def test_the_loop_does_not_count_the_slot_wait_against_attempt_timeout(chaos_free, monkeypatch):
    """The same through retry_with_validation(attempt_timeout=1): every call's one attempt is ok."""
    monkeypatch.setenv(POOL_SIZE_ENV, "2")
    chaos_free.set_plan(["latency:0.6"] * 6)
    call = make_call("proxy/m", api_base=chaos_free.url)
    assert call.bounds_attempt
    cfg = RetryConfig(max_attempts=1, attempt_timeout=1.0)
    results = await asyncio.gather(*(retry_with_validation(call, PROMPT, [V.ResponseNotEmpty()], cfg)
                                     for _ in range(6)), return_exceptions=True)
    assert all(not isinstance(r, BaseException) and r.attempts[0].outcome == "ok" for r in results)


async def test_the_attempt_timeout_still_ends_a_request_that_hangs(chaos_free):
    """Once its slot is held, a request that gets no answer ends at the timeout, as a retryable
    timeout, and the retry goes through."""
    chaos_free.set_plan(["hang:5", "pass"])
    call = make_call("proxy/m", api_base=chaos_free.url)
    result = await retry_with_validation(call, PROMPT, [V.ResponseNotEmpty()],
                                         RetryConfig(max_attempts=2, attempt_timeout=0.5, initial_delay=0))
    first = result.attempts[0]
    assert first.outcome == "transport_error" and first.retryable and "Timeout" in first.error_type
    assert result.content == "OK" and len(chaos_free.journal()) == 2


FAULTS = [("429:retry-after=2", "ProxyHTTPError", "HTTP 429"),
          ("reset", "RemoteProtocolError", "connection closed mid-response"),
          ("malformed", "MalformedResponseError", "malformed response body"),
          ("truncated", "MalformedResponseError", "malformed response body"),
          ("hang", "ReadTimeout", "timeout")]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_both_transports_fail_alike(chaos_free, monkeypatch, transport):
    """httpx and aiohttp: each fault is the same exception class, classified the same, and a
    refused connection is httpx.ConnectError with ConnectionRefusedError beneath."""
    monkeypatch.setenv(TRANSPORT_ENV, transport)
    for fault, cls, reason in FAULTS:
        with pytest.raises(Exception) as info:
            await acompletion(PROMPT, model="proxy/m", api_base=chaos_free.url, timeout=0.5,
                              extra_headers={"X-Chaos-Fault": fault})
        verdict = classify(info.value)
        assert (type(info.value).__name__, verdict.reason, verdict.retryable) == (cls, reason, True), fault
    assert classify(info.value).retry_after is None
    with pytest.raises(httpx.ConnectError) as refused:
        await acompletion(PROMPT, model="proxy/m", api_base=f"http://127.0.0.1:{free_port()}/v1")
    assert classify(refused.value).reason == "connection refused"
    ok = await acompletion(PROMPT, model="proxy/m", api_base=chaos_free.url)
    assert ok["choices"][0]["message"]["content"] == "OK"
    assert pool().transport == transport
    assert [e["fault"] for e in chaos_free.journal()] == [f for f, _, _ in FAULTS] + ["pass"]


def test_an_unknown_transport_is_a_config_error(monkeypatch):
    """$RETRYLIB_PROXY_TRANSPORT must name httpx or aiohttp."""
    monkeypatch.setenv(TRANSPORT_ENV, "curl")
    with pytest.raises(ConfigError, match=TRANSPORT_ENV):
        transport()


@pytest.mark.parametrize("raw", ["0", "-3", "many", "20000"])
def test_a_bad_pool_size_is_a_config_error(monkeypatch, raw):
    """$RETRYLIB_PROXY_POOL_SIZE and $RETRYLIB_LITELLM_CONCURRENCY must be whole numbers from
    1 to 10,000; the error names the variable."""
    monkeypatch.setenv(POOL_SIZE_ENV, raw)
    monkeypatch.setenv(LITELLM_CONCURRENCY_ENV, raw)
    with pytest.raises(ConfigError, match=POOL_SIZE_ENV):
        pool_size()
    with pytest.raises(ConfigError, match=LITELLM_CONCURRENCY_ENV):
        litellm_concurrency()


# -- errors that retrying cannot fix (item 6) ------------------------------------------------------

@pytest.mark.parametrize("model", ["proxy/m", "openai/m"])
@pytest.mark.parametrize("api_base", ["localhost:1/v1", "127.0.0.1:8080", "ftp://127.0.0.1/v1",
                                      "http:///v1", 8080])
def test_api_base_without_a_scheme_is_a_config_error_at_make_call(model, api_base):
    """An api_base that is not an http(s) URL with a host fails at make_call, naming api_base."""
    with pytest.raises(ConfigError, match="api_base") as info:
        make_call(model, api_base=api_base)
    assert model in str(info.value)


@pytest.mark.parametrize("model", ["proxy/m", "openai/m"])
async def test_bad_api_base_in_acompletion_sends_nothing(chaos_free, model):
    """acompletion with api_base 'localhost:<port>/v1' (the proxy's own port) raises ConfigError;
    the proxy, listening on that port, receives nothing."""
    with pytest.raises(ConfigError, match="api_base"):
        await acompletion(PROMPT, model=model, api_base=f"localhost:{chaos_free.port}/v1")
    assert chaos_free.journal() == []


def test_proxy_model_without_a_base_url_is_a_config_error_at_make_call(monkeypatch):
    """proxy/m with neither api_base nor $RETRYLIB_PROXY_URL fails at once, naming both."""
    monkeypatch.delenv(PROXY_URL_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"api_base= or \$RETRYLIB_PROXY_URL"):
        make_call("proxy/m")


def test_a_bad_proxy_url_in_the_environment_is_named(monkeypatch):
    """$RETRYLIB_PROXY_URL without a scheme is refused like a bad api_base."""
    monkeypatch.setenv(PROXY_URL_ENV, "localhost:1/v1")
    with pytest.raises(ConfigError, match="localhost:1/v1"):
        make_call("proxy/m")


@pytest.mark.parametrize("timeout", [math.inf, float("nan"), 0, -1, "5", True])
@pytest.mark.parametrize("model", ["proxy/m", "openai/m"])
def test_a_timeout_that_is_not_finite_is_a_config_error_at_make_call(model, timeout):
    """make_call(timeout=inf) is refused at once (it became a retried "Connection error")."""
    with pytest.raises(ConfigError, match="timeout") as info:
        make_call(model, api_base="http://127.0.0.1:1/v1", timeout=timeout)
    assert model in str(info.value)


@pytest.mark.parametrize("model", ["proxy/m", "openai/m"])
async def test_a_per_call_timeout_of_inf_ends_the_call_with_config_error(chaos_free, model):
    """timeout=inf given per call: ConfigError after one attempt, nothing on the wire."""
    call = make_call(model, api_base=chaos_free.url)
    with pytest.raises(ConfigError, match="timeout"):
        await retry_with_validation(call, PROMPT, None, RetryConfig(max_attempts=3),
                                    timeout=math.inf)
    assert chaos_free.journal() == []
