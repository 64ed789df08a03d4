"""The runaway guard: after an answer cut at the token limit, the grammar bounds lists and strings.

- :func:`~retrylib.constrained.bound_runaways` as a table and under hypothesis: it only ever
  adds ``maxItems``/``maxLength`` (nothing is loosened or removed), every list and free
  string of the copy is bounded, and llama_cpp's converter still builds a grammar from it;
- in a subprocess, llama.cpp's C++ grammar built from a bounded schema admits a list at the
  bound and refuses one past it (``test_constrained_patterns.py`` is the probe script);
- the loop, over :class:`~retrylib.testing.ScriptedCall`: only constrained attempts after a
  cut answer send the bounded schema, and their note names the bounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from retrylib import FallbackModel, RetryConfig, retry_with_validation
from retrylib import validators as V
from retrylib.constrained import bound_runaways, grammar_safe_schema
from retrylib.errors import ConfigError
from retrylib.patterns import MAX_SPAN
from retrylib.testing import ScriptedCall, http_error, reply, set_testing

PROMPT = [{"role": "user", "content": "Invoice INV-9: 2 chairs at 45.00 USD each."}]
GOOD = ('{"number": "INV-9", "currency": "USD", "items": '
        '[{"description": "chairs", "quantity": 2, "unit_price": 45.0}]}')
CUT = '{"number": "INV-9", "currency": "USD", "items": [{"description": "chairs", "quan'
BOUNDED = ("runaway guard: /$defs/LineItem/properties/description maxLength=500; "
           "/properties/number maxLength=500; /properties/items maxItems=16")


class LineItem(BaseModel):
    description: str
    quantity: int
    unit_price: float


class Invoice(BaseModel):
    number: str
    currency: Literal["USD", "EUR", "GBP"]
    items: list[LineItem]


def fast(**kw: Any) -> RetryConfig:
    return RetryConfig(**{"max_attempts": 3, "initial_delay": 0.0, "jitter": "none",
                          "max_attempts_before_constrained": 0, **kw})


def sent_schema(request: Any) -> dict[str, Any]:
    return request.kwargs["response_format"]["schema"]


# -- bound_runaways, as a table ------------------------------------------------------------------

def test_an_invoice_gets_a_bound_on_its_list_and_its_free_strings_only():
    """The list and the two free strings are bounded; the enum, ints and floats are not."""
    safe, _ = grammar_safe_schema(Invoice.model_json_schema())
    bounded, added = bound_runaways(safe, 16, 500)
    assert added == ["/$defs/LineItem/properties/description maxLength=500",
                     "/properties/number maxLength=500", "/properties/items maxItems=16"]
    assert bounded["properties"]["items"] == {**safe["properties"]["items"], "maxItems": 16}
    assert bounded["properties"]["currency"] == safe["properties"]["currency"]
    line = bounded["$defs"]["LineItem"]["properties"]
    assert line["description"] == {"title": "Description", "type": "string", "maxLength": 500}
    assert line["quantity"] == safe["$defs"]["LineItem"]["properties"]["quantity"]
    assert safe == grammar_safe_schema(Invoice.model_json_schema())[0]  # not changed


@pytest.mark.parametrize(("node", "expected"), [
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 40}, None),  # a looser bound stays
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 2}, None),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 30},
     {"type": "array", "items": {"type": "integer"}, "minItems": 30, "maxItems": 30}),
    ({"items": {"type": "integer"}}, {"items": {"type": "integer"}, "maxItems": 16}),
    ({"type": "array"}, None),  # no item schema: the converter ignores maxItems there
    ({"type": "array", "prefixItems": [{"type": "integer"}]}, None),  # a tuple is bounded
    ({"type": "string", "maxLength": 2000}, None),
    ({"type": "string", "minLength": 700}, {"type": "string", "minLength": 700, "maxLength": 700}),
    ({"type": "string", "pattern": "^[a-z]*$"}, None),
    ({"type": "string", "enum": ["a", "b"]}, None),
    ({"const": "a"}, None),
    ({"type": "string", "format": "date"}, None),  # the grammar holds dates
    ({"type": "string", "format": "binary"}, {"type": "string", "format": "binary", "maxLength": 500}),
    ({"$ref": "#/$defs/X", "type": "string"}, None),  # the converter follows the $ref only
    ({"type": ["string", "null"]}, {"anyOf": [{"type": "string", "maxLength": 500},
                                              {"type": "null", "maxLength": 500}]}),
    ({"type": "integer"}, None),
    ({}, None),
], ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else str(v))
def test_what_gets_a_bound_and_what_is_left_alone(node, expected):
    """Each kind of node: bounded as shown, or (None) left exactly as it was."""
    schema = {"type": "object", "properties": {"v": node}}
    bounded, added = bound_runaways(schema, 16, 500)
    assert bounded["properties"]["v"] == (node if expected is None else expected)
    assert bool(added) == (expected is not None)


def test_none_switches_either_bound_off_and_a_bound_outside_the_grammars_range_is_refused():
    """None leaves lists (or strings) alone; 0 and more than MAX_SPAN raise ValueError."""
    schema = {"type": "array", "items": {"type": "string"}}
    assert bound_runaways(schema, None, 9) == (
        {"type": "array", "items": {"type": "string", "maxLength": 9}}, ["/items maxLength=9"])
    assert bound_runaways(schema, 3, None) == ({**schema, "maxItems": 3}, ["/ maxItems=3"])
    assert bound_runaways(schema, None, None) == (schema, [])
    for bad in (0, MAX_SPAN + 1):
        with pytest.raises(ValueError, match="1 to 1000"):
            bound_runaways(schema, bad, 9)


# -- bound_runaways, under hypothesis -------------------------------------------------------------

_strings = st.fixed_dictionaries({"type": st.just("string")}, optional={
    "minLength": st.integers(0, 900), "maxLength": st.integers(900, 1000),
    "pattern": st.sampled_from(["^[a-z]+$", "^[0-9]{3}$"]), "format": st.sampled_from(["date", "uuid"]),
    "enum": st.just(["a", "b"])})
_leaves = st.one_of(_strings, st.sampled_from([{"type": "integer"}, {"type": "number"},
                                               {"type": "boolean"}, {"const": 1}]))


def _containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    arrays = st.builds(lambda items, bounds: {"type": "array", "items": items, **bounds}, children,
                       st.fixed_dictionaries({}, optional={"minItems": st.integers(0, 40),
                                                           "maxItems": st.integers(40, 1000)}))
    objects = st.builds(lambda props: {"type": "object", "properties": props,
                                       "required": sorted(props)},
                        st.dictionaries(st.sampled_from(["a", "items", "type", "b"]), children,
                                        min_size=1, max_size=3))
    return arrays | objects


SCHEMAS = st.recursive(_leaves, _containers, max_leaves=8).filter(lambda s: s.get("type") == "object")


def _pairs(original: Any, bounded: Any):
    """Every (original, bounded) node pair, walked in parallel."""
    if isinstance(original, dict):
        yield original, bounded
        for key in ("items",):
            if isinstance(original.get(key), dict):
                yield from _pairs(original[key], bounded[key])
        for name, sub in original.get("properties", {}).items():
            yield from _pairs(sub, bounded["properties"][name])


@settings(max_examples=150, deadline=None)
@given(schema=SCHEMAS, max_items=st.integers(1, MAX_SPAN), max_length=st.integers(1, MAX_SPAN))
def test_a_bound_is_only_ever_added_and_every_list_and_free_string_ends_bounded(
        schema, max_items, max_length):
    """Each node of the copy is the original node plus at most maxItems/maxLength: nothing
    is removed or loosened; every list and free string has a bound; none below its minimum,
    none more than MAX_SPAN above it; and a second pass adds nothing."""
    before = json.dumps(schema)
    bounded, added = bound_runaways(schema, max_items, max_length)
    assert json.dumps(schema) == before
    count = 0
    for o, b in _pairs(schema, bounded):
        new = {k: v for k, v in b.items() if k not in o}
        assert set(new) <= {"maxItems", "maxLength"}
        assert all(b[k] == o[k] for k in o if not isinstance(o[k], dict)), (o, b)
        count += len(new)
        if b.get("type") == "array":
            assert b["maxItems"] == o.get("maxItems", max(max_items, o.get("minItems", 0)))
            assert b["maxItems"] - b.get("minItems", 0) <= MAX_SPAN
        free = b.get("type") == "string" and not {"pattern", "format", "enum"} & set(b)
        if free:
            assert b["maxLength"] == o.get("maxLength", max(max_length, o.get("minLength", 0)))
            assert b["maxLength"] - b.get("minLength", 0) <= MAX_SPAN
        elif b.get("type") == "string":
            assert b == o
    assert count == len(added)
    assert bound_runaways(bounded, max_items, max_length) == (bounded, [])


@settings(max_examples=60, deadline=None)
@given(schema=SCHEMAS)
def test_llama_cpps_converter_builds_a_grammar_from_every_bounded_schema(schema):
    """The server's own conversion of the bounded copy is a real grammar, not plain JSON."""
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import _grammar_for_json_schema
    from llama_cpp.llama_grammar import JSON_GBNF

    bounded, _ = bound_runaways(schema, 16, 500)
    assert _grammar_for_json_schema(json.dumps(bounded))._grammar != JSON_GBNF


# -- llama.cpp's C++ grammar, in a subprocess ----------------------------------------------------

def _probe(jobs: list[dict], samples: int) -> tuple[int, list[dict], str]:
    """test_constrained_patterns.py as the probe: it builds each job's grammar as the
    server does, feeds it the job's documents and walks it at random."""
    pytest.importorskip("llama_cpp")
    probe = Path(__file__).with_name("test_constrained_patterns.py")
    proc = subprocess.run([sys.executable, str(probe), str(samples)], input=json.dumps(jobs),
                          capture_output=True, text=True, timeout=600)
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, reports, proc.stderr[-3000:]


def test_llama_cpps_grammar_holds_the_bounds_and_builds_with_the_defaults():
    """Two items and eight characters pass, a third item or a ninth character does not, and
    random walks give JSON within the bounds; the default bounds build too."""
    jsonschema = pytest.importorskip("jsonschema")
    safe, _ = grammar_safe_schema(Invoice.model_json_schema())
    small, _ = bound_runaways(safe, 2, 8)

    def doc(descriptions: list[str], number: str = "INV-9") -> str:
        items = [{"description": d, "quantity": 1, "unit_price": 2.5} for d in descriptions]
        return json.dumps({"number": number, "currency": "USD", "items": items})

    good = [doc(["chairs", "desk"]), doc(["12345678"]), doc([], number="12345678")]
    bad = [doc(["chairs", "desk", "lamp"]), doc(["123456789"]), doc([], number="123456789")]
    default, _ = bound_runaways(safe, RetryConfig().runaway_max_items,
                                RetryConfig().runaway_max_length)
    code, reports, err = _probe([{"schema": small, "docs": good + bad},
                                 {"schema": default, "docs": good}], samples=3)
    assert code == 0, err
    assert [r["job"] for r in reports if r.get("parsed")] == [0, 1]
    admitted = {(r["job"], r["doc"]): r["admitted"] for r in reports if "doc" in r}
    assert [admitted[0, d] for d in good + bad] == [True] * 3 + [False] * 3
    assert all(admitted[1, d] for d in good)
    for r in reports:
        if "text" in r and r["job"] == 0:
            jsonschema.validate(json.loads(r["text"]), small)


# -- the loop ------------------------------------------------------------------------------------

async def test_after_a_cut_answer_the_next_constrained_attempt_sends_the_bounded_schema():
    """Attempt 1 (cut at max_tokens) sent the schema unbounded; attempt 2 sends it bounded
    and its note names the bounds; the validators still judge against the original."""
    call = ScriptedCall([reply(CUT, finish_reason="length"), GOOD])
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Invoice)], fast())
    first, second = (sent_schema(r) for r in call.requests)
    safe, _ = grammar_safe_schema(Invoice.model_json_schema())
    assert first == safe and "maxItems" not in first["properties"]["items"]
    assert second == bound_runaways(safe, 16, 500)[0]
    assert second["properties"]["items"]["maxItems"] == 16
    assert result.attempts[0].note is None
    assert result.attempts[1].note == (f"{BOUNDED} (attempt 1's answer was cut at the token "
                                       "limit)")
    assert result.parsed == Invoice.model_validate_json(GOOD)


async def test_an_answer_that_failed_without_being_cut_changes_nothing():
    """A wrong but complete answer: the retry sends the same unbounded schema, no note."""
    call = ScriptedCall([reply('{"number": 1}'), GOOD])
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Invoice)], fast())
    assert sent_schema(call.requests[0]) == sent_schema(call.requests[1])
    assert [a.note for a in result.attempts] == [None, None]


async def test_the_guard_stays_on_for_the_rest_of_the_call_and_goes_to_the_fallback_model():
    """K=0, F=1: the fallback model's attempt after a cut answer is bounded, and so is the
    attempt after that, though its predecessor stopped normally; a 503 in between too."""
    call = ScriptedCall([reply(CUT, finish_reason="length"), http_error(503), "{}", GOOD])
    cfg = fast(max_attempts=4, max_attempts_before_fallback=1,
               fallback_models=[FallbackModel(model="openai/other")])
    with set_testing(True):
        result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Invoice)], cfg)
    assert ["maxItems" in sent_schema(r)["properties"]["items"] for r in call.requests] == [
        False, True, True, True]
    assert [r.kwargs.get("model") for r in call.requests][1:] == ["openai/other"] * 3
    assert all(a.note and a.note.startswith(BOUNDED) for a in result.attempts[1:])


async def test_a_cut_answer_in_the_normal_stage_bounds_the_first_constrained_attempt():
    """K=1: the plain attempt is cut; the constrained stage's first request is bounded."""
    call = ScriptedCall([reply(CUT, finish_reason="length"), GOOD])
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Invoice)],
                                         fast(max_attempts_before_constrained=1))
    assert "response_format" not in call.requests[0].kwargs
    assert sent_schema(call.requests[1])["properties"]["items"]["maxItems"] == 16
    assert [a.stage for a in result.attempts] == ["normal", "constrained"]


async def test_none_switches_the_guard_off_and_the_bounds_are_the_configs():
    """Both bounds None: unbounded after a cut too; one bound set: only that one is added."""
    call = ScriptedCall([reply(CUT, finish_reason="length"), GOOD])
    cfg = fast(runaway_max_items=None, runaway_max_length=None)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Invoice)], cfg)
    assert sent_schema(call.requests[0]) == sent_schema(call.requests[1])
    assert result.attempts[1].note is None
    call = ScriptedCall([reply(CUT, finish_reason="length"), GOOD])
    cfg = fast(runaway_max_items=3, runaway_max_length=None)
    result = await retry_with_validation(call, PROMPT, [V.PydanticSchema(Invoice)], cfg)
    assert result.attempts[1].note == ("runaway guard: /properties/items maxItems=3 (attempt "
                                       "1's answer was cut at the token limit)")


@pytest.mark.parametrize("bad", [0, -1, MAX_SPAN + 1, 2.5, True, "many", float("inf")])
def test_a_bound_that_is_not_an_int_from_1_to_1000_is_a_config_error(bad):
    """Zero, negatives, more than llama.cpp's grammar holds, fractions, bools, text, inf."""
    for name in ("runaway_max_items", "runaway_max_length"):
        with pytest.raises(ConfigError, match=name):
            RetryConfig(**{name: bad})
    assert RetryConfig(runaway_max_items=None, runaway_max_length=MAX_SPAN).runaway_max_length == MAX_SPAN
