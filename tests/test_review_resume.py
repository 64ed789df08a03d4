"""Resuming a reviewed call: each resolution, the claim, bad states, specs, the error's config.

Every call is a real ``retry_with_validation`` (or ``llm_call``) through a
:class:`ScriptedCall`; the same ScriptedCall usually serves the call before and after the
review, so ``call.requests`` is the whole transcript: what was sent before the human stage,
and the one request (or none) that resuming added.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest
from pydantic import BaseModel

from retrylib import (
    ConfigError,
    HumanReviewNeededError,
    NonRetryableError,
    RetryConfig,
    llm_call,
    retry_with_validation,
)
from retrylib import validators as V
from retrylib.review import (
    CaseNotFoundError,
    CaseStateError,
    InvalidAnswerError,
    SQLiteReviewStore,
    approve,
    reject,
    resolve,
    resume,
    resume_sync,
    retry,
    spec_of,
)
from retrylib.review.recorded import RecordedConfig
from retrylib.testing import Delay, ScriptedCall, http_error
from retrylib.validators.base import ValidationResult
from retrylib.validators.registry import build_validator

PROMPT = [{"role": "system", "content": "You answer in JSON."},
          {"role": "user", "content": "Give me a JSON object with a name."}]
GOOD = '{"name": "Ann"}'
CHECKS = [V.JsonObject(), V.FieldsPresent(["name"])]


class Person(BaseModel):
    name: str


class Shouty:
    """A validator of the user's own, with no registry spec."""

    name = "shouty"

    async def validate(self, text, context):
        return ValidationResult.ok() if text.isupper() else ValidationResult.fail("not upper case")


pytestmark = pytest.mark.usefixtures("no_sleeps")


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "review.db")


async def to_human(db, call, validators=CHECKS, **cfg) -> HumanReviewNeededError:
    """Run ``call`` into the human stage (M=2 by default), queued in ``db``."""
    config = RetryConfig(**{"max_attempts": 6, "max_attempts_before_human": 2, "review_store": db,
                            **cfg})
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, validators, config)
    assert info.value.case_id, info.value.review_error
    return info.value


# -- the four resolutions --------------------------------------------------------------------


async def test_resolved_answer_is_the_result_and_nothing_is_sent(db):
    """A resolved case returns the reviewer's answer, validated and parsed, as attempt 3
    (stage human); no request is made."""
    call = ScriptedCall(["bad one", "bad two"])
    exc = await to_human(db, call)
    resolve(db, exc.case_id, GOOD, reviewer="alice")
    result = await resume(exc.case_id, store=db, reviewer="bob")
    assert result.content == GOOD and result.parsed == {"name": "Ann"}
    assert [a.number for a in result.attempts] == [1, 2, 3] and result.accepted_attempt == 3
    human = result.attempts[-1]
    assert (human.stage, human.outcome, human.model, human.text) == ("human", "ok", "human:alice", GOOD)
    assert call.calls == 2 and result.metrics["api_calls"] == 2
    assert human.requests == 0 and sum(a.requests for a in result.attempts) == call.calls
    hr = result.metrics["human_review"]
    assert (hr["action"], hr["decided_by"], hr["resumed_by"]) == ("resolve", "alice", "bob")
    case = SQLiteReviewStore(db).get(exc.case_id)
    assert case.status == "closed" and case.outcome["accepted_attempt"] == 3
    assert [r["action"] for r in case.reviews] == ["resolve", "resume"]


async def test_invalid_answer_is_refused_now_and_at_resume(db):
    """resolve() refuses an answer that fails validation (the case stays open); one given
    with check=False is refused by resume() with the errors, and the case is open again."""
    exc = await to_human(db, ScriptedCall(["bad one", "bad two"]))
    with pytest.raises(InvalidAnswerError) as info:
        resolve(db, exc.case_id, '{"nom": "Ann"}')
    assert "missing field `name`" in str(info.value) and info.value.errors
    assert SQLiteReviewStore(db).get(exc.case_id).status == "open"
    resolve(db, exc.case_id, "still not json", check=False, reviewer="carol")
    with pytest.raises(InvalidAnswerError, match="invalid JSON"):
        await resume(exc.case_id, store=db)
    case = SQLiteReviewStore(db).get(exc.case_id)
    assert case.status == "open" and case.reviews[-1]["action"] == "refused"
    assert case.reviews[-1]["answer"] == "still not json"
    resolve(db, exc.case_id, GOOD)  # open again: a better answer is taken
    assert (await resume(exc.case_id, store=db)).content == GOOD


async def test_approved_case_returns_the_last_answer_marked(db):
    """An approved case returns the last answer as accepted (attempt 2), its validation
    errors as warnings, marked human-approved; no request is made."""
    call = ScriptedCall(["bad one", "bad two"])
    exc = await to_human(db, call)
    approve(db, exc.case_id, reviewer="dana", note="fine for a demo")
    result = await resume(exc.case_id, store=db)
    assert result.content == "bad two" and result.accepted_attempt == 2
    assert result.warnings == tuple(exc.validation_errors)
    assert result.metrics["human_review"]["action"] == "approve"
    assert result.metrics["accepted_with_warnings"] is True and call.calls == 2


class PaidCheck:
    """A validator that makes a model call of its own ($0.25, 5 + 2 tokens) per answer."""

    name = "paid"

    def validate(self, text, context):
        from retrylib import RetryResult

        context.subresults.append(RetryResult(content="", response=None, metrics={
            "total_api_calls": 1, "tokens_in": 5, "tokens_out": 2, "cost": 0.25}))
        return V.FieldsPresent(["name"]).validate(text, context)


async def test_what_the_validators_spent_before_the_review_stays_in_the_resumed_metrics(db):
    """Calls, tokens and cost of the validators' own calls before the human stage are in
    the metrics of the resumed call (the cost was dropped)."""
    call = ScriptedCall(["{}", "{}"])
    exc = await to_human(db, call, validators=[PaidCheck()])
    assert exc.metrics["validator_cost"] == 0.5
    approve(db, exc.case_id, reviewer="dana")
    result = await resume(exc.case_id, store=db, validators=[PaidCheck()])
    m = result.metrics
    assert (m["validator_api_calls"], m["validator_tokens_in"], m["validator_tokens_out"],
            m["validator_cost"]) == (2, 10, 4, 0.5)


async def test_retry_goes_on_with_the_guidance_and_resends_nothing(db):
    """A retried case makes exactly one new request: the conversation so far plus the last
    answer with feedback carrying the guidance; attempt numbers go on (3)."""
    call = ScriptedCall(["bad one", "bad two", GOOD])
    exc = await to_human(db, call)
    retry(db, exc.case_id, "Use the key name, and only JSON.", attempts=2, reviewer="erin")
    result = await resume(exc.case_id, store=db, call=call)
    assert result.content == GOOD and [a.number for a in result.attempts] == [1, 2, 3]
    assert call.calls == 3  # two before the review, one after: nothing sent again
    first, second, third = (r.messages for r in call.requests)
    assert third[: len(second)] == second  # the conversation goes on where it stopped
    assert third[len(second):][0] == {"role": "assistant", "content": "bad two"}
    assert "A human reviewer's guidance: Use the key name, and only JSON." in third[-1]["content"]
    assert "guidance" not in second[-1]["content"] and third not in (first, second)
    assert result.attempts[2].timestamp >= result.attempts[1].timestamp
    assert result.attempts[2].start >= result.attempts[1].end  # one time axis
    assert call.verdicts[-1] == ("accept", 3)
    assert SQLiteReviewStore(db).get(exc.case_id).status == "closed"


async def test_retry_that_fails_again_reopens_the_same_case(db):
    """The reviewer's allowance (2) runs out: the human stage again, same case id, round 2,
    all 4 attempts; resolving that round continues with attempt 5."""
    call = ScriptedCall(["a", "b", "c", "d"])
    exc = await to_human(db, call)
    retry(db, exc.case_id, "Reply with JSON.", attempts=2)
    with pytest.raises(HumanReviewNeededError) as info:
        await resume(exc.case_id, store=db, call=call)
    again = info.value
    assert again.case_id == exc.case_id and [a.number for a in again.attempts] == [1, 2, 3, 4]
    case = SQLiteReviewStore(db).get(exc.case_id)
    assert (case.status, case.round, len(case.attempts)) == ("open", 2, 4)
    assert [r["action"] for r in case.reviews] == ["retry", "resume"]
    resolve(db, exc.case_id, GOOD)
    result = await resume(exc.case_id, store=db)
    assert [a.number for a in result.attempts] == [1, 2, 3, 4, 5] and call.calls == 4


async def test_retry_that_ends_in_an_error_marks_the_case_failed(db):
    """A retried leg ending in a non-retryable error leaves the case failed, with the error."""
    call = ScriptedCall(["a", "b", http_error(401, route="proxy")])
    exc = await to_human(db, call)
    retry(db, exc.case_id, "Try again.")
    with pytest.raises(NonRetryableError):
        await resume(exc.case_id, store=db, call=call)
    case = SQLiteReviewStore(db).get(exc.case_id)
    assert case.status == "failed" and case.outcome["error"] == "NonRetryableError"
    with pytest.raises(CaseStateError, match="failed after it was resumed"):
        await resume(exc.case_id, store=db, call=call)


# -- states that cannot be resumed or decided --------------------------------------------------


async def test_rejected_open_and_closed_cases_are_refused(db):
    """Resuming an open, a rejected or a closed case, deciding one twice, or an unknown id:
    each a clear error naming the case and its state."""
    exc = await to_human(db, ScriptedCall(["a", "b"]))
    with pytest.raises(CaseStateError, match="still open"):
        await resume(exc.case_id, store=db)
    reject(db, exc.case_id, "the request itself was wrong", reviewer="frank")
    with pytest.raises(CaseStateError, match=r"was rejected by frank .*the request itself was wrong"):
        await resume(exc.case_id, store=db)
    with pytest.raises(CaseStateError, match="was rejected"):
        resolve(db, exc.case_id, GOOD)
    other = await to_human(db, ScriptedCall(["a", "b"]))
    resolve(db, other.case_id, GOOD, reviewer="gina")
    with pytest.raises(CaseStateError, match="already resolved by gina"):
        approve(db, other.case_id)
    await resume(other.case_id, store=db)
    with pytest.raises(CaseStateError, match="is closed"):
        await resume(other.case_id, store=db)
    with pytest.raises(CaseNotFoundError):
        await resume("000000000000", store=db)
    with pytest.raises(ConfigError, match="needs a reason"):
        reject(db, other.case_id, " ")


async def test_only_one_of_two_concurrent_resumes_runs(db):
    """Two resumes at once: one claims the case and runs; the other is refused, no request."""
    call = ScriptedCall(["a", "b", Delay(0.2, GOOD)])
    exc = await to_human(db, call)
    retry(db, exc.case_id, "JSON please.")
    outs = await asyncio.gather(resume(exc.case_id, store=db, call=call),
                                resume(exc.case_id, store=db, call=call), return_exceptions=True)
    kinds = sorted(type(o).__name__ for o in outs)
    assert kinds == ["CaseStateError", "RetryResult"] and call.calls == 3


async def test_a_cancelled_resume_releases_the_case(db):
    """Cancelling a resume puts the case back as it was; a later resume runs it."""
    call = ScriptedCall(["a", "b", Delay(float("inf"))])
    exc = await to_human(db, call)
    retry(db, exc.case_id, "JSON please.")
    task = asyncio.create_task(resume(exc.case_id, store=db, call=call))
    await asyncio.sleep(0.05)
    assert SQLiteReviewStore(db).get(exc.case_id).status == "resuming"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert SQLiteReviewStore(db).get(exc.case_id).status == "retry"
    assert (await resume(exc.case_id, store=db, call=ScriptedCall([GOOD]))).content == GOOD


async def test_force_takes_over_a_claim_left_by_a_dead_process(db):
    """A case left 'resuming' (its process died) is refused, unless force=True."""
    exc = await to_human(db, ScriptedCall(["a", "b"]))
    resolve(db, exc.case_id, GOOD)

    def died_mid_resume(case):
        case.status = "resuming"
        case.reviews.append({"action": "resume", "by": "ghost", "at": 0.0, "from": "resolved"})

    SQLiteReviewStore(db).modify(exc.case_id, died_mid_resume)
    with pytest.raises(CaseStateError, match="is being resumed"):
        await resume(exc.case_id, store=db)
    assert (await resume(exc.case_id, store=db, force=True)).content == GOOD


# -- validators without a spec, declarative calls, the error itself ---------------------------


async def test_validators_without_a_spec_are_named_and_must_be_given(db):
    """A validator of the user's own is stored by name; resume asks for validators= (named),
    and validates against the ones given."""
    exc = await to_human(db, ScriptedCall(["a", "b"]), validators=[Shouty()])
    case = resolve(db, exc.case_id, "ANN")
    assert case.reviews[-1]["checked"] is False
    assert SQLiteReviewStore(db).get(exc.case_id).validators[0]["spec"] is None
    with pytest.raises(ConfigError, match=r"shouty \(.*Shouty object.*\) were stored by name only"):
        await resume(exc.case_id, store=db)
    assert (await resume(exc.case_id, store=db, validators=[Shouty()])).content == "ANN"


def test_spec_of_rebuilds_registry_validators():
    """spec_of gives a JSON spec that builds an equal validator, or None where it cannot."""
    kept = [V.ResponseNotEmpty(), V.JsonString(), V.JsonObject(allow_array=True),
            V.FieldsPresent(["a.b", "c"]), V.FieldPresent("k", expected_value=3),
            V.PydanticSchema(Person), V.JsonSchema({"type": "object"}),
            V.RegexMatch(r"^\d+$", flags=2, mode="fullmatch", description="digits"),
            V.LengthRange(1, 9), V.PythonCode("f", [((1, 2), 3), "assert f(0, 0) == 0"]),
            V.LLMJudge("openai/m", "be kind", api_base="http://127.0.0.1:1/v1", temperature=0.0),
            V.AgentTask("check {TEXT_TO_VALIDATE}"), V.ContradictionCheck("text", "cats"),
            V.AllOf(V.JsonObject(), V.Soft(V.FieldsPresent("x"))), V.AnyOf(V.JsonString(), V.ResponseNotEmpty())]
    for v in kept:
        spec = spec_of(v)
        assert spec is not None, v
        assert repr(build_validator(spec)) == repr(v)

    class Local(BaseModel):
        x: int

    dropped = [Shouty(), V.PydanticSchema(Local), V.LLMJudge("openai/m", "r", api_key="sk-secret"),
               V.AgentTask("t", call=ScriptedCall()), V.PythonCode("f", [(1, (2, 3))]),
               V.AllOf(V.JsonObject(), Shouty())]
    assert [spec_of(v) for v in dropped] == [None] * len(dropped)


async def test_declarative_case_keeps_its_llm_config_and_resumes(db):
    """An llm_call case stores the original llm_config; resume rebuilds validators and the
    route from it (call= serving the model), and continues."""
    config = {"model": "openai/anything", "question": "A JSON object with a name?",
              "validation": [{"type": "field_present", "params": {"field_name": "name"}}],
              "retry_config": {"max_attempts": 2, "review_store": db}, "temperature": 0.1}
    call = ScriptedCall(["nope", "nope again", GOOD])
    with pytest.raises(HumanReviewNeededError) as info:
        await llm_call(config, call=call)
    exc = info.value
    case = SQLiteReviewStore(db).get(exc.case_id)
    assert case.llm_config == exc.context["original_llm_config"] and case.context["attempt"] == 1
    assert case.llm_config["messages"] == [{"role": "user", "content": config["question"]}]
    assert case.llm_config["retry_config"] == config["retry_config"]
    retry(db, exc.case_id, "Write the key name.", attempts=1)
    result = await resume(exc.case_id, store=db, call=call)
    assert result.parsed == {"name": "Ann"} and call.calls == 3
    assert call.requests[2].kwargs["temperature"] == 0.1
    assert "Write the key name." in call.requests[2].messages[-1]["content"]


async def test_config_is_a_retry_config_that_reads_as_the_dict(db):
    """exc.config is the RetryConfig and still reads as the old dict; both survive pickling."""
    exc = await to_human(db, ScriptedCall(["a", "b"]))
    assert isinstance(exc.config, RetryConfig) and isinstance(exc.config, RecordedConfig)
    assert exc.config.max_attempts_before_human == 2 == exc.config["max_attempts_before_human"]
    assert exc.config.get("nope", 7) == 7 and "seed" in exc.config
    assert exc.config == exc.config_dict == dict(exc.config)
    assert exc.config == RetryConfig(**exc.config_dict)
    back = pickle.loads(pickle.dumps(exc))
    assert back.case_id == exc.case_id and back.config == exc.config
    assert type(back.config) is RecordedConfig and back.review_error is None
    with pytest.raises(KeyError):
        exc.config["nope"]


async def test_a_store_that_cannot_be_written_does_not_hide_the_human_stage(tmp_path):
    """With an unusable store path the error is still raised, whole, with review_error set."""
    bad = str(tmp_path / "no such dir" / "r.db")
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(ScriptedCall(["a"]), PROMPT, CHECKS, RetryConfig(
            max_attempts=1, max_attempts_before_human=1, review_store=bad))
    assert info.value.case_id is None and "cannot be used" in info.value.review_error
    assert info.value.last_text == "a" and pickle.loads(pickle.dumps(info.value)).last_text == "a"


async def test_validator_calls_are_never_queued(db, monkeypatch):
    """A validator's own model call (depth > 0) is not queued, even with the env var set."""
    monkeypatch.setenv("RETRYLIB_REVIEW_STORE", db)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(ScriptedCall(["a"]), PROMPT, CHECKS, RetryConfig(
            max_attempts=1, max_attempts_before_human=1), depth=1)
    assert info.value.case_id is None


def test_resume_sync_from_plain_code(db):
    """resume_sync works from sync code (and the whole flow needs no event loop of its own)."""
    async def first():
        return await to_human(db, ScriptedCall(["a", "b"]))

    exc = asyncio.run(first())
    approve(db, exc.case_id)
    assert resume_sync(exc.case_id, store=db).content == "b"
