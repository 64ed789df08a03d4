"""Stages as objects, pluggable retry_on and wait, hooks with frozen records, OpenTelemetry,
and the loop defects of issue 11 (each test here failed on the loop before the rewrite)."""

from __future__ import annotations

import asyncio
import dataclasses
import tracemalloc

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from retrylib import (
    AttemptDetails,
    ConfigError,
    HumanReviewNeededError,
    MemoryHook,
    NonRetryableError,
    RetryConfig,
    RetryExhaustedError,
    RssHook,
    Stage,
    ValidatorError,
    retry_with_validation,
)
from retrylib import validators as V
from retrylib.classify import Classification
from retrylib.hooks import install, installed
from retrylib.otel import OtelHook, provider_name
from retrylib.testing import Delay, ScriptedCall, http_error, reply, set_testing
from retrylib.validators.base import ValidationResult

PROMPT = [{"role": "user", "content": "Give me JSON."}]


def fast(**kw):
    return RetryConfig(**{"max_attempts": 3, "initial_delay": 0, "max_delay": 0,
                          "jitter": "none", **kw})


class Cooler(Stage):
    """A user's own stage: from its threshold on, every attempt is sent at temperature 0."""

    name = "cooler"

    def apply(self, request, call):
        request.kwargs["temperature"] = 0.0
        request.notes.append("cooled down")


async def test_a_new_stage_is_one_class():
    """A stage written as one class joins the ladder at its failure count; no loop edit."""
    call = ScriptedCall(["bad", "bad", "{}"])
    cfg = fast(stages=[(1, Cooler)])
    r = await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg, temperature=0.9)
    assert [q.kwargs["temperature"] for q in call.requests] == [0.9, 0.0, 0.0]
    assert [a.stage for a in r.attempts] == ["normal", "cooler", "cooler"]
    assert r.attempts[1].note == "cooled down" and r.metrics["stage_reached"] == "cooler"


def test_a_stage_on_a_taken_threshold_is_refused():
    """Two stages on one failure count would hide one: ConfigError names both."""
    with pytest.raises(ConfigError, match="'cooler' at 2 would hide 'constrained'"):
        RetryConfig(max_attempts=4, max_attempts_before_constrained=2, stages=[(2, Cooler())])
    with pytest.raises(ConfigError, match=r"not a retrylib\.stages\.Stage"):
        RetryConfig(stages=[(1, object())])


def test_thresholds_build_the_same_ladder_as_stage_objects():
    """The short form (threshold fields) builds the built-in stage objects, in order."""
    cfg = RetryConfig(max_attempts=6, max_attempts_before_constrained=1,
                      max_attempts_before_fallback=2, fallback_models=["m2"],
                      max_attempts_before_tool_use=3, debug_tool_name="t",
                      max_attempts_before_human=4)
    assert cfg.stage_ladder.names == ("normal", "constrained", "fallback", "tool", "human")
    assert cfg.stage_ladder.thresholds == (0, 1, 2, 3, 4)
    assert [s for s, _ in cfg.ladder()] == list(cfg.stage_ladder.names)


def test_ladder_and_stage_for_include_the_stages_given():
    """RetryConfig.ladder() and stage_for() read the whole ladder, ``stages=`` included."""
    cfg = RetryConfig(max_attempts=5, max_attempts_before_constrained=1,
                      max_attempts_before_human=4, stages=[(2, Cooler())])
    assert cfg.ladder() == [("normal", 0), ("constrained", 1), ("cooler", 2), ("human", 4)]
    assert [cfg.stage_for(f) for f in range(5)] == ["normal", "constrained", "cooler", "cooler",
                                                    "human"]


async def test_retry_on_decides_what_is_retried():
    """``retry_on`` returning False stops at the first 503; a Classification is used as is."""
    call = ScriptedCall([http_error(503), "never"])
    with pytest.raises(Exception, match="retry_on said stop") as info:
        await retry_with_validation(call, PROMPT, None, fast(retry_on=lambda exc: False))
    assert call.calls == 1 and info.value.reason.startswith("not_retryable:")
    call = ScriptedCall([ValueError("flaky parser"), "ok"])
    r = await retry_with_validation(call, PROMPT, None, fast(
        retry_on=lambda exc: Classification(True, "my parser is flaky")))
    assert r.content == "ok" and r.attempts[0].retryable is True


async def test_wait_strategy_is_pluggable():
    """``wait(n)`` gives the delay before retry n (recorded as the scheduled delay)."""
    call = ScriptedCall([http_error(503), http_error(503), "ok"])
    with set_testing(True):
        r = await retry_with_validation(call, PROMPT, None, fast(wait=lambda n: 0.25 * n))
    assert [a.scheduled_delay for a in r.attempts] == [0.0, 0.25, 0.5]


# -- hooks ------------------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.started, self.details, self.ended = [], [], []

    def call_started(self, call):
        self.started.append(call)

    def attempt_ended(self, d):
        self.details.append(d)

    def call_ended(self, call, outcome):
        self.ended.append(outcome)
        return {"recorded": len(self.details)}


async def test_hooks_get_frozen_slotted_records():
    """attempt_ended gets a frozen, slotted AttemptDetails; call_ended may add metrics."""
    rec = Recorder()
    r = await retry_with_validation(ScriptedCall([http_error(503), "bad", "{}"]), PROMPT,
                                    [V.JsonObject()], fast(hooks=[rec]))
    assert len(rec.started) == 1 and len(rec.ended) == 1 and rec.ended[0] is r
    assert [d.outcome for d in rec.details] == ["transport_error", "validation_failed", "ok"]
    assert [d.failures for d in rec.details] == [0, 0, 1]  # failed validations before each
    d = rec.details[0]
    assert isinstance(d, AttemptDetails) and d.status_code == 503
    assert d.call_id == rec.started[0].call_id
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.outcome = "ok"  # type: ignore[misc]
    assert not hasattr(d, "__dict__")
    assert r.metrics["recorded"] == 3


async def test_a_failing_hook_never_ends_the_call():
    """A hook that raises is logged and ignored."""

    def broken(details):
        raise RuntimeError("hook bug")

    r = await retry_with_validation(ScriptedCall(["ok"]), PROMPT, None, fast(hooks=broken))
    assert r.content == "ok"


async def test_installed_hooks_apply_to_every_call_and_rss_is_a_hook():
    """install() sets process-wide hooks; RssHook puts the RSS in each attempt."""
    old = install(RssHook())
    try:
        r = await retry_with_validation(ScriptedCall(["bad", "ok"]), PROMPT,
                                        [V.RegexMatch("^ok$")], fast())
    finally:
        install(*old)
    assert all(a.rss_bytes > 1_000_000 for a in r.attempts)
    assert r.metrics["rss_peak_bytes"] == max(a.rss_bytes for a in r.attempts)
    assert installed() == old


async def test_memory_tracing_survives_overlapping_calls():
    """Two overlapping traced calls: the one that started tracing ends first, and tracing
    goes on for the other (before the rewrite, the first call stopped it as it ended)."""
    if tracemalloc.is_tracing():
        pytest.skip("something else traces already: no call would start or stop tracing")
    seen = []

    class Probe:
        name = "probe"

        async def validate(self, text, context):
            await asyncio.sleep(0.05)  # the short call ends meanwhile
            seen.append(tracemalloc.is_tracing())
            return ValidationResult.ok()

    async def short_call():
        # Scheduled first, it starts tracing; its answer comes while the long call validates.
        r = await retry_with_validation(ScriptedCall([Delay(0.01, "y")]), PROMPT, None,
                                        fast(trace_memory=True))
        seen.append("short ended")
        return r

    long_call = retry_with_validation(ScriptedCall(["x"]), PROMPT, [Probe()], fast(trace_memory=True))
    b, a = await asyncio.gather(short_call(), long_call)
    assert seen == ["short ended", True]
    assert a.metrics["process_traced_peak_bytes"] > 0 and b.metrics["process_traced_peak_bytes"] > 0
    assert not tracemalloc.is_tracing()
    assert MemoryHook._active == 0


async def test_otel_span_tree_of_a_three_attempt_call():
    """1 call span and 3 attempt spans under it, CLIENT spans with GenAI and retrylib
    attributes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = OtelHook(provider.get_tracer("test"))
    call = ScriptedCall([http_error(503), reply("bad", tokens=(11, 3)),
                         reply("{}", tokens=(12, 2), finish_reason="stop")], model="openai/m")
    await retry_with_validation(call, PROMPT, [V.JsonObject()],
                                fast(hooks=[hook], initial_delay=0.01, max_delay=0.01))
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.parent is None]
    attempts = sorted((s for s in spans if s.parent is not None),
                      key=lambda s: s.attributes["retrylib.attempt"])
    assert len(calls) == 1 and len(attempts) == 3
    root = calls[0]
    assert all(s.parent.span_id == root.context.span_id for s in attempts)
    assert root.attributes["retrylib.attempts"] == 3 and root.attributes["retrylib.outcome"] == "ok"
    a1, a2, a3 = (s.attributes for s in attempts)
    assert a1["retrylib.outcome"] == "transport_error" and a1["error.type"] == "ServiceUnavailableError"
    assert a1["http.response.status_code"] == 503
    assert a2["retrylib.validation.error_count"] == 1 and a2["gen_ai.usage.input_tokens"] == 11
    assert a3["gen_ai.response.finish_reasons"] == ("stop",) and a3["gen_ai.usage.output_tokens"] == 2
    assert a2["retrylib.delay.scheduled"] == pytest.approx(0.01)
    assert a2["retrylib.delay.slept"] >= 0.009 and a1["retrylib.delay.slept"] == 0
    assert a3["retrylib.delay.slept"] == 0  # the re-ask after a failed answer does not wait
    assert a1["gen_ai.request.model"] == "openai/m" and a3["retrylib.stage"] == "normal"
    assert all(s.kind == SpanKind.CLIENT for s in spans)
    assert all(s.attributes["gen_ai.provider.name"] == "openai" for s in spans)
    assert all(s.start_time <= s.end_time for s in attempts)
    assert attempts[0].start_time >= root.start_time and attempts[-1].end_time <= root.end_time


@pytest.mark.parametrize("model,provider", [
    ("openai/smollm2", "openai"), ("proxy/smollm2", "openai"), ("vertex_ai/gemini-2.0", "gcp.vertex_ai"),
    ("bedrock/anthropic.claude-3", "aws.bedrock"), ("ollama/llama3", "ollama"), ("gpt-4o", None),
    (None, None)])
def test_otel_provider_name_from_the_model_prefix(model, provider):
    """gen_ai.provider.name: the litellm prefix as the GenAI conventions name it."""
    assert provider_name(model) == provider


async def test_otel_marks_a_failed_call():
    """A call that ends with an error has an ERROR call span naming the error class."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with pytest.raises(NonRetryableError):
        await retry_with_validation(ScriptedCall([http_error(401)]), PROMPT, None,
                                    fast(hooks=[OtelHook(provider.get_tracer("t"))]))
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.attributes["error.type"] == "NonRetryableError"
    assert root.status.status_code.name == "ERROR"


# -- the defects -------------------------------------------------------------------------------

async def test_a_returned_soft_answer_is_accepted_into_the_cache():
    """The soft answer the call returns is accepted (cached), never rejected (evicted)."""
    call = ScriptedCall(['{"a": 1}', '{"a": 1, "b": 2}'])
    schema = V.JsonObject()
    soft = V.Soft(V.RegexMatch("zzz"))
    r = await retry_with_validation(call, PROMPT, [schema, soft], fast(max_attempts=2))
    assert r.warnings and r.accepted_attempt == 2
    assert ("accept", 2) in call.verdicts and ("reject", 2) not in call.verdicts
    assert ("reject", 1) in call.verdicts


async def test_a_soft_answer_beats_a_later_non_retryable_error():
    """A soft-only answer, then a 401: the answer (it passed every hard check) is returned
    with its warnings and accepted, not NonRetryableError (the loop before the rewrite
    raised)."""
    call = ScriptedCall(['{"a": 1}', http_error(401), "never"])
    r = await retry_with_validation(call, PROMPT, [V.JsonObject(), V.Soft(V.RegexMatch("zzz"))],
                                    fast())
    assert r.content == '{"a": 1}' and r.warnings and r.accepted_attempt == 1
    assert [a.outcome for a in r.attempts] == ["validation_failed", "transport_error"]
    assert call.calls == 2 and call.verdicts == [("accept", 1)]


async def test_an_answer_that_could_not_be_judged_is_rejected():
    """An answer whose validator raised, or whose validation outlasted the deadline, is
    reported to the route as rejected, so a cache never serves it (it had no verdict)."""

    class Broken:
        name = "broken"

        async def validate(self, text, context):
            raise KeyError("a bug in the validator")

    class Slow:
        name = "slow"

        async def validate(self, text, context):
            await asyncio.sleep(5)
            return ValidationResult.ok()

    call = ScriptedCall(['{"a": 1}'])
    with pytest.raises(ValidatorError):
        await retry_with_validation(call, PROMPT, [Broken()], fast())
    assert call.verdicts == [("reject", 1)]
    call = ScriptedCall(['{"a": 1}'])
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [Slow()], fast(deadline=0.1))
    assert info.value.reason == "deadline" and call.verdicts == [("reject", 1)]


async def test_a_hand_over_on_exhaustion_says_last_once():
    """human_when_exhausted: the message names the last error once ("last:" not repeated)."""
    call = ScriptedCall([http_error(503), http_error(503)])
    cfg = fast(max_attempts=2, max_attempts_before_human=2, human_when_exhausted=True,
               review_store=False)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    msg = str(info.value)
    assert "after 2 failed attempts" in msg and "all 2 attempts failed; last: " in msg
    assert msg.count("last:") == 1


def test_model_validate_and_model_copy_cannot_bypass_config_errors():
    """model_validate raises ConfigError (not pydantic's ValidationError); model_copy validates."""
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryConfig.model_validate({"max_attempts": 0})
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryConfig.model_validate_json('{"max_attempts": -1}')
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryConfig().model_copy(update={"max_attempts": -5})
    assert RetryConfig().model_copy(update={"max_attempts": 7}).max_attempts == 7
    assert RetryConfig.model_validate({"seed": 3}).seed == 3


async def test_cancel_mid_attempt_still_ends_the_hooks():
    """A cancelled call still reaches call_ended (with the attempts it made)."""
    rec = Recorder()
    task = asyncio.create_task(retry_with_validation(ScriptedCall([Delay(5, "late")]), PROMPT,
                                                     None, fast(hooks=[rec])))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(rec.ended) == 1 and rec.ended[0].attempts == []
