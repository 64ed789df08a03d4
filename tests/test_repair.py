"""The zero-call repair (``repair_json``): a near-JSON answer mended by json-repair is the
answer when it passes every validator, with no extra call, and the record says so."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
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


# -- raw control characters inside JSON strings: escaped, always (lossless) -----------------------

async def test_a_raw_newline_inside_a_string_is_escaped_and_the_answer_accepted():
    """JSON forbids a raw newline inside a string (json.loads: "Invalid control character"),
    and llama-cpp-python's grammar lets a model write one under a schema. It is escaped as
    JSON writes it, with no call and no option; the content is then strict JSON."""
    import json

    answer = '{\n  "name": "Ann\nLee",\n  "age": 3\n}'
    call = ScriptedCall([answer])
    r = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg())
    assert call.calls == 1 and r.parsed == Person(name="Ann\nLee", age=3)
    assert json.loads(r.content) == {"name": "Ann\nLee", "age": 3}
    assert r.content == '{\n  "name": "Ann\\nLee",\n  "age": 3\n}'
    assert r.attempts[0].note.startswith("raw control characters inside JSON strings escaped")
    assert r.attempts[0].text == r.content and call.verdicts == [("accept", 1)]


async def test_an_escaped_answer_that_still_fails_is_re_asked_as_sent():
    """Escaping does not make a wrong answer right: the re-ask replays the answer as sent,
    with its errors as sent (as a failed json-repair does)."""
    call = ScriptedCall(['{"name": "Ann\nLee"}', '{"name": "Ann", "age": 3}'])
    r = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Person)], cfg())
    assert call.calls == 2 and r.attempts[0].outcome == "validation_failed"
    assert r.attempts[0].note is None
    assert "Invalid control character" in r.attempts[0].validation_errors[0]
    assert call.requests[1].messages[-2]["content"] == '{"name": "Ann\nLee"}'


def _raw_json_string(value: str) -> str:
    """``value`` as a JSON string with its quotes and backslashes escaped, its control
    characters left raw (what such a model writes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=200)
@given(st.lists(st.text(alphabet=st.sampled_from('ab "\\\n\t\r\x00\x1f{}:,é')), max_size=4))
def test_escaping_recovers_every_value_and_leaves_valid_json_alone(values):
    import json

    from retrylib.validators.structured import escape_raw_controls

    doc = "[\n " + ",\n ".join(_raw_json_string(v) for v in values) + "\n]"
    fixed = escape_raw_controls(doc)
    if any(c < " " for v in values for c in v):
        assert fixed is not None and json.loads(fixed) == values
    else:
        assert fixed is None and json.loads(doc) == values
    assert escape_raw_controls(json.dumps(values, indent=2)) is None
