"""The zero-call repair (``repair_json``): a near-JSON answer mended by json-repair is the
answer when it passes every validator, with no extra call, and the record says so."""

from __future__ import annotations

from pydantic import BaseModel

from retrylib import RetryConfig, retry_with_validation
from retrylib import validators as V
from retrylib.testing import ScriptedCall

PROMPT = [{"role": "user", "content": "Ann, 3, as JSON with name and age."}]


class Person(BaseModel):
    name: str
    age: int


def cfg(**kw):
    return RetryConfig(**{"max_attempts": 3, "initial_delay": 0, "max_delay": 0, **kw})


async def test_a_near_json_answer_is_repaired_without_a_call():
    """Single quotes, a trailing comma and prose around it: repaired, parsed, one call."""
    call = ScriptedCall(["Sure! {'name': 'Ann', 'age': 3,} Hope that helps."])
    r = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg(repair_json=True))
    assert call.calls == 1 and r.parsed == Person(name="Ann", age=3)
    assert r.content == '{"name": "Ann", "age": 3}'
    assert "repaired by json-repair" in (r.attempts[0].note or "")
    assert r.attempts[0].outcome == "ok" and call.verdicts == [("accept", 1)]


async def test_repair_is_off_by_default():
    """Without repair_json the near-JSON answer is re-asked."""
    call = ScriptedCall(["{'name': 'Ann', 'age': 3,}", '{"name": "Ann", "age": 3}'])
    r = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg())
    assert call.calls == 2 and r.attempts[0].outcome == "validation_failed"


async def test_a_repair_that_still_fails_is_re_asked_with_the_original_errors():
    """A repaired text that fails the schema is not taken; the re-ask quotes the first errors."""
    call = ScriptedCall(["{'name': 'Ann',}", '{"name": "Ann", "age": 3}'])
    r = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg(repair_json=True))
    assert call.calls == 2 and r.attempts[0].text == "{'name': 'Ann',}"
    assert "repaired" not in (r.attempts[0].note or "")
    assert "JSON" in call.requests[1].messages[-1]["content"]
