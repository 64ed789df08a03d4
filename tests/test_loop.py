"""The retry loop in process: every branch of ``retrylib.manager``, through ``ScriptedCall``.

No server and no mock: a :class:`~retrylib.testing.ScriptedCall` is called exactly as a route
is, serves genuine replies and genuine litellm/openai exceptions, and records the whole
transcript, so each test reads what the loop sent (``call.requests``) and what it recorded
(``result.attempts``).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import copy
import pickle
import threading
import time
import tracemalloc

import litellm
import pytest
from loguru import logger
from pydantic import BaseModel, Field

from retrylib import (
    ConfigError,
    FallbackModel,
    HumanReviewNeededError,
    NonRetryableError,
    RetryConfig,
    RetryExhaustedError,
    ValidatorError,
    retry_with_validation,
    retry_with_validation_sync,
)
from retrylib import validators as V
from retrylib.hooks import install
from retrylib.manager import run_sync
from retrylib.testing import (
    Delay,
    ScriptedCall,
    Text,
    connection_refused,
    connection_reset,
    http_error,
    is_testing,
    reply,
    set_testing,
    timeout_error,
)
from retrylib.testing.mode import MODE
from retrylib.validators.base import ValidationContext, ValidationResult

ASK = "Give me a JSON object with a name and an age."
PROMPT = [{"role": "system", "content": "You answer in JSON."}, {"role": "user", "content": ASK}]
GOOD = '{"name": "Ann", "age": 3}'
TOOL_MCP = {"mcpServers": {"debugger": {"command": "mcp-debugger", "args": ["--stdio"]}}}
CUT_OFF = "Your previous answer was cut off at the token limit"


class Person(BaseModel):
    name: str
    age: int


class Code(BaseModel):
    code: str = Field(pattern=r"^\d+$")


def fast(**kw) -> RetryConfig:
    """A config whose backoff delays are all zero (real sleeps of nothing)."""
    return RetryConfig(**{"initial_delay": 0.0, "max_delay": 0.0, **kw})


def tiny(**kw) -> RetryConfig:
    """A config with a fixed, tiny, un-jittered backoff: 10 ms before every retry."""
    return RetryConfig(**{"initial_delay": 0.01, "max_delay": 0.01, "jitter": "none", **kw})


@pytest.fixture(autouse=True)
def _restore_mode():
    """Every test starts and ends outside test mode, whatever it did."""
    old = (MODE.testing, MODE.attempts)
    MODE.testing, MODE.attempts = False, None
    yield
    MODE.testing, MODE.attempts = old


@pytest.fixture
def testing():
    """Test mode (no backoff sleeps) for one test."""
    with set_testing(True):
        yield


# -- success, feedback -------------------------------------------------------------------------

async def test_first_valid_answer_is_returned_after_one_request():
    """A valid first answer: one request with the caller's messages, parsed, accepted."""
    call = ScriptedCall([GOOD])
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], fast())
    assert result.content == GOOD
    assert result.parsed == Person(name="Ann", age=3)
    assert [a.outcome for a in result.attempts] == ["ok"]
    assert call.requests[0].messages == PROMPT
    assert result.attempts[0].messages_sent == 2 and result.attempts[0].model == "scripted"
    assert call.verdicts == [("accept", 1)]
    assert result.warnings == ()


async def test_validation_failure_is_re_asked_with_numbered_errors_and_prompt():
    """A failed answer comes back as an assistant turn plus a re-ask with errors, hints, prompt."""
    call = ScriptedCall(['{"name": 5}', GOOD])
    cfg = fast(original_user_prompt=ASK)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert result.parsed == Person(name="Ann", age=3)
    sent = call.requests[1].messages
    assert sent[:2] == PROMPT
    assert sent[2] == {"role": "assistant", "content": '{"name": 5}'}
    assert sent[3]["role"] == "user" and len(sent) == 4
    reask = call.requests[1].last
    assert reask.startswith("Your previous answer did not pass validation.")
    assert ("Errors:\n1. field `name`: Input should be a valid string (got: 5)\n"
            "2. field `age`") in reask
    assert "Suggestions:\n- Reply with only a JSON object" in reask
    assert "required fields: name, age" in reask
    assert f"The original request, which still applies:\n{ASK}" in reask
    assert reask.endswith("Reply again with a corrected answer only.")
    assert result.attempts[0].validation_errors == (
        "field `name`: Input should be a valid string (got: 5)", "field `age`: Field required")
    assert call.verdicts == [("reject", 1), ("accept", 2)]


async def test_re_ask_without_original_prompt_does_not_repeat_it():
    """Without ``original_user_prompt`` the re-ask carries no 'original request' section."""
    call = ScriptedCall(["nope", GOOD])
    await retry_with_validation(call, PROMPT, [V.JsonObject()], fast())
    assert "original request" not in call.requests[1].last
    assert "1. invalid JSON in the answer" in call.requests[1].last


@pytest.mark.parametrize("policy", ["full", "last"])
async def test_feedback_history_full_resends_every_failure_last_only_the_latest(policy):
    """``full`` replays both failed answers; ``last`` replays only the second one."""
    call = ScriptedCall(["first wrong", "second wrong", GOOD])
    await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(feedback_history=policy))
    sent = call.requests[2].messages
    answers = [m["content"] for m in sent if m["role"] == "assistant"]
    if policy == "full":
        assert answers == ["first wrong", "second wrong"] and len(sent) == 6
    else:
        assert answers == ["second wrong"] and len(sent) == 4
    assert sent[:2] == PROMPT


async def test_wordless_failure_is_named_after_the_validator():
    """A validator failing without errors is reported as '<name> failed'."""

    class Mute:
        name = "mute_check"

        async def validate(self, text, context):
            return ValidationResult(text == "yes")

    call = ScriptedCall(["no", "yes"])
    result = await retry_with_validation(call, PROMPT, [Mute()], fast())
    assert result.attempts[0].validation_errors == ("mute_check failed",)
    assert "1. mute_check failed" in call.requests[1].last


async def test_two_validators_report_both_failures_at_once():
    """Several validators are combined: the re-ask lists the problems of all of them."""
    fixed = '```json\n{"name": "x"}\n```\ndone'
    call = ScriptedCall(['{"a": 1}', fixed])
    validators = [V.FieldsPresent(["name"]), V.RegexMatch(r"done$")]
    result = await retry_with_validation(call, PROMPT, validators, fast(max_attempts=2))
    reask = call.requests[1].last
    assert "1. missing field `name`" in reask and "2. " in reask
    assert result.content == fixed


# -- transport retries -------------------------------------------------------------------------

@pytest.mark.parametrize("error,wait,retry_after,status", [
    (http_error(429, headers={"retry-after": "0.03"}), 0.03, 0.03, 429),
    (http_error(429, headers={"retry-after-ms": "20"}), 0.02, 0.02, 429),
    (http_error(503), 0.01, None, 503),
    (http_error(500, route="openai"), 0.01, None, 500),
    (http_error(502, route="proxy"), 0.01, None, 502),
    (connection_refused(), 0.01, None, 500),
    (connection_reset(), 0.01, None, None),
    (timeout_error(), 0.01, None, 408),
], ids=["429-retry-after", "429-retry-after-ms", "503", "openai-500", "proxy-502",
        "refused", "reset", "timeout"])
async def test_retryable_transport_error_is_retried_after_the_backoff(error, wait, retry_after,
                                                                      status):
    """A retryable failure is retried after max(backoff, Retry-After), all recorded."""
    call = ScriptedCall([error, "fine"])
    result = await retry_with_validation(call, PROMPT, [], tiny())
    first, second = result.attempts
    assert (first.outcome, second.outcome) == ("transport_error", "ok")
    assert first.retryable is True and first.status_code == status
    assert first.error_type == type(error).__name__
    assert second.scheduled_delay == 0.01
    assert second.retry_after == retry_after
    assert wait - 0.002 <= second.slept < wait + 0.5
    assert call.requests[1].at - call.requests[0].at >= wait - 0.002
    assert call.requests[1].messages == PROMPT  # a transport retry adds no feedback
    assert result.metrics["transport_errors"] == 1
    assert result.metrics["sleep_seconds"] == pytest.approx(second.slept)


async def test_attempt_timeout_is_the_timeout_kwarg_and_a_slow_reply_is_retried():
    """``attempt_timeout`` goes out as ``timeout``; a slower reply is a retried timeout."""
    call = ScriptedCall([Delay(5.0, "late"), "fine"], route="litellm")
    t = time.monotonic()
    result = await retry_with_validation(call, PROMPT, [], tiny(attempt_timeout=0.02))
    assert time.monotonic() - t < 1.0
    assert [r.kwargs["timeout"] for r in call.requests] == [0.02, 0.02]
    assert result.attempts[0].error_type == "Timeout" and result.attempts[0].retryable
    assert result.content == "fine"


async def test_caller_timeout_wins_over_attempt_timeout_and_deadline_caps_it():
    """A caller's ``timeout`` kwarg beats ``attempt_timeout``; the deadline caps both."""
    call = ScriptedCall(["a"])
    await retry_with_validation(call, PROMPT, [], fast(attempt_timeout=7.5), timeout=3)
    assert call.requests[0].kwargs["timeout"] == 3
    call = ScriptedCall(["a"])
    await retry_with_validation(call, PROMPT, [], fast(attempt_timeout=7.5, deadline=60))
    assert call.requests[0].kwargs["timeout"] == 7.5
    call = ScriptedCall(["a"])
    await retry_with_validation(call, PROMPT, [], fast(attempt_timeout=30, deadline=2))
    assert 1.5 < call.requests[0].kwargs["timeout"] <= 2


async def test_x_should_retry_false_stops_a_503():
    """``x-should-retry: false`` makes a 503 a NonRetryableError after one request."""
    call = ScriptedCall([http_error(503, headers={"x-should-retry": "false"}), "never"])
    with pytest.raises(NonRetryableError) as info:
        await retry_with_validation(call, PROMPT, [], fast())
    assert call.calls == 1
    assert info.value.status_code == 503
    assert info.value.reason == "not_retryable:http_503"
    assert "x-should-retry: false" in str(info.value)


async def test_x_should_retry_true_retries_a_400():
    """``x-should-retry: true`` makes a 400 retryable."""
    call = ScriptedCall([http_error(400, headers={"x-should-retry": "true"}), "fine"])
    result = await retry_with_validation(call, PROMPT, [], fast())
    assert result.content == "fine" and call.calls == 2
    assert result.attempts[0].retryable is True and result.attempts[0].status_code == 400


@pytest.mark.parametrize("error,status,reason", [
    (http_error(400), 400, "HTTP 400"),
    (http_error(401), 401, "HTTP 401"),
    (http_error(404), 404, "HTTP 404"),
    (http_error(422), 422, "HTTP 422"),
    (http_error(403, route="openai"), 403, "HTTP 403"),
    (http_error(401, route="proxy"), 401, "HTTP 401"),
    (litellm.ContextWindowExceededError(message="prompt too long", model="m",
                                        llm_provider="openai"), 400, "context window exceeded"),
    (KeyError("bug in the route"), None, "unexpected error (KeyError)"),
], ids=["400", "401", "404", "422", "openai-403", "proxy-401", "context-window", "keyerror"])
async def test_not_retryable_error_ends_the_call_after_one_request(error, status, reason):
    """A failure retrying cannot fix raises NonRetryableError after exactly one request."""
    call = ScriptedCall([error, "never"])
    with pytest.raises(NonRetryableError) as info:
        await retry_with_validation(call, PROMPT, [], fast(max_attempts=5))
    exc = info.value
    assert call.calls == 1 and call.remaining == 1
    # The classifier's phrase is in the message and in last_error; .reason is the code.
    assert exc.status_code == status and f"({reason})" in str(exc)
    assert exc.last_error["reason"] == reason
    assert exc.reason.startswith("not_retryable:")
    assert exc.__cause__ is error
    assert [a.retryable for a in exc.attempts] == [False]
    assert exc.last_error["type"] == type(error).__name__
    assert exc.metrics["api_calls"] == 1 and exc.metrics["transport_errors"] == 1
    assert f"not retryable ({reason})" in str(exc)


async def test_respect_retry_after_false_ignores_the_header_and_its_limit():
    """With ``respect_retry_after=False`` only the backoff is slept, even past max_retry_after."""
    call = ScriptedCall([http_error(429, headers={"retry-after": "120"}), "fine"])
    t = time.monotonic()
    result = await retry_with_validation(call, PROMPT, [], tiny(respect_retry_after=False))
    assert time.monotonic() - t < 1.0
    second = result.attempts[1]
    assert second.retry_after == 120.0
    assert second.scheduled_delay == 0.01 and 0.008 <= second.slept < 0.5


async def test_retry_after_beyond_max_retry_after_ends_the_call():
    """A server asking for more than ``max_retry_after`` ends the call, without sleeping."""
    call = ScriptedCall([http_error(429, headers={"retry-after": "5"}), "never"])
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], tiny(max_retry_after=1))
    assert time.monotonic() - t < 1.0
    assert info.value.reason == "retry_after"
    assert "asked to wait 5.0s, more than max_retry_after (1.0s)" in str(info.value)
    assert call.calls == 1
    assert info.value.last_error["status_code"] == 429
    assert info.value.last_error["headers"]["retry-after"] == "5"


# -- the deadline ------------------------------------------------------------------------------

async def test_deadline_ends_the_call_before_a_backoff_that_would_cross_it():
    """A backoff longer than the time left raises ``deadline`` at once, without sleeping."""
    call = ScriptedCall([http_error(503), "never"])
    cfg = RetryConfig(initial_delay=0.5, max_delay=0.5, jitter="none", deadline=0.2)
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], cfg)
    assert time.monotonic() - t < 0.15
    assert info.value.reason == "deadline"
    assert "would pass during the 0.50s backoff before attempt 2" in str(info.value)
    assert call.calls == 1


async def test_deadline_counts_retry_after_too():
    """A Retry-After that outlasts the deadline ends the call at once with ``deadline``."""
    call = ScriptedCall([http_error(429, headers={"retry-after": "1"}), "never"])
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], tiny(deadline=0.3))
    assert time.monotonic() - t < 0.25
    assert info.value.reason == "deadline" and call.calls == 1


async def test_deadline_bounds_a_reply_that_never_comes():
    """A hanging reply gets the time left as ``timeout`` and the call ends at the deadline."""
    call = ScriptedCall([Delay(float("inf"))], then=Delay(float("inf")))
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], tiny(deadline=0.1, max_attempts=5))
    elapsed = time.monotonic() - t
    assert info.value.reason == "deadline"
    assert 0.09 <= elapsed < 0.6
    assert 0 < call.requests[0].kwargs["timeout"] <= 0.1
    assert info.value.attempts[0].outcome == "transport_error"


async def test_deadline_backstop_cancels_a_route_that_ignores_timeout():
    """A route that ignores ``timeout`` is cut off at the deadline by the loop's own timer."""

    async def deaf(messages, **kw):
        await asyncio.sleep(10)

    call = ScriptedCall([deaf, "never"])
    t = time.monotonic()
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [], tiny(deadline=0.05))
    assert time.monotonic() - t < 0.5
    assert info.value.reason == "deadline"
    assert "passed during attempt 1" in str(info.value)
    assert info.value.attempts[0].error_type == "TimeoutError"
    assert call.calls == 1


# -- validation retries and exhaustion ---------------------------------------------------------

async def test_validation_re_ask_is_immediate_unless_delay_validation_retries():
    """A re-ask after a failed validation does not back off, unless asked to."""
    call = ScriptedCall(["bad", "{}"])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], tiny())
    assert result.attempts[1].scheduled_delay == 0.0 and result.attempts[1].slept == 0.0
    call = ScriptedCall(["bad", "{}"])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()],
                                         tiny(delay_validation_retries=True))
    assert result.attempts[1].scheduled_delay == 0.01
    assert 0.008 <= result.attempts[1].slept < 0.5


async def test_attempts_run_out_after_validation_failures():
    """Three wrong answers: ``max_attempts`` exhaustion quoting the last validation errors."""
    call = ScriptedCall(["a", "b", "c"])
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(max_attempts=3))
    exc = info.value
    assert exc.reason == "max_attempts"
    assert str(exc).startswith("all 3 attempts failed; last: invalid JSON in the answer")
    assert "starts with 'c'" in str(exc)
    assert [a.outcome for a in exc.attempts] == ["validation_failed"] * 3
    assert exc.metrics["validation_failures"] == 3 and exc.metrics["api_calls"] == 3
    assert call.verdicts == [("reject", 1), ("reject", 2), ("reject", 3)]


async def test_attempts_run_out_after_transport_failures(testing):
    """Three 503s: ``max_attempts`` exhaustion quoting the last transport error's message."""
    call = ScriptedCall([http_error(503), http_error(502), http_error(503, body="down again")])
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.JsonObject()], RetryConfig(max_attempts=3))
    exc = info.value
    assert exc.reason == "max_attempts"
    assert str(exc).startswith("all 3 attempts failed; last: litellm.ServiceUnavailableError")
    assert "down again" in str(exc)
    assert exc.last_error["status_code"] == 503
    assert exc.metrics["transport_errors"] == 3
    assert call.verdicts == []


async def test_human_review_error_carries_the_story_and_pickles():
    """The M-th failed validation raises HumanReviewNeededError with everything, picklable."""
    call = ScriptedCall(["bad one", "bad two", "never"])
    cfg = fast(max_attempts=5, max_attempts_before_human=2)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    exc = info.value
    assert call.calls == 2
    assert [a.number for a in exc.attempts] == [1, 2]
    assert exc.messages == call.requests[1].messages and len(exc.messages) == 4
    assert exc.last_text == "bad two"
    assert exc.last_response["choices"][0]["message"]["content"] == "bad two"
    assert exc.validation_errors[0].startswith("invalid JSON in the answer")
    assert exc.config["max_attempts_before_human"] == 2
    assert exc.metrics["stage_reached"] == "human"
    assert str(exc).startswith("2 answers failed validation (max_attempts_before_human=2)")
    assert "#2 [normal] validation_failed: invalid JSON" in exc.summary()
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is HumanReviewNeededError
    assert back.messages == exc.messages and back.last_text == "bad two"
    assert back.validation_errors == exc.validation_errors
    assert [a.validation_errors for a in back.attempts] == [a.validation_errors
                                                            for a in exc.attempts]
    assert back.metrics == exc.metrics and str(back) == str(exc)


async def test_retry_exhausted_and_non_retryable_errors_pickle():
    """RetryExhaustedError and NonRetryableError survive pickling with reason and attempts."""
    call = ScriptedCall([http_error(401)])
    with pytest.raises(NonRetryableError) as info:
        await retry_with_validation(call, PROMPT, [], fast())
    back = pickle.loads(pickle.dumps(info.value))
    assert (back.status_code, back.reason, len(back.attempts)) == (401, "not_retryable:http_401", 1)
    call = ScriptedCall(["x"])
    with pytest.raises(RetryExhaustedError) as info2:
        await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(max_attempts=1))
    back2 = pickle.loads(pickle.dumps(info2.value))
    assert back2.reason == "max_attempts" and back2.attempts[0].text == "x"


# -- the escalation ladder ---------------------------------------------------------------------

async def test_constrained_stage_sends_the_pydantic_schema_after_k_failures():
    """After K=1 failure the next attempt carries the model's schema as ``response_format``."""
    call = ScriptedCall(["not json", GOOD])
    cfg = fast(max_attempts=3, max_attempts_before_constrained=1)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert "response_format" not in call.requests[0].kwargs
    assert call.requests[1].kwargs["response_format"] == {
        "type": "json_object", "schema": Person.model_json_schema()}
    assert [a.stage for a in result.attempts] == ["normal", "constrained"]
    assert [a.constrained for a in result.attempts] == [False, True]
    assert result.metrics["stage_reached"] == "constrained"


async def test_constrained_from_the_first_attempt_when_k_is_zero():
    """K=0 asks for the schema from the first attempt, in the openai form when configured."""
    call = ScriptedCall([GOOD])
    cfg = fast(max_attempts_before_constrained=0, constrained_format="openai")
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert call.requests[0].kwargs["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Person", "schema": Person.model_json_schema()}}
    assert result.attempts[0].stage == "constrained" and result.attempts[0].constrained


async def test_constrained_stage_skipped_without_a_schema_providing_validator():
    """With no validator that knows a schema, the stage is noted as skipped and sends none."""
    call = ScriptedCall(["no", "{}"])
    cfg = fast(max_attempts_before_constrained=1)
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    assert all("response_format" not in r.kwargs for r in call.requests)
    second = result.attempts[1]
    assert second.stage == "constrained" and not second.constrained
    assert second.note == "constrained stage skipped: no validator provides a JSON schema"


async def test_constrained_stage_sends_a_grammar_safe_schema_and_says_what_it_dropped():
    """An escaped pattern is sent rewritten; a bound the grammar cannot hold is in the note."""

    class CodeAndCount(Code):
        count: int = Field(le=9)

    call = ScriptedCall(['{"code": "12", "count": 3}'])
    cfg = fast(max_attempts_before_constrained=0)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(CodeAndCount)], cfg)
    sent = call.requests[0].kwargs["response_format"]["schema"]
    assert sent["properties"]["code"]["pattern"] == "^[0-9]+$"
    assert "maximum" not in sent["properties"]["count"]
    assert sent["required"] == ["code", "count"]
    assert result.attempts[0].note == "left to the validators: /properties/count: maximum 9"


async def test_transport_errors_do_not_climb_the_ladder(testing):
    """Only failed validations move the ladder: a 503 keeps the next attempt normal."""
    call = ScriptedCall([http_error(503), "bad", GOOD])
    cfg = RetryConfig(max_attempts=3, max_attempts_before_constrained=1)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert [a.stage for a in result.attempts] == ["normal", "normal", "constrained"]
    assert ["response_format" in r.kwargs for r in call.requests] == [False, False, True]


@pytest.mark.parametrize("rejection", [
    http_error(400, body='{"error": {"message": "response_format json_schema is not supported"}}'),
    http_error(500, body='{"error": {"message": "Failed to parse grammar"}}'),
    http_error(422, route="openai"),
], ids=["400", "500", "openai-422"])
async def test_route_rejecting_response_format_skips_the_stage_and_retries_at_once(rejection):
    """A route refusing the schema: the stage is skipped and the next attempt goes at once."""
    call = ScriptedCall([rejection, GOOD])
    cfg = RetryConfig(max_attempts=3, max_attempts_before_constrained=0, initial_delay=0.5,
                      jitter="none")
    t = time.monotonic()
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert time.monotonic() - t < 0.4
    assert "response_format" in call.requests[0].kwargs
    assert "response_format" not in call.requests[1].kwargs
    first, second = result.attempts
    status = rejection.status_code
    assert first.note == ("constrained stage skipped: route rejected response_format "
                          f"({type(rejection).__name__} {status})")
    assert first.outcome == "transport_error" and first.constrained
    assert second.scheduled_delay == 0.0 and second.slept == 0.0
    assert second.stage == "constrained" and not second.constrained
    assert second.note == first.note
    assert result.parsed == Person(name="Ann", age=3)


async def test_connection_failure_in_the_constrained_stage_is_not_a_rejection():
    """A refused connection while constrained is a transport retry: the schema is sent again."""
    call = ScriptedCall([connection_refused(), GOOD])
    cfg = tiny(max_attempts_before_constrained=0)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert ["response_format" in r.kwargs for r in call.requests] == [True, True]
    assert result.attempts[0].note is None
    assert result.attempts[1].scheduled_delay == 0.01 and result.attempts[1].constrained


async def test_fallback_stage_switches_model_and_api_base():
    """After F failures the call gets the fallback model's ``model`` and ``api_base``."""
    call = ScriptedCall(["bad", GOOD])
    cfg = fast(max_attempts=3, max_attempts_before_fallback=1,
               fallback_models=[FallbackModel(model="openai/big", api_base="http://big/v1",
                                              api_key="k", kwargs={"top_p": 0.5})])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    assert "model" not in call.requests[0].kwargs
    assert {k: call.requests[1].kwargs[k] for k in ("model", "api_base", "api_key", "top_p")} == {
        "model": "openai/big", "api_base": "http://big/v1", "api_key": "k", "top_p": 0.5}
    assert [a.model for a in result.attempts] == ["scripted", "openai/big"]
    assert [a.stage for a in result.attempts] == ["normal", "fallback"]
    assert result.metrics["stage_reached"] == "fallback"


async def test_several_fallback_models_are_used_in_turn_and_the_last_one_stays(testing):
    """Each further failure moves to the next fallback model; transport errors do not."""
    call = ScriptedCall(["bad", "bad", http_error(503), "bad", GOOD])
    cfg = RetryConfig(max_attempts=5, max_attempts_before_fallback=1,
                      fallback_models=["openai/b", FallbackModel(model="openai/c")])
    await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg, model="openai/a")
    assert [r.kwargs["model"] for r in call.requests] == [
        "openai/a", "openai/b", "openai/c", "openai/c", "openai/c"]
    assert "api_base" not in call.requests[2].kwargs


async def test_tool_stage_attaches_mcp_config_and_names_the_tool():
    """From the tool stage on: ``mcp_config`` in the kwargs, the tool named in the re-ask."""
    call = ScriptedCall(["bad", GOOD])
    cfg = fast(max_attempts=3, max_attempts_before_tool_use=1, debug_tool_name="pdb-mcp",
               debug_tool_mcp_config=TOOL_MCP)
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    assert "mcp_config" not in call.requests[0].kwargs
    assert call.requests[1].kwargs["mcp_config"] == TOOL_MCP
    assert "Use the debugging tool `pdb-mcp` (its MCP config is attached" in call.requests[1].last
    second = result.attempts[1]
    assert second.stage == "tool" and second.tool_suggested and second.mcp_config_sent
    assert not result.attempts[0].tool_suggested


async def test_tool_stage_without_mcp_config_only_suggests_the_tool():
    """A tool stage with no MCP config names the tool but sends no ``mcp_config``."""
    call = ScriptedCall(["bad", GOOD])
    cfg = fast(max_attempts=3, max_attempts_before_tool_use=1, debug_tool_name="inspector")
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    assert "mcp_config" not in call.requests[1].kwargs
    assert "`inspector`" in call.requests[1].last
    assert result.attempts[1].tool_suggested and not result.attempts[1].mcp_config_sent


async def test_tool_threshold_equal_to_human_means_no_tool_attempt():
    """N == M: the M-th failure raises before any tool attempt; no re-ask names the tool."""
    call = ScriptedCall(["bad", "bad"])
    cfg = fast(max_attempts=4, max_attempts_before_tool_use=2, max_attempts_before_human=2,
               debug_tool_name="pdb-mcp")
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    assert [a.stage for a in info.value.attempts] == ["normal", "normal"]
    assert "pdb-mcp" not in call.requests[1].last


async def test_full_ladder_accumulates_stages_in_order():
    """K<F<N<M: normal, constrained, fallback, tool, then the human; stages accumulate."""
    call = ScriptedCall(["bad"] * 4)
    cfg = fast(max_attempts=6, max_attempts_before_constrained=1, max_attempts_before_fallback=2,
               max_attempts_before_tool_use=3, max_attempts_before_human=4,
               fallback_models=["openai/b"], debug_tool_name="dbg", debug_tool_mcp_config=TOOL_MCP)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert [a.stage for a in info.value.attempts] == ["normal", "constrained", "fallback", "tool"]
    kw = [r.kwargs for r in call.requests]
    assert ["response_format" in k for k in kw] == [False, True, True, True]
    assert [k.get("model") for k in kw] == [None, None, "openai/b", "openai/b"]
    assert ["mcp_config" in k for k in kw] == [False, False, False, True]
    assert "`dbg`" in call.requests[3].last and "`dbg`" not in call.requests[2].last
    assert info.value.metrics["stage_reached"] == "human"


async def test_fresh_escalation_history_starts_each_escalated_stage_over():
    """``fresh``: the first constrained and fallback attempts send only the caller's messages."""
    call = ScriptedCall(["bad1", "bad2", "bad3", GOOD])
    cfg = fast(max_attempts=4, max_attempts_before_constrained=1, max_attempts_before_fallback=2,
               fallback_models=["openai/b"], escalation_history="fresh")
    await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    msgs = [r.messages for r in call.requests]
    assert msgs[0] == PROMPT and msgs[1] == PROMPT and msgs[2] == PROMPT
    assert msgs[3][:2] == PROMPT
    assert [m["content"] for m in msgs[3] if m["role"] == "assistant"] == ["bad3"]


async def test_keep_escalation_history_replays_every_failure_into_escalated_stages():
    """``keep`` (the default): the escalated attempts see the failures before them."""
    call = ScriptedCall(["bad1", "bad2", GOOD])
    cfg = fast(max_attempts=3, max_attempts_before_constrained=1, max_attempts_before_fallback=2,
               fallback_models=["openai/b"])
    await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    assert [m["content"] for m in call.requests[2].messages if m["role"] == "assistant"] == [
        "bad1", "bad2"]


# -- Soft validators ---------------------------------------------------------------------------

SOFT = [V.JsonObject(), V.Soft(V.FieldsPresent(["name", "age"]))]


async def test_soft_failures_return_the_latest_of_the_fewest_errors_with_warnings():
    """Attempts run out: the answer with fewest soft errors (latest on a tie) is returned."""
    call = ScriptedCall(['{"x": 1}', '{"name": "A"}', '{"age": 2}'])
    result = await retry_with_validation(call, PROMPT, SOFT, fast(max_attempts=3))
    assert result.content == '{"age": 2}'
    assert result.parsed == {"age": 2}
    assert result.accepted_attempt == 3
    assert len(result.warnings) == 1 and result.warnings[0].startswith("missing field `name`")
    assert result.metrics["accepted_with_warnings"] is True
    assert [a.outcome for a in result.attempts] == ["validation_failed"] * 3
    assert "warnings=1" in repr(result)


async def test_soft_best_answer_is_the_one_with_fewest_errors_even_if_early():
    """The fewest soft errors win over a later answer with more of them."""
    call = ScriptedCall(['{"name": "A"}', '{"x": 1}', '{"y": 2}'])
    result = await retry_with_validation(call, PROMPT, SOFT, fast(max_attempts=3))
    assert result.content == '{"name": "A"}' and result.accepted_attempt == 1


async def test_hard_failures_still_raise_with_soft_validators():
    """When no answer failed only soft checks, exhaustion still raises."""
    call = ScriptedCall(["no", "nope", "never"])
    with pytest.raises(RetryExhaustedError):
        await retry_with_validation(call, PROMPT, SOFT, fast(max_attempts=3))


async def test_an_earlier_soft_answer_survives_later_hard_failures():
    """A soft-only answer is returned even when the answers after it failed hard checks."""
    call = ScriptedCall(['{"name": "A"}', "no json", "still none"])
    result = await retry_with_validation(call, PROMPT, SOFT, fast(max_attempts=3))
    assert result.content == '{"name": "A"}' and result.accepted_attempt == 1
    assert result.attempts[-1].outcome == "validation_failed"


async def test_soft_answer_is_returned_instead_of_human_review():
    """At the human threshold a soft-only answer is returned; stage_reached is the attempts' top."""
    call = ScriptedCall(['{"x": 1}', '{"name": "A"}'])
    cfg = fast(max_attempts=4, max_attempts_before_constrained=1, max_attempts_before_human=2)
    result = await retry_with_validation(call, PROMPT, SOFT, cfg)
    assert result.content == '{"name": "A"}'
    assert result.metrics["stage_reached"] == "constrained"


async def test_soft_failure_is_re_asked_like_any_other():
    """A soft failure is fed back, and a later fully valid answer is returned without warnings."""
    call = ScriptedCall(['{"name": "A"}', GOOD])
    result = await retry_with_validation(call, PROMPT, SOFT, fast(max_attempts=3))
    assert result.content == GOOD and result.warnings == ()
    assert "missing field `age`" in call.requests[1].last
    assert result.metrics["accepted_with_warnings"] is False


# -- response shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("empty,why", [
    (reply(None), "choices[0].message.content is None"),
    ({"choices": []}, "response has no choices"),
    (reply(None, shape="anthropic"), "content parts hold no text"),
    ({"id": "x", "object": "weird"}, "unknown response shape: a dict with keys id, object"),
], ids=["none-content", "no-choices", "anthropic-empty", "unknown-shape"])
async def test_an_empty_response_is_a_failed_validation(empty, why):
    """No text in a response is the validation failure 'empty response', re-asked."""
    call = ScriptedCall([empty, "now text"])
    result = await retry_with_validation(call, PROMPT, [V.ResponseNotEmpty()], fast())
    first = result.attempts[0]
    assert first.outcome == "validation_failed" and first.text is None
    assert first.validation_errors[0].startswith("empty response: ")
    assert why in first.validation_errors[0]
    assert call.requests[1].messages[2] == {"role": "assistant", "content": ""}
    assert "- Reply with the requested content." in call.requests[1].last
    assert call.verdicts == [("reject", 1), ("accept", 2)]


async def test_empty_response_is_rejected_even_without_validators():
    """Without validators any text passes, but a response with no text still fails."""
    call = ScriptedCall([reply(None), ""])
    result = await retry_with_validation(call, PROMPT, None, fast())
    assert result.attempts[0].outcome == "validation_failed"
    assert result.content == "" and result.attempts[1].outcome == "ok"


async def test_no_validators_accept_any_text():
    """With no validators the first answer with text is accepted as is."""
    call = ScriptedCall(["whatever, really"])
    result = await retry_with_validation(call, PROMPT)
    assert result.content == "whatever, really" and call.calls == 1 and result.parsed is None


async def test_answer_cut_at_the_token_limit_is_told_so():
    """finish_reason ``length``: the re-ask says the answer was cut and asks for a shorter one."""
    call = ScriptedCall([reply('{"name": "A', finish_reason="length"), "nope", GOOD])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], fast())
    assert result.attempts[0].finish_reason == "length"
    assert f"Suggestions:\n- {CUT_OFF}" in call.requests[1].last
    assert CUT_OFF not in call.requests[2].messages[-1]["content"]  # 'nope' stopped normally


async def test_plain_text_route_returning_str():
    """A route returning a bare ``str``: validated, no usage, model or finish reason recorded."""
    text_route = ScriptedCall([Text("not json"), reply("{}", shape="text")], model=None)

    result = await retry_with_validation(text_route, PROMPT, [V.JsonObject()], fast())
    assert result.response == "{}" and type(result.response) is str and result.content == "{}"
    assert [a.text for a in result.attempts] == ["not json", "{}"]
    assert all(a.tokens_in == a.tokens_out == 0 for a in result.attempts)
    assert all(a.model is None and a.finish_reason is None for a in result.attempts)


async def test_sync_call_function_is_used_as_is():
    """A plain (non-async) call function works, deadline included, and gets every kwarg."""
    seen = []

    def sync_route(messages, **kw):
        seen.append((copy.deepcopy(messages), kw))
        return reply(GOOD if len(seen) > 1 else "bad", tokens=(4, 2))

    result = await retry_with_validation(sync_route, PROMPT, [V.PydanticSchema(Person)],
                                         fast(deadline=30), temperature=0)
    assert result.parsed == Person(name="Ann", age=3)
    assert len(seen) == 2 and seen[1][0][2]["content"] == "bad"
    assert seen[0][1]["temperature"] == 0 and 0 < seen[0][1]["timeout"] <= 30
    assert result.metrics["tokens_in"] == 8


async def test_anthropic_shaped_reply_is_read():
    """An Anthropic messages dict: text, tokens and stop reason are read from it."""
    call = ScriptedCall([reply("cut", shape="anthropic", finish_reason="length", tokens=(5, 1)),
                         reply(GOOD, shape="anthropic", tokens=(9, 7))])
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], fast())
    first, second = result.attempts
    assert first.finish_reason == "length" and second.finish_reason == "stop"
    assert (second.tokens_in, second.tokens_out) == (9, 7)
    assert result.parsed == Person(name="Ann", age=3)
    assert CUT_OFF in call.requests[1].last


# -- verdict hooks, messages, kwargs -----------------------------------------------------------

async def test_verdict_hooks_hear_reject_then_accept():
    """Each rejected answer's request gets 'reject', the accepted one 'accept'."""
    call = ScriptedCall([http_error(503), "bad", "worse", "{}"])
    with set_testing(True):
        await retry_with_validation(call, PROMPT, [V.JsonObject()], RetryConfig(max_attempts=4))
    assert call.verdicts == [("reject", 2), ("reject", 3), ("accept", 4)]


class _BrokenCache(ScriptedCall):
    """A route whose cache hooks fail: the accept hook raises, the reject hook is async."""

    heard: list

    def accept(self, messages, **kwargs):
        raise RuntimeError("cache is down")

    async def reject(self, messages, **kwargs):
        await asyncio.sleep(0)
        self.heard = [*getattr(self, "heard", []), kwargs.get("temperature")]


async def test_a_failing_verdict_hook_does_not_end_the_call():
    """A hook that raises is logged and ignored; an async hook is awaited with the kwargs."""
    call = _BrokenCache(["bad", "{}"])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(), temperature=0.3)
    assert result.content == "{}"
    assert call.heard == [0.3]


async def test_callers_messages_are_never_mutated():
    """A route that edits what it is sent cannot change the caller's messages or later attempts."""
    original = copy.deepcopy(PROMPT)
    messages = copy.deepcopy(PROMPT)

    def vandal(msgs, **kw):
        msgs[1]["content"] = "EDITED"
        msgs.append({"role": "user", "content": "INJECTED"})
        msgs.pop(0)
        return "bad"

    call = ScriptedCall([vandal, GOOD])
    await retry_with_validation(call, messages, [V.JsonObject()], fast())
    assert messages == original
    assert call.requests[1].messages[:2] == original
    assert "INJECTED" not in str(call.requests[1].messages)


async def test_response_format_is_passed_through_to_every_attempt():
    """The caller's ``response_format`` goes out on every attempt; json_object is not a schema."""
    rf = {"type": "json_object"}
    call = ScriptedCall(["bad", "{}"])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(), response_format=rf)
    assert [r.kwargs["response_format"] for r in call.requests] == [rf, rf]
    assert not any(a.constrained for a in result.attempts)


@pytest.mark.parametrize("rf", [
    {"type": "json_schema", "json_schema": {"name": "p", "schema": Person.model_json_schema()}},
    {"type": "json_object", "schema": Person.model_json_schema()},
    Person,
], ids=["json_schema", "llama-schema", "pydantic-class"])
async def test_a_callers_schema_response_format_counts_as_constrained(rf):
    """A caller's schema ``response_format`` is sent as is and marks attempts constrained."""
    call = ScriptedCall([GOOD])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(), response_format=rf)
    assert call.requests[0].kwargs["response_format"] == rf
    assert result.attempts[0].constrained is True


async def test_constrained_stage_overrides_the_callers_response_format():
    """In the constrained stage the validators' schema replaces the caller's ``response_format``."""
    call = ScriptedCall(["bad", GOOD])
    cfg = fast(max_attempts_before_constrained=1)
    await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg,
                                response_format={"type": "json_object"})
    assert call.requests[0].kwargs["response_format"] == {"type": "json_object"}
    assert call.requests[1].kwargs["response_format"]["schema"] == Person.model_json_schema()


async def test_call_kwargs_are_passed_to_every_attempt():
    """``**call_kwargs`` (temperature, max_tokens, extra_headers) reach every request."""
    call = ScriptedCall(["bad", "{}"])
    await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(), temperature=0.2,
                                max_tokens=64, extra_headers={"X-Trace": "t1"})
    for r in call.requests:
        assert (r.kwargs["temperature"], r.kwargs["max_tokens"]) == (0.2, 64)
        assert r.kwargs["extra_headers"] == {"X-Trace": "t1"}
        assert "timeout" not in r.kwargs  # no attempt_timeout, no deadline: no timeout kwarg


# -- metrics and logging -----------------------------------------------------------------------

async def test_metrics_sum_the_attempts():
    """``result.metrics`` counts calls, failures, tokens and the stage reached."""
    call = ScriptedCall([http_error(503), reply("bad", tokens=(10, 4)),
                         reply(GOOD, tokens=(12, 6))])
    old = install()  # no process-wide hooks (the workbook installs RssHook when imported)
    try:
        with set_testing(True):
            result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)],
                                                 RetryConfig(max_attempts=3))
    finally:
        install(*old)
    m = result.metrics
    assert (m["api_calls"], m["total_api_calls"], m["validator_api_calls"]) == (3, 3, 0)
    assert (m["transport_errors"], m["validation_failures"]) == (1, 1)
    assert (m["tokens_in"], m["tokens_out"]) == (22, 10)
    assert m["stage_reached"] == "normal" and m["sleep_seconds"] == 0
    assert m["cache_hits"] == 0 and m["cache_hit_rate"] == 0.0 and m["cost"] == 0.0
    assert m["total_seconds"] == result.attempts[-1].end > 0
    assert m["accepted_with_warnings"] is False
    # No hook installed, none paid for: no RSS reading, no tracing.
    assert "rss_peak_bytes" not in m and "process_traced_peak_bytes" not in m
    assert all(a.rss_bytes == 0 for a in result.attempts)
    assert [a.number for a in result.attempts] == [1, 2, 3]
    assert all(a.start <= a.end for a in result.attempts)


async def test_trace_memory_adds_the_process_traced_peak():
    """``trace_memory=True`` adds ``process_traced_peak_bytes`` (named process-wide) to the metrics."""
    call = ScriptedCall([GOOD])
    result = await retry_with_validation(call, PROMPT, [V.JsonObject()], fast(trace_memory=True))
    assert result.metrics["process_traced_peak_bytes"] > 0
    assert not tracemalloc.is_tracing()  # the hook stopped what it started


async def test_calls_made_by_validators_are_counted_in_the_metrics():
    """A validator that makes its own call adds that call's API calls and tokens to the metrics."""
    judge_call = ScriptedCall([reply("YES", tokens=(30, 1))])
    depths = []

    class Judge:
        name = "judge"

        async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
            depths.append(context.depth)
            inner = await retry_with_validation(judge_call, [{"role": "user", "content": text}],
                                                [V.RegexMatch("YES")], fast(),
                                                depth=context.depth + 1)
            context.subresults.append(inner)
            return ValidationResult.ok()

    result = await retry_with_validation(ScriptedCall([GOOD]), PROMPT, [Judge()], fast())
    m = result.metrics
    assert (m["validator_api_calls"], m["total_api_calls"]) == (1, 2)
    assert m["validator_tokens_in"] == 30 and m["validator_tokens_out"] == 1
    assert depths == [0]
    assert judge_call.requests[0].messages == [{"role": "user", "content": GOOD}]


async def test_debug_mode_logs_each_attempt_and_the_end():
    """``debug_mode`` logs one line per attempt (stage, outcome, error) and the call's end."""
    lines: list[str] = []
    sink = logger.add(lambda msg: lines.append(str(msg)), level="DEBUG", format="{message}")
    try:
        call = ScriptedCall([http_error(503), "bad", "{}"])
        with set_testing(True):
            await retry_with_validation(call, PROMPT, [V.JsonObject()],
                                        RetryConfig(max_attempts=3, debug_mode=True))
    finally:
        logger.remove(sink)
    text = "".join(lines)
    assert "attempt 1 [normal] transport_error" in text and "ServiceUnavailableError(503)" in text
    assert "attempt 2 [normal] validation_failed" in text and 'validation=["invalid JSON' in text
    assert "attempt 3 [normal] ok" in text
    assert "call ended after 3 attempts" in text


# -- cancellation, exceptions, sync entry points -----------------------------------------------

async def test_cancel_during_backoff_ends_the_call_at_once():
    """Cancelling the task mid-backoff raises CancelledError promptly, with no further request."""
    call = ScriptedCall([http_error(503), "never"])
    cfg = RetryConfig(initial_delay=5, max_delay=5, jitter="none")
    task = asyncio.create_task(retry_with_validation(call, PROMPT, [], cfg))
    for _ in range(100):
        if call.calls:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)
    t = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t < 0.5
    assert call.calls == 1


async def test_cancel_during_an_attempt_is_not_retried():
    """Cancelling while the route is answering ends the call; it is not taken for a failure."""
    call = ScriptedCall([Delay(5.0, "late"), "never"])
    task = asyncio.create_task(retry_with_validation(call, PROMPT, [], fast()))
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.calls == 1


async def test_a_validator_that_raises_ends_the_call_with_its_record():
    """A validator bug is not a failed answer: the call ends after one request with
    ValidatorError, which keeps the attempt, the metrics and the exception as its cause."""

    class Buggy:
        name = "buggy"

        async def validate(self, text, context):
            raise ZeroDivisionError("validator bug")

    call = ScriptedCall(["answer", "never"])
    with pytest.raises(ValidatorError, match="'buggy' raised ZeroDivisionError: validator bug") as ei:
        await retry_with_validation(call, PROMPT, [Buggy()], fast())
    assert call.calls == 1 and call.verdicts == [("reject", 1)]  # unjudged: never served again
    err = ei.value
    assert isinstance(err.__cause__, ZeroDivisionError) and err.validator == "buggy"
    assert [a.text for a in err.attempts] == ["answer"] and err.metrics["api_calls"] == 1
    assert err.reason == "validator_error"


async def test_something_that_is_not_a_validator_is_a_config_error():
    """A validators list holding a non-validator raises ConfigError before any request."""
    call = ScriptedCall(["never"])
    with pytest.raises(ConfigError, match="is not a validator"):
        await retry_with_validation(call, PROMPT, ["not a validator"], fast())
    assert call.calls == 0


def test_sync_wrapper_from_sync_code():
    """``retry_with_validation_sync`` runs the loop from plain sync code."""
    call = ScriptedCall(["bad", GOOD])
    result = retry_with_validation_sync(call, PROMPT, [V.PydanticSchema(Person)], fast())
    assert result.parsed == Person(name="Ann", age=3) and call.calls == 2


async def test_sync_wrapper_inside_a_running_loop_runs_in_a_thread():
    """Inside a running event loop (Jupyter) the sync wrapper runs the call on another thread."""
    threads = []

    def where(messages, **kw):
        threads.append(threading.current_thread())
        return GOOD

    call = ScriptedCall([where])
    result = retry_with_validation_sync(call, PROMPT, [V.JsonObject()], fast(), temperature=1)
    assert result.parsed == {"name": "Ann", "age": 3}
    assert threads and threads[0] is not threading.current_thread()
    assert call.requests[0].kwargs["temperature"] == 1


async def test_run_sync_returns_the_coroutines_value_in_a_loop():
    """``run_sync`` returns a coroutine's value even when called inside a running loop."""

    async def seven():
        return 7

    assert run_sync(seven()) == 7


# -- test mode ---------------------------------------------------------------------------------

async def test_set_testing_attempts_caps_the_attempts():
    """``set_testing(True, attempts=2)`` stops after two attempts whatever ``max_attempts`` says."""
    call = ScriptedCall([http_error(503)] * 5)
    with set_testing(True, attempts=2):
        with pytest.raises(RetryExhaustedError) as info:
            await retry_with_validation(call, PROMPT, [], RetryConfig(max_attempts=5))
    assert call.calls == 2
    assert str(info.value).startswith("all 2 attempts failed")
    assert not is_testing() and MODE.attempts is None


async def test_set_testing_skips_the_sleeps_but_records_the_delays():
    """In test mode ``slept`` is 0 while ``scheduled_delay`` and ``retry_after`` are recorded."""
    call = ScriptedCall([http_error(429, headers={"retry-after": "30"}), http_error(503), "fine"])
    cfg = RetryConfig(initial_delay=0.5, max_delay=5, jitter="none", max_attempts=3)
    t = time.monotonic()
    with set_testing(True):
        result = await retry_with_validation(call, PROMPT, [], cfg)
    assert time.monotonic() - t < 1.0
    assert [a.scheduled_delay for a in result.attempts] == [0.0, 0.5, 1.0]
    assert [a.retry_after for a in result.attempts] == [None, 30.0, None]
    assert [a.slept for a in result.attempts] == [0.0, 0.0, 0.0]
    assert result.metrics["sleep_seconds"] == 0


async def test_set_testing_keeps_the_deadline_and_max_retry_after_rules():
    """Test mode skips sleeps but still ends calls whose planned wait breaks a limit."""
    with set_testing(True):
        call = ScriptedCall([http_error(503), "never"])
        cfg = RetryConfig(initial_delay=1, jitter="none", deadline=0.5)
        with pytest.raises(RetryExhaustedError) as info:
            await retry_with_validation(call, PROMPT, [], cfg)
        assert info.value.reason == "deadline"
        call = ScriptedCall([http_error(429, headers={"retry-after": "90"}), "never"])
        with pytest.raises(RetryExhaustedError) as info:
            await retry_with_validation(call, PROMPT, [], RetryConfig())
        assert info.value.reason == "retry_after"


async def test_leaving_set_testing_restores_real_sleeps():
    """After ``with set_testing(True)`` exits, backoff sleeps happen again."""
    with set_testing(True):
        pass
    call = ScriptedCall([http_error(503), "fine"])
    result = await retry_with_validation(call, PROMPT, [], tiny())
    assert result.attempts[1].slept >= 0.008


async def test_success_names_the_accepted_attempt():
    """A plain success says which attempt's answer it is (accepted_attempt)."""
    call = ScriptedCall(["nope", GOOD])
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], fast())
    assert result.accepted_attempt == 2 == result.attempts[-1].number


@pytest.mark.parametrize("status", [401, 403, 404, 429])
async def test_callers_own_schema_does_not_turn_errors_into_rejections(status):
    """With the caller's own schema response_format, a 401/403/404 ends the call after one
    request and a 429 backs off: neither is taken for a schema rejection."""
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": Person.model_json_schema()}}
    call = ScriptedCall([http_error(status)] * 3 + [GOOD])
    cfg = fast(max_attempts=4)
    if status == 429:
        result = await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg,
                                             response_format=fmt)
        assert call.calls == 4
        assert all(a.note is None for a in result.attempts)
        assert all(r.kwargs["response_format"] == fmt for r in call.requests)
    else:
        with pytest.raises(NonRetryableError):
            await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg, response_format=fmt)
        assert call.calls == 1


async def test_a_401_in_the_constrained_stage_is_not_a_schema_rejection():
    """K=0 and a 401: one request, NonRetryableError, and no note blaming response_format."""
    call = ScriptedCall([http_error(401), GOOD])
    with pytest.raises(NonRetryableError) as info:
        await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)],
                                    fast(max_attempts_before_constrained=0))
    assert call.calls == 1
    assert "response_format" in call.requests[0].kwargs
    assert info.value.attempts[0].note is None


async def test_nested_content_parts_do_not_leak_between_attempts():
    """A route that edits a message's content parts in place cannot reach the next attempt."""
    parts = [{"role": "user", "content": [{"type": "text", "text": ASK}]}]

    def editing_route(messages, **kw):
        messages[0]["content"].append({"type": "text", "text": "injected"})
        return reply("nope" if len(call.requests) == 1 else GOOD)

    call = ScriptedCall(then=editing_route)
    await retry_with_validation(call, parts, [V.PydanticSchema(Person)], fast())
    assert [len(r.messages[0]["content"]) for r in call.requests] == [1, 1]
    assert parts[0]["content"] == [{"type": "text", "text": ASK}]
