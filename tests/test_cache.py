"""cache: litellm's response cache on the litellm route, and a rejected answer is never served again.

Requests go through the chaos proxy with scripted ``reply:`` faults, so each answer's
content is known and the journal counts what reached the server. litellm writes its cache
in a background task after the call returns; ``settle()`` waits for those writes, so a
test sees the cache as a later call would.
"""

from __future__ import annotations

import asyncio
import json
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import

import litellm
import pytest
from litellm.caching import caching_handler

from retrylib import (
    ConfigError,
    RetryConfig,
    acompletion,
    disable_cache,
    extract_text,
    init_cache,
    make_call,
    retry_with_validation,
)
from retrylib import cache as rcache
from retrylib.extract import is_cache_hit
from retrylib.validators import RegexMatch

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(autouse=True)
def no_cache_outside_the_test():
    """Every test starts and ends with litellm's cache removed."""
    disable_cache()
    yield
    disable_cache()


async def settle() -> None:
    """Wait for litellm's pending background cache writes to land."""
    pending = list(getattr(caching_handler, "_PENDING_CACHE_WRITES", ()))
    if pending:
        await asyncio.wait(pending, timeout=10)


def memory_cache_ids() -> dict[str, str]:
    """``{response id: content}`` of every answer stored in the in-memory cache."""
    out = {}
    for value in litellm.cache.cache.cache_dict.values():
        raw = value.get("response") if isinstance(value, dict) else value
        data = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(data, dict) and data.get("choices"):
            out[data["id"]] = data["choices"][0]["message"]["content"]
    return out


async def ask(url: str, **kw):
    return await acompletion(MESSAGES, model="openai/smollm2", api_base=url, **kw)


def test_unknown_kind_is_config_error():
    """An unknown cache kind is a ConfigError listing the kinds; no cache is installed."""
    with pytest.raises(ConfigError, match=r"unknown cache kind 'sqlite'; use one of \['disk', 'memory', 'redis'\]"):
        init_cache("sqlite")
    assert litellm.cache is None


def test_init_and_disable():
    """init_cache installs litellm's cache and returns it; disable_cache removes it."""
    c = init_cache("memory")
    assert litellm.cache is c and rcache.cache_enabled()
    disable_cache()
    assert litellm.cache is None and not rcache.cache_enabled()


async def test_no_cache_by_default(chaos):
    """Without init_cache, identical requests both reach the server."""
    chaos.set_plan(["reply:red", "reply:blue"])
    r1, r2 = await ask(chaos.url, max_tokens=8), await ask(chaos.url, max_tokens=8)
    assert [extract_text(r1), extract_text(r2)] == ["red", "blue"]
    assert not is_cache_hit(r2)
    assert len(chaos.journal()) == 2


async def test_memory_cache_serves_identical_request(chaos):
    """init_cache('memory'): the second identical request is a cache hit and never reaches the server."""
    init_cache("memory")
    chaos.set_plan(["reply:red", "reply:blue"])
    r1 = await ask(chaos.url, max_tokens=8)
    await settle()
    r2 = await ask(chaos.url, max_tokens=8)
    assert not is_cache_hit(r1)
    assert is_cache_hit(r2)
    assert extract_text(r2) == "red" and r2.id == r1.id
    assert len(chaos.journal()) == 1  # one upstream request for two calls


async def test_disk_cache_serves_identical_request(chaos, tmp_path):
    """init_cache('disk', disk_cache_dir=...): the same, and the entry lands in that folder."""
    init_cache("disk", disk_cache_dir=str(tmp_path))
    chaos.set_plan(["reply:red", "reply:blue"])
    r1 = await ask(chaos.url, max_tokens=8)
    await settle()
    r2 = await ask(chaos.url, max_tokens=8)
    assert is_cache_hit(r2) and extract_text(r2) == "red"
    assert len(chaos.journal()) == 1
    assert any(p.is_file() for p in tmp_path.rglob("*"))  # something was written there
    assert r1.id == r2.id


async def test_different_request_is_not_a_hit(chaos):
    """A request that differs (max_tokens) is a miss and reaches the server."""
    init_cache("memory")
    chaos.set_plan(["reply:red", "reply:blue"])
    await ask(chaos.url, max_tokens=8)
    await settle()
    r2 = await ask(chaos.url, max_tokens=9)
    assert not is_cache_hit(r2) and extract_text(r2) == "blue"
    assert len(chaos.journal()) == 2


async def test_proxy_route_is_not_cached(chaos):
    """The plain-HTTP proxy route never reads litellm's cache."""
    init_cache("memory")
    chaos.set_plan(["reply:red", "reply:blue"])
    r1 = await acompletion(MESSAGES, model="proxy/smollm2", api_base=chaos.url)
    await settle()
    r2 = await acompletion(MESSAGES, model="proxy/smollm2", api_base=chaos.url)
    assert [extract_text(r1), extract_text(r2)] == ["red", "blue"]
    assert len(chaos.journal()) == 2


async def test_rejected_answer_is_never_served_again(chaos):
    """After the loop rejects "bad", the same original request is not answered "bad" from the cache."""
    init_cache("memory")
    chaos.set_plan(["reply:bad", "reply:good", "reply:fresh"])
    call = make_call("openai/smollm2", api_base=chaos.url)
    result = await retry_with_validation(call, MESSAGES, [RegexMatch("good")],
                                         RetryConfig(max_attempts=3, seed=1), max_tokens=8)
    assert result.content == "good"
    assert [a.outcome for a in result.attempts] == ["validation_failed", "ok"]
    await settle()  # any late write of "bad" has landed by now

    again = await call(messages=MESSAGES, max_tokens=8)
    assert extract_text(again) != "bad"
    assert extract_text(again) == "fresh"  # the model was asked afresh
    assert [e["fault"] for e in chaos.journal()] == ["reply:bad", "reply:good", "reply:fresh"]
    assert chaos.journal()[2]["body"]["messages"] == MESSAGES  # the same original request


async def test_reject_evicts_the_cache_entry(chaos):
    """ModelCall stores an answer only once accepted, and reject evicts a served one."""
    init_cache("memory")
    chaos.set_plan(["reply:bad"])
    call = make_call("openai/smollm2", api_base=chaos.url, max_tokens=8, temperature=0)
    resp = await call(messages=MESSAGES)
    await settle()
    assert resp.id not in memory_cache_ids()  # no verdict yet: nothing stored
    assert await call.accept(messages=MESSAGES) is True
    assert memory_cache_ids().get(resp.id) == "bad"  # accepted: stored
    hit = await call(messages=MESSAGES)
    assert is_cache_hit(hit) and extract_text(hit) == "bad"
    assert await call.reject(messages=MESSAGES) is True  # the served answer is now rejected
    await settle()
    assert resp.id not in memory_cache_ids()  # and it is gone
    assert len(chaos.journal()) == 1


async def test_loop_rejection_leaves_no_stale_entry(chaos):
    """Once litellm's background writes land, the cache holds no answer the loop rejected."""
    init_cache("memory")
    chaos.set_plan(["reply:bad", "reply:good"])
    call = make_call("openai/smollm2", api_base=chaos.url)
    result = await retry_with_validation(call, MESSAGES, [RegexMatch("good")],
                                         RetryConfig(max_attempts=3, seed=1))
    await settle()
    stored = memory_cache_ids()
    assert "good" in stored.values()  # the cache works: the accepted answer is there
    assert "bad" not in stored.values(), f"rejected answer still cached: {stored}"
    assert result.content == "good"


async def test_rejected_answer_from_any_cache_is_refetched(chaos):
    """A cached answer whose id was rejected is re-asked with the cache read off, and overwritten."""
    init_cache("memory")
    chaos.set_plan(["reply:bad", "reply:fresh"])
    first = await ask(chaos.url, max_tokens=8)
    await settle()
    # Reject it under a request that does not match its cache key: only the id is remembered,
    # as when the stale entry sits in another process's cache.
    await rcache.reject(first, {"model": "openai/elsewhere", "messages": [{"role": "user", "content": "?"}]})
    assert rcache.was_rejected(first)
    again = await ask(chaos.url, max_tokens=8)
    assert extract_text(again) == "fresh" and not is_cache_hit(again)
    assert len(chaos.journal()) == 2
    await settle()
    assert set(memory_cache_ids().values()) == {"fresh"}  # the stale entry was overwritten


# -- a reject evicts only this call's own entry (issue 16, item 10) -------------------------------

async def test_a_reject_leaves_another_calls_accepted_entry(chaos_free):
    """A's fresh answer is rejected after B accepted and stored its own under the same key:
    B's entry stays and serves the next call (before: A's reject deleted it)."""
    init_cache("memory")
    call = make_call("openai/m", api_base=chaos_free.url, max_tokens=8)
    chaos_free.set_plan(["reply:bad"], "a")
    chaos_free.set_plan(["reply:good"], "b")
    asked_a, asked_b = [dict(m) for m in MESSAGES], [dict(m) for m in MESSAGES]  # two calls' lists
    a = await call(messages=asked_a, extra_headers={"X-Chaos-Key": "a"})
    b = await call(messages=asked_b, extra_headers={"X-Chaos-Key": "b"})
    assert [extract_text(a), extract_text(b)] == ["bad", "good"] and not is_cache_hit(a)
    assert await call.accept(messages=asked_b) is True
    assert await call.reject(messages=asked_a) is False  # nothing of A's was stored
    assert list(memory_cache_ids().values()) == ["good"]
    again = await call(messages=[dict(m) for m in MESSAGES])
    assert is_cache_hit(again) and extract_text(again) == "good"
    assert len(chaos_free.journal()) == 2


async def test_200_concurrent_calls_keep_the_accepted_entry():
    """200 calls at once on one cache and one prompt: 100 get "good" at once and accept it,
    100 get "bad" 0.3 s later and reject it, then go on to pass. Run again, all 200 are served
    from the cache: no reject deleted the entry the others accepted."""
    from retrylib.testing.chaos import ChaosProxy

    init_cache("memory")
    with ChaosProxy(upstream=None, upstream_free=True, fixed_content="bad") as proxy:
        for i in range(200):  # even: good at once; odd: "bad" after 0.3 s, then good
            proxy.set_plan(["reply:good"] if i % 2 == 0 else ["latency:0.3", "reply:good"], f"c{i}")
        call = make_call("openai/m", api_base=proxy.url, max_tokens=8)
        cfg = RetryConfig(max_attempts=3, initial_delay=0)

        async def one(i: int, validators: list) -> object:
            return await retry_with_validation(call, MESSAGES, validators, cfg,
                                               extra_headers={"X-Chaos-Key": f"c{i}"})

        first = await asyncio.gather(*(one(i, [RegexMatch("^good$")]) for i in range(200)))
        # Under load a call can start after an even one accepted "good": it is served from the
        # cache in one attempt and sends nothing. Every other call follows its plan.
        hit = [r.attempts[0].cache_hit for r in first]
        assert all(r.content == "good" for r in first)
        assert [len(r.attempts) for r in first] == [
            1 if hit[i] or i % 2 == 0 else 2 for i in range(200)]
        rejected = sum(a.outcome == "validation_failed" for r in first for a in r.attempts)
        assert rejected == sum(not hit[i] for i in range(1, 200, 2)) > 0
        sent = len(proxy.journal())
        assert sent == sum(not a.cache_hit for r in first for a in r.attempts)
        await settle()
        second = await asyncio.gather(*(one(i, [RegexMatch("^good$")]) for i in range(200)))
        assert all(r.content == "good" and r.attempts[0].cache_hit for r in second)
        assert len(proxy.journal()) == sent  # the second round sent nothing
