"""The retry loop against real servers: transport retries, feedback, escalation, stages.

Every call goes over real HTTP to the fault proxy (scripted replies) or through it to the
embedded model; assertions read the proxy's journal, i.e. what actually went over the wire.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import pickle
import time

import litellm
import pytest
from pydantic import BaseModel

from retrylib import (
    FallbackModel,
    HumanReviewNeededError,
    NonRetryableError,
    RetryConfig,
    RetryError,
    RetryExhaustedError,
    backoff_schedule,
    make_call,
    retry_with_validation,
    retry_with_validation_sync,
)
from retrylib import validators as V
from retrylib.hooks import install

PROMPT = [{"role": "user", "content": "Reply with the word good."}]
TOOL_MCP = {"mcpServers": {"debugger": {"command": "mcp-debugger", "args": ["--stdio"]}}}


class Person(BaseModel):
    name: str
    age: int


def fast(**kw) -> RetryConfig:
    return RetryConfig(**{"initial_delay": 0.0, "max_delay": 0.0, **kw})


def last_user(body: dict) -> str:
    return [m for m in body["messages"] if m["role"] == "user"][-1]["content"]


async def test_503_503_pass_follows_seeded_schedule(chaos, local_model):
    """503, 503, then pass: 3 requests on the wire and the sleeps follow the seeded schedule."""
    chaos.set_plan("503,503,pass")
    cfg = RetryConfig(max_attempts=4, initial_delay=0.3, backoff_factor=2, max_delay=2,
                      jitter="full", seed=42)
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=16)
    result = await retry_with_validation(call, PROMPT, [V.ResponseNotEmpty()], cfg,
                                         call_key="seeded-503s")
    journal = chaos.journal()
    assert [e["fault"] for e in journal] == ["503", "503", "pass"]
    assert [a.outcome for a in result.attempts] == ["transport_error", "transport_error", "ok"]
    assert result.metrics["call_key"] == "seeded-503s"
    schedule = backoff_schedule(cfg, key="seeded-503s")
    for attempt, planned in zip(result.attempts[1:], schedule, strict=False):
        assert attempt.scheduled_delay == planned
        assert planned <= attempt.slept <= planned + 0.05 + 0.1 * planned
    gaps = [b["monotonic"] - a["monotonic"] for a, b in itertools.pairwise(journal)]
    assert all(g >= s for g, s in zip(gaps, schedule, strict=False))
    assert result.metrics["api_calls"] == 3 and result.metrics["transport_errors"] == 2


@pytest.mark.parametrize("fault,minimum", [
    ("429:retry-after=1", 1.0),
    ("429:retry-after-ms=700", 0.7),
    ("429:retry-after-date=2", 0.9),  # an HTTP date has 1-second resolution
])
async def test_retry_after_is_honoured(chaos_free, fault, minimum):
    """A 429 with Retry-After (seconds, ms, HTTP date): the next attempt waits at least that."""
    chaos_free.set_plan([fault, "reply:good"])
    call = make_call("openai/m", api_base=chaos_free.url)
    cfg = RetryConfig(max_attempts=3, initial_delay=0.01, max_delay=0.05, seed=1)
    result = await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], cfg)
    j = chaos_free.journal()
    assert len(j) == 2
    assert result.attempts[1].retry_after is not None
    assert result.attempts[1].slept >= minimum
    assert j[1]["monotonic"] - j[0]["monotonic"] >= minimum


async def test_401_is_not_retried(chaos_free):
    """A 401 ends the call after exactly one request, with the status and the cause."""
    chaos_free.set_plan("401,401,401")
    call = make_call("openai/m", api_base=chaos_free.url)
    with pytest.raises(NonRetryableError) as info:
        await retry_with_validation(call, PROMPT, [], fast(max_attempts=5))
    assert len(chaos_free.journal()) == 1
    assert info.value.status_code == 401
    assert isinstance(info.value.__cause__, litellm.AuthenticationError)
    assert len(info.value.attempts) == 1


async def test_x_should_retry_overrides_the_table(chaos_free):
    """x-should-retry: false stops a 503; x-should-retry: true retries a 400."""
    call = make_call("openai/m", api_base=chaos_free.url)
    chaos_free.set_plan("503:x-should-retry=false", key="a")
    with pytest.raises(NonRetryableError):
        await retry_with_validation(call, PROMPT, [], fast(max_attempts=3),
                                    extra_headers={"X-Chaos-Key": "a"})
    assert len(chaos_free.journal("a")) == 1
    chaos_free.set_plan(["400:x-should-retry=true", "reply:good"], key="b")
    result = await retry_with_validation(call, PROMPT, [], fast(max_attempts=3),
                                         extra_headers={"X-Chaos-Key": "b"})
    assert result.content == "good" and len(chaos_free.journal("b")) == 2


async def test_retry_after_beyond_patience_ends_the_call(chaos_free):
    """A server asking for a wait beyond max_retry_after ends the call without sleeping."""
    chaos_free.set_plan("429:retry-after=30")
    call = make_call("openai/m", api_base=chaos_free.url)
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], RetryConfig(max_attempts=3, max_retry_after=5))
    assert info.value.reason == "retry_after"
    assert time.monotonic() - t < 5
    assert len(chaos_free.journal()) == 1
    assert info.value.last_error["status_code"] == 429


async def test_deadline_is_never_slept_past(chaos_free):
    """A backoff that would cross the deadline ends the call before it sleeps."""
    chaos_free.set_plan("503,503,503,503,503")
    call = make_call("openai/m", api_base=chaos_free.url)
    cfg = RetryConfig(max_attempts=5, initial_delay=0.4, backoff_factor=2, max_delay=5,
                      jitter="none", deadline=1.0)
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], cfg)
    elapsed = time.monotonic() - t
    assert info.value.reason == "deadline"
    assert elapsed < 1.0
    assert len(chaos_free.journal()) == 2  # 0.4 s slept, then 0.8 s would pass the deadline


async def test_deadline_bounds_a_hanging_call(chaos_free):
    """A hanging server cannot hold the call past its deadline."""
    chaos_free.set_plan("hang")
    call = make_call("openai/m", api_base=chaos_free.url)
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], fast(max_attempts=3, deadline=1.0))
    assert info.value.reason == "deadline"
    assert time.monotonic() - t < 3.0


async def test_feedback_carries_errors_and_original_prompt(chaos_free):
    """The re-ask holds the failed answer, every error numbered, and the original prompt."""
    chaos_free.set_plan(["reply:not json at all", 'reply:{"name": "Ann", "age": 3}'])
    call = make_call("openai/m", api_base=chaos_free.url)
    messages = [{"role": "system", "content": "JSON only."},
                {"role": "user", "content": "Describe Ann, age 3, as JSON."}]
    before = copy.deepcopy(messages)
    cfg = fast(max_attempts=3, original_user_prompt="Describe Ann, age 3, as JSON.")
    result = await retry_with_validation(call, messages, [V.PydanticSchema(Person)], cfg)
    assert messages == before  # the caller's list and dicts are untouched
    assert isinstance(result.parsed, Person) and result.parsed.age == 3
    sent = chaos_free.journal()[1]["body"]["messages"]
    assert sent[:2] == before
    assert sent[2] == {"role": "assistant", "content": "not json at all"}
    feedback = sent[3]["content"]
    assert sent[3]["role"] == "user"
    assert "1. " in feedback and "JSON" in feedback
    assert "Describe Ann, age 3, as JSON." in feedback
    assert "cut off" not in feedback and result.attempts[0].finish_reason == "stop"
    assert result.attempts[0].validation_errors


async def test_feedback_lists_several_errors(chaos_free):
    """Several failing checks give several numbered errors in one feedback message."""
    chaos_free.set_plan(["reply:{}", 'reply:{"name": "x", "age": 1}'])
    call = make_call("openai/m", api_base=chaos_free.url)
    await retry_with_validation(call, PROMPT, [V.FieldsPresent(["name", "age"])], fast(max_attempts=2))
    feedback = last_user(chaos_free.journal()[1]["body"])
    assert "1. " in feedback and "2. " in feedback
    assert "name" in feedback and "age" in feedback


@pytest.mark.parametrize("policy,extra", [("full", 6), ("last", 2)])
async def test_feedback_history_policy(chaos_free, policy, extra):
    """`full` resends every failed answer; `last` only the latest, bounding growth."""
    chaos_free.set_plan(["reply:bad1", "reply:bad2", "reply:bad3", "reply:good"])
    call = make_call("openai/m", api_base=chaos_free.url)
    cfg = fast(max_attempts=4, feedback_history=policy)
    await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], cfg)
    sent = chaos_free.journal()[3]["body"]["messages"]
    assert len(sent) == len(PROMPT) + extra
    answers = [m["content"] for m in sent if m["role"] == "assistant"]
    assert answers == (["bad1", "bad2", "bad3"] if policy == "full" else ["bad3"])


async def test_staged_escalation_n2_m4(chaos_free):
    """N=2, M=4: attempts 1-2 plain, 3-4 carry the tool and its MCP config, then a human."""
    chaos_free.set_plan(["reply:bad"] * 6)
    call = make_call("openai/m", api_base=chaos_free.url)
    cfg = fast(max_attempts=6, max_attempts_before_tool_use=2, max_attempts_before_human=4,
               debug_tool_name="json-debugger", debug_tool_mcp_config=TOOL_MCP)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], cfg)
    journal = chaos_free.journal()
    assert len(journal) == 4  # the 4th failure raises instead of calling again
    assert [("mcp_config" in e["body"]) for e in journal] == [False, False, True, True]
    assert all(e["body"]["mcp_config"] == TOOL_MCP for e in journal[2:])
    assert ["json-debugger" in last_user(e["body"]) for e in journal] == [False, False, True, True]
    exc = info.value
    assert [a.stage for a in exc.attempts] == ["normal", "normal", "tool", "tool"]
    assert [a.mcp_config_sent for a in exc.attempts] == [False, False, True, True]
    assert [a.tool_suggested for a in exc.attempts] == [False, False, True, True]
    assert exc.metrics["stage_reached"] == "human"


async def test_human_review_error_carries_the_story(chaos_free):
    """HumanReviewNeededError holds attempts, last messages, response, errors, config; it pickles."""
    chaos_free.set_plan(["reply:nope", "reply:still nope"])
    call = make_call("openai/m", api_base=chaos_free.url)
    cfg = fast(max_attempts=3, max_attempts_before_human=2, original_user_prompt="say good")
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], cfg)
    exc = info.value
    assert len(exc.attempts) == 2
    assert exc.messages == chaos_free.journal()[1]["body"]["messages"]
    assert exc.last_text == "still nope"
    assert exc.validation_errors and "good" in " ".join(exc.validation_errors)
    assert exc.config["max_attempts_before_human"] == 2
    assert exc.reason == "human" and "2 answers failed validation" in str(exc)
    assert "#2" in exc.summary()
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is HumanReviewNeededError
    assert clone.messages == exc.messages and clone.attempts == exc.attempts
    assert clone.config == exc.config and clone.reason == exc.reason
    assert clone.last_response is not None


async def test_exhaustion_without_human_threshold(chaos_free):
    """With no human stage, running out of attempts is RetryExhaustedError with the errors."""
    chaos_free.set_plan(["reply:bad"] * 3)
    call = make_call("openai/m", api_base=chaos_free.url)
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], fast(max_attempts=3))
    assert info.value.reason == "max_attempts"
    assert len(info.value.attempts) == 3 == len(chaos_free.journal())
    assert info.value.metrics["validation_failures"] == 3


async def test_cancel_during_backoff_ends_at_once(chaos_free):
    """Cancelling while the loop sleeps ends the call at once; no further request is made."""
    chaos_free.set_plan("503,503,503")
    call = make_call("openai/m", api_base=chaos_free.url)
    task = asyncio.create_task(retry_with_validation(
        call, PROMPT, [], RetryConfig(max_attempts=3, initial_delay=10, max_delay=10, jitter="none")))
    for _ in range(100):
        if chaos_free.journal():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    t = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t < 1.0
    await asyncio.sleep(0.2)
    assert len(chaos_free.journal()) == 1


async def test_unknown_shape_is_a_failed_validation(chaos_free):
    """A reply with no choices is treated as an empty response and re-asked, not a crash."""
    chaos_free.set_plan(["wrong_shape", "reply:good"])
    call = make_call("proxy/m", api_base=chaos_free.url)
    result = await retry_with_validation(call, PROMPT, [V.ResponseNotEmpty()], fast(max_attempts=3))
    first = result.attempts[0]
    assert first.outcome == "validation_failed"
    assert "empty response" in first.validation_errors[0]
    assert result.content == "good"


async def test_transport_faults_recover(chaos_free):
    """Reset, malformed and truncated bodies are retried and the call recovers."""
    chaos_free.set_plan(["reset", "malformed", "truncated", "reply:good"])
    call = make_call("openai/m", api_base=chaos_free.url)
    result = await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], fast(max_attempts=5))
    assert result.content == "good"
    assert [a.outcome for a in result.attempts[:3]] == ["transport_error"] * 3
    assert len(chaos_free.journal()) == 4


async def test_real_model_fails_then_passes_after_feedback(chaos, local_model):
    """SmolLM2 fails the schema, then passes on the re-ask that carries the feedback.

    Plain feedback rarely repairs a 135M model (measured: 1 run in 10), so the re-ask also
    switches on the constrained stage; the feedback it carries is checked on the wire.
    """
    chaos.set_plan(["pass", "pass"])
    # Greedy: a sampled answer depends on what earlier tests asked the shared server.
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=60,
                     temperature=0)
    messages = [{"role": "user", "content": "Write one sentence about a cat named Tom who is 4."}]
    cfg = fast(max_attempts=2, max_attempts_before_constrained=1,
               original_user_prompt=messages[0]["content"])
    result = await retry_with_validation(call, messages, [V.PydanticSchema(Person)], cfg)
    assert [a.outcome for a in result.attempts] == ["validation_failed", "ok"]
    assert isinstance(result.parsed, Person)
    second = chaos.journal()[1]["body"]["messages"]
    assert second[-2] == {"role": "assistant", "content": result.attempts[0].text}
    assert "did not pass validation" in second[-1]["content"]
    assert messages[0]["content"] in second[-1]["content"]


async def test_constrained_stage_on_the_wire(chaos, local_model):
    """From the K-th failure on, requests carry the schema as response_format; never before."""
    chaos.set_plan(["reply:nope", "reply:nope again", "pass", "pass"])
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=60)
    cfg = fast(max_attempts=4, max_attempts_before_constrained=2)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    journal = chaos.journal()
    formats = [e["body"].get("response_format") for e in journal]
    assert formats[:2] == [None, None]
    assert all(f == {"type": "json_object", "schema": Person.model_json_schema()} for f in formats[2:])
    assert [a.stage for a in result.attempts][:3] == ["normal", "normal", "constrained"]
    assert result.attempts[2].constrained and not result.attempts[1].constrained
    assert isinstance(result.parsed, Person)


async def test_constrained_stage_sends_only_a_grammar_safe_schema(chaos, local_model):
    """An escaped pattern (it crashes llama.cpp's grammar) is sent rewritten; the server lives."""
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": r"^\d{3}$"}},
              "required": ["code"]}
    chaos.set_plan(["reply:nope", "pass"])
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=30)
    cfg = fast(max_attempts=2, max_attempts_before_constrained=1)
    try:
        await retry_with_validation(call, PROMPT, [V.JsonSchema(schema)], cfg)
    except RetryError:
        pass  # the model may miss the pattern; what matters is what was sent and the server
    sent = chaos.journal()[1]["body"]["response_format"]["schema"]
    assert sent["properties"]["code"]["pattern"] == "^[0-9]{3}$"
    assert local_model.alive()


async def test_rejected_schema_degrades_cleanly(chaos, local_model):
    """A route that refuses the schema form: the stage is skipped, recorded, and the call goes on."""
    chaos.set_plan(["reply:nope", "pass", "reply:{\"name\": \"A\", \"age\": 1}"])
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=40)
    cfg = fast(max_attempts=4, max_attempts_before_constrained=1, constrained_format="openai")
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    journal = chaos.journal()
    assert journal[1]["body"]["response_format"]["type"] == "json_schema"
    assert journal[1]["status"] >= 400  # llama.cpp's server refuses OpenAI's form
    assert "response_format" not in journal[2]["body"]
    second = result.attempts[1]
    assert second.outcome == "transport_error" and "constrained stage skipped" in second.note
    assert "constrained stage skipped" in (result.attempts[2].note or "")
    assert result.parsed == Person(name="A", age=1)


async def test_fallback_stage_switches_model(chaos_free):
    """After F failures the next model of fallback_models is asked, as the journal shows."""
    chaos_free.set_plan(["reply:bad", "reply:bad", "reply:good"])
    call = make_call("openai/primary", api_base=chaos_free.url)
    cfg = fast(max_attempts=3, max_attempts_before_fallback=1, fallback_models=[
        FallbackModel(model="openai/second", api_base=chaos_free.url),
        FallbackModel(model="openai/third", api_base=chaos_free.url)])
    result = await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], cfg)
    assert [e["body"]["model"] for e in chaos_free.journal()] == ["primary", "second", "third"]
    assert [a.model for a in result.attempts] == ["openai/primary", "openai/second", "openai/third"]
    assert [a.stage for a in result.attempts] == ["normal", "fallback", "fallback"]


async def test_full_ladder_order(chaos_free):
    """Constrained, fallback, tool, human: each stage starts at its threshold, in order."""
    chaos_free.set_plan(["reply:bad"] * 5)
    call = make_call("openai/primary", api_base=chaos_free.url)
    cfg = fast(max_attempts=6, max_attempts_before_constrained=1, max_attempts_before_fallback=2,
               fallback_models=["openai/backup"], max_attempts_before_tool_use=3,
               max_attempts_before_human=5, debug_tool_name="dbg", debug_tool_mcp_config=TOOL_MCP)
    schema_validator = V.AllOf(V.JsonSchema({"type": "object"}), V.RegexMatch("good"))
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [schema_validator], cfg)
    stages = [a.stage for a in info.value.attempts]
    assert stages == ["normal", "constrained", "fallback", "tool", "tool"]
    bodies = [e["body"] for e in chaos_free.journal()]
    assert ["response_format" in b for b in bodies] == [False, True, True, True, True]
    assert [b["model"] for b in bodies] == ["primary", "primary", "backup", "backup", "backup"]
    assert ["mcp_config" in b for b in bodies] == [False, False, False, True, True]


def test_sync_wrapper(chaos_free):
    """retry_with_validation_sync runs the same loop from plain code."""
    chaos_free.set_plan(["reply:bad", "reply:good"])
    call = make_call("openai/m", api_base=chaos_free.url)
    result = retry_with_validation_sync(call, PROMPT, [V.RegexMatch("good")], fast(max_attempts=2))
    assert result.content == "good" and len(result.attempts) == 2


async def test_metrics_and_frame(chaos_free):
    """Metrics add up from the attempts; to_frame has one row per attempt."""
    chaos_free.set_plan(["503", "reply:bad", "reply:good"])
    call = make_call("openai/m", api_base=chaos_free.url)
    cfg = RetryConfig(max_attempts=3, initial_delay=0.05, max_delay=0.05, jitter="none",
                      trace_memory=True)
    old = install()  # no process-wide hooks (the workbook installs RssHook when imported)
    try:
        result = await retry_with_validation(call, PROMPT, [V.RegexMatch("good")], cfg)
    finally:
        install(*old)
    m = result.metrics
    assert m["api_calls"] == 3 and m["transport_errors"] == 1 and m["validation_failures"] == 1
    assert m["sleep_seconds"] == pytest.approx(sum(a.slept for a in result.attempts))
    assert m["sleep_seconds"] >= 0.05
    assert m["tokens_out"] == sum(a.tokens_out for a in result.attempts) > 0
    assert m["process_traced_peak_bytes"] > 0 and "rss_peak_bytes" not in m  # no RssHook here
    assert m["total_seconds"] >= m["sleep_seconds"]
    frame = result.to_frame()
    assert list(frame["outcome"]) == ["transport_error", "validation_failed", "ok"]
    assert {"slept", "scheduled_delay", "stage", "cache_hit", "tokens_in", "duration"} <= set(frame.columns)


async def test_debug_mode_logs_each_attempt(chaos_free):
    """debug_mode logs every attempt with its stage, outcome and delay through loguru."""
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    try:
        chaos_free.set_plan(["503", "reply:good"])
        call = make_call("openai/m", api_base=chaos_free.url)
        await retry_with_validation(call, PROMPT, [], fast(max_attempts=2, debug_mode=True))
    finally:
        logger.remove(sink)
    attempt_lines = [s for s in lines if s.startswith("attempt ")]
    assert len(attempt_lines) == 2
    assert "transport_error" in attempt_lines[0] and "503" in attempt_lines[0]
    assert "[normal] ok" in attempt_lines[1]


async def test_an_answer_cut_at_max_tokens_is_said_to_be_cut(chaos, local_model):
    """The real model stopped by max_tokens: the attempt records finish_reason "length" and
    the re-ask tells the model its answer was cut off, not only that it was invalid JSON.
    A scripted reply (finish_reason "stop") gets no such line."""
    chaos.set_plan(["pass", "reply:still not json"])
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=4, temperature=0)
    prompt = [{"role": "user", "content": "Describe a person named Ann who is 31 as a JSON object "
                                          "with the keys name, age, city, job and hobbies."}]
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, prompt, [V.PydanticSchema(Person)], fast(max_attempts=2))
    first, second = info.value.attempts
    assert first.finish_reason == "length" and first.tokens_out == 4
    assert second.finish_reason == "stop"
    bodies = [e["body"] for e in chaos.journal()]
    assert "cut off at the token limit" in last_user(bodies[1])
    assert "did not pass validation" in last_user(bodies[1])
