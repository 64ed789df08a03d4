"""The ladder options for small models: the schema from the first attempt (K=0), escalated
stages that start fresh, soft checks returned with warnings, and the grounding check.

Scripted replies come from the fault proxy over real HTTP; what was sent is read from its
journal. One test runs the whole extraction ladder on the embedded SmolLM2.
"""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from retrylib import (
    ConfigError,
    FallbackModel,
    HumanReviewNeededError,
    RetryConfig,
    RetryExhaustedError,
    make_call,
    retry_with_validation,
)
from retrylib import validators as V
from retrylib.testing.local import LocalModelServer
from retrylib.validators.base import ValidationContext

TEXT = "Ann Lee, 34, moved to Valencia in March."
PROMPT = [{"role": "system", "content": "Reply with JSON only."},
          {"role": "user", "content": f"Extract name (string), age (integer), city (string): {TEXT}"}]


class Person(BaseModel):
    name: str
    age: int
    city: str


def fast(**kw) -> RetryConfig:
    return RetryConfig(**{"initial_delay": 0.0, "max_delay": 0.0, **kw})


def reply(obj) -> str:
    return "reply:" + (obj if isinstance(obj, str) else json.dumps(obj))


GOOD = {"name": "Ann Lee", "age": 34, "city": "Valencia"}
UNGROUNDED = {"name": "Ann Lee", "age": 34, "city": "Madrid"}


# -- K = 0 -----------------------------------------------------------------------------------

async def test_k0_sends_the_schema_from_the_first_attempt(chaos_free):
    chaos_free.set_plan([reply(GOOD)])
    call = make_call("openai/primary", api_base=chaos_free.url)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)],
                                         fast(max_attempts=2, max_attempts_before_constrained=0))
    sent = chaos_free.journal()[0]["body"]["response_format"]
    assert sent == {"type": "json_object", "schema": Person.model_json_schema()}
    assert result.attempts[0].stage == "constrained" and result.attempts[0].constrained


def test_k0_keeps_the_ladder_order():
    cfg = RetryConfig(max_attempts=3, max_attempts_before_constrained=0,
                      max_attempts_before_fallback=1, fallback_models=["x/b"],
                      max_attempts_before_human=2)
    assert cfg.ladder() == [("normal", 0), ("constrained", 0), ("fallback", 1), ("human", 2)]
    assert cfg.stage_for(0) == "constrained"
    with pytest.raises(ConfigError, match="max_attempts_before_constrained"):
        RetryConfig(max_attempts_before_constrained=-1)
    with pytest.raises(ConfigError, match="escalation_history"):
        RetryConfig(escalation_history="sometimes")


async def test_caller_schema_marks_attempts_constrained(chaos_free):
    """A schema the caller sends as response_format is recorded as a constrained attempt."""
    chaos_free.set_plan([reply(GOOD)])
    call = make_call("openai/primary", api_base=chaos_free.url)
    fmt = {"type": "json_object", "schema": Person.model_json_schema()}
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], fast(),
                                         response_format=fmt)
    assert result.attempts[0].constrained
    assert chaos_free.journal()[0]["body"]["response_format"] == fmt


# -- escalation_history ----------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "sent"), [("keep", [2, 4, 4, 4]), ("fresh", [2, 2, 4, 2])])
async def test_escalation_history_on_the_wire(chaos_free, policy, sent):
    """``fresh``: the first attempt of the constrained and of the fallback stage sends only the
    caller's messages; a later attempt in a stage sees that stage's own failure."""
    chaos_free.set_plan([reply("no")] * 4)
    call = make_call("openai/primary", api_base=chaos_free.url)
    cfg = fast(max_attempts=4, max_attempts_before_constrained=1, max_attempts_before_fallback=3,
               fallback_models=[FallbackModel(model="openai/backup", api_base=chaos_free.url)],
               feedback_history="last", escalation_history=policy)
    with pytest.raises(RetryExhaustedError) as info:
        await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg)
    bodies = [e["body"] for e in chaos_free.journal()]
    assert [len(b["messages"]) for b in bodies] == sent
    assert [a.messages_sent for a in info.value.attempts] == sent
    assert [a.stage for a in info.value.attempts] == ["normal", "constrained", "constrained", "fallback"]
    assert bodies[0]["messages"] == PROMPT and bodies[1]["messages"][:2] == PROMPT


async def test_fresh_keeps_history_in_the_tool_stage(chaos_free):
    """The debugging tool needs the failures: the tool stage never starts fresh."""
    chaos_free.set_plan([reply("no")] * 3)
    call = make_call("openai/primary", api_base=chaos_free.url)
    cfg = fast(max_attempts=3, max_attempts_before_tool_use=1, debug_tool_name="dbg",
               debug_tool_mcp_config={"mcpServers": {}}, escalation_history="fresh")
    with pytest.raises(RetryExhaustedError):
        await retry_with_validation(call, PROMPT, [V.JsonObject()], cfg)
    bodies = [e["body"] for e in chaos_free.journal()]
    assert [len(b["messages"]) for b in bodies] == [2, 4, 6]
    assert "dbg" in bodies[1]["messages"][-1]["content"]


# -- Soft ------------------------------------------------------------------------------------

def grounded() -> V.Soft:
    return V.Soft(V.Grounded(TEXT, Person))


async def test_soft_failure_is_retried_then_passes(chaos_free):
    chaos_free.set_plan([reply(UNGROUNDED), reply(GOOD)])
    call = make_call("openai/primary", api_base=chaos_free.url)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person), grounded()],
                                         fast(max_attempts=3))
    assert [a.outcome for a in result.attempts] == ["validation_failed", "ok"]
    assert result.warnings == () and result.accepted_attempt == 2
    assert not result.metrics["accepted_with_warnings"]
    assert "'Madrid' does not appear in the text" in chaos_free.journal()[1]["body"]["messages"][-1]["content"]


async def test_soft_only_failures_return_the_best_answer_with_warnings(chaos_free):
    """Attempts run out (here: the human stage) with answers that failed only soft checks:
    the one with the fewest soft errors is returned, parsed, with its errors as warnings."""
    two_wrong = {"name": "Bo", "age": 34, "city": "Madrid"}
    chaos_free.set_plan([reply(two_wrong), reply(UNGROUNDED), reply("not json")])
    call = make_call("openai/primary", api_base=chaos_free.url)
    cfg = fast(max_attempts=3, max_attempts_before_human=3)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person), grounded()], cfg)
    assert result.accepted_attempt == 2 and result.metrics["accepted_with_warnings"]
    assert result.parsed == Person(**UNGROUNDED)
    assert result.warnings == ("field `city`: 'Madrid' does not appear in the text",)
    assert [a.outcome for a in result.attempts] == ["validation_failed"] * 3
    assert "warnings=1" in repr(result)


async def test_soft_tie_goes_to_the_latest_answer(chaos_free):
    other = {"name": "Ann Lee", "age": 34, "city": "Lisbon"}
    chaos_free.set_plan([reply(UNGROUNDED), reply(other)])
    call = make_call("openai/primary", api_base=chaos_free.url)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person), grounded()],
                                         fast(max_attempts=2))
    assert result.accepted_attempt == 2 and result.parsed.city == "Lisbon"


async def test_hard_failures_still_need_a_human(chaos_free):
    """Without an answer that passed every hard check, the ladder ends as before."""
    chaos_free.set_plan([reply({"name": "Ann Lee"}), reply("nope")])
    call = make_call("openai/primary", api_base=chaos_free.url)
    with pytest.raises(HumanReviewNeededError):
        await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person), grounded()],
                                    fast(max_attempts=2, max_attempts_before_human=2))


async def test_soft_and_hard_combine():
    """AllOf is soft only when every failure is soft; AnyOf when a failed alternative was."""
    ctx = ValidationContext()
    both = V.AllOf(V.PydanticSchema(Person), grounded())
    r = await both.validate(json.dumps(UNGROUNDED), ctx)
    assert not r.valid and r.soft and r.parsed == Person(**UNGROUNDED)
    r = await both.validate(json.dumps({"name": "Ann Lee"}), ctx)
    assert not r.valid and not r.soft and r.parsed is None
    assert (await both.validate(json.dumps(GOOD), ctx)).valid
    r = await V.AnyOf(V.RegexMatch("^zzz$"), grounded()).validate(json.dumps(UNGROUNDED), ctx)
    assert not r.valid and r.soft
    assert "json_schema" not in dir(V.AllOf(grounded()))  # a soft check never feeds the grammar
    with pytest.raises(ConfigError, match="not a validator"):
        V.Soft("grounded")


# -- Grounded --------------------------------------------------------------------------------

async def test_grounded_checks_strings_against_the_text():
    ctx = ValidationContext()

    class Event(BaseModel):
        title: str
        kind: str
        day: str
        note: str | None = None

    schema = Event.model_json_schema()
    schema["properties"]["kind"]["enum"] = ["talk", "workshop"]
    check = V.Grounded("The  TALK 'Rust at scale' is on 3 May.", schema)
    ok = {"title": "rust at SCALE", "kind": "workshop", "day": "2026-05-03", "note": None}
    assert (await check.validate(json.dumps(ok), ctx)).valid  # case, enum, date, null exempt
    bad = await check.validate(json.dumps({**ok, "title": "Go at scale", "note": " "}), ctx)
    assert bad.errors == ("field `title`: 'Go at scale' does not appear in the text",
                          "field `note` is empty; copy the value from the text")
    only = V.Grounded("Rust", fields=["title"])
    assert (await only.validate(json.dumps({"title": "Rust", "x": "elsewhere"}), ctx)).valid
    assert not (await check.validate("not json", ctx)).valid
    with pytest.raises(ConfigError, match="source must be a non-empty string"):
        V.Grounded("  ")


def test_grounded_and_soft_are_buildable_by_name():
    v = V.build_validator({"type": "soft", "params": {"validator": {
        "type": "grounded", "params": {"source": TEXT, "exempt": ["n/a"]}}}})
    assert isinstance(v, V.Soft) and isinstance(v.validator, V.Grounded)
    assert {"grounded", "soft"} <= set(V.known_types())
    with pytest.raises(ConfigError, match="unknown param"):
        V.build_validator({"type": "grounded", "params": {"text": TEXT}})


def test_gemma_is_served_with_its_chat_format():
    assert LocalModelServer("gemma3").extra_args[:2] == ("--chat_format", "gemma")
    assert LocalModelServer("gemma3", extra_args=("--chat_format", "chatml")).extra_args == (
        "--chat_format", "chatml")
    assert LocalModelServer("smollm2").extra_args == ()


# -- end to end on the embedded model --------------------------------------------------------

async def test_extraction_ladder_on_the_real_model(chaos, local_model):
    """SmolLM2 through the whole extraction ladder: schema from attempt 1, a soft grounding
    check, fresh escalation. Whatever the model says, the call returns a schema-valid,
    parsed answer (warnings only when grounding never passed), and every request carried
    the schema."""
    chaos.set_plan(["pass"] * 3)
    call = make_call(f"openai/{local_model.model}", api_base=chaos.url, max_tokens=60,
                     temperature=0)
    cfg = fast(max_attempts=3, max_attempts_before_constrained=0, max_attempts_before_human=3,
               escalation_history="fresh", feedback_history="last")
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person), grounded()], cfg)
    assert isinstance(result.parsed, Person)
    assert all(e["body"]["response_format"]["schema"] == Person.model_json_schema()
               for e in chaos.journal())
    assert all(a.constrained for a in result.attempts)
    if result.warnings:
        assert result.accepted_attempt is not None
        assert all("does not appear" in w or "is empty" in w for w in result.warnings)
    else:
        assert result.attempts[-1].outcome == "ok"
