"""A schema's definitions and references for the grammar: renamed, hoisted, and recursion
unrolled to a depth (the runaway guard's third bound).

- :func:`~retrylib.schema_refs.unroll_recursion` as a table (trees, optional and mutual
  recursion, lists that may not be empty, definitions that lead to a recursive one) and
  under hypothesis: every instance the unrolled copy admits is one the original admits, and
  every instance no deeper than the bound is admitted;
- llama_cpp's converter builds a grammar from each unrolled copy;
- the loop over :class:`~retrylib.testing.ScriptedCall`: after a cut answer, the next
  constrained attempt sends the unrolled schema, and its note says so;
- the real SmolLM2: a family tree that nests until ``max_tokens`` on the first attempt ends
  valid on the second.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from retrylib import RetryConfig, retry_with_validation
from retrylib import validators as V
from retrylib.constrained import bound_runaways, grammar_safe_schema
from retrylib.errors import ConfigError
from retrylib.schema_refs import MAX_DEPTH, recursive_defs, unroll_recursion
from retrylib.testing import ScriptedCall, reply


class Node(BaseModel):
    name: str
    kids: list[Node] = []


class Person(BaseModel):
    name: str
    best_friend: Person | None = None


class Dept(BaseModel):
    title: str
    teams: list[Team] = []


class Team(BaseModel):
    lead: str
    depts: list[Dept] = []


class Chart(BaseModel):
    company: str
    root: Node


def schema(model: type[BaseModel]) -> dict[str, Any]:
    return grammar_safe_schema(model.model_json_schema())[0]


def depth(tree: dict[str, Any]) -> int:
    """Levels of ``tree`` below the top."""
    return max((1 + depth(k) for k in tree.get("kids", [])), default=0)


def tree_of(levels: int) -> dict[str, Any]:
    return {"name": f"n{levels}", "kids": [tree_of(levels - 1)] if levels else []}


# -- unroll_recursion, as a table ----------------------------------------------------------------

def test_a_tree_gets_one_copy_per_level_and_the_last_level_has_no_kids():
    unrolled, notes = unroll_recursion(schema(Node), 2)
    assert notes == ["/$defs/Node unrolled to depth 2"]
    assert sorted(unrolled["$defs"]) == ["Node-d1", "Node-d2"]  # the original is unused now
    assert unrolled["properties"]["kids"]["items"] == {"$ref": "#/$defs/Node-d1"}
    assert unrolled["$defs"]["Node-d1"]["properties"]["kids"]["items"] == {"$ref": "#/$defs/Node-d2"}
    leaf = unrolled["$defs"]["Node-d2"]["properties"]["kids"]
    assert leaf["maxItems"] == 0 and leaf["items"] == {"type": "null"}
    for levels, admitted in ((0, True), (2, True), (3, False)):
        assert jsonschema.Draft202012Validator(unrolled).is_valid(tree_of(levels)) is admitted
        assert jsonschema.Draft202012Validator(schema(Node)).is_valid(tree_of(levels))


def test_an_optional_recursion_loses_its_alternative_and_a_mutual_one_is_unrolled_as_a_pair():
    unrolled, _ = unroll_recursion(schema(Person), 1)
    last = unrolled["$defs"]["Person-d1"]["properties"]["best_friend"]
    assert last["anyOf"] == [{"type": "null"}]
    v = jsonschema.Draft202012Validator(unrolled)
    assert v.is_valid({"name": "a", "best_friend": {"name": "b", "best_friend": None}})
    assert not v.is_valid({"name": "a", "best_friend": {"name": "b", "best_friend": {"name": "c"}}})
    unrolled, notes = unroll_recursion(schema(Dept), 3)
    assert notes == ["/$defs/Dept unrolled to depth 3", "/$defs/Team unrolled to depth 3"]
    v = jsonschema.Draft202012Validator(unrolled)
    # each reference counts a level: Team (1), Dept (2), Team (3) below the top Dept
    ok = {"title": "a", "teams": [{"lead": "b", "depts": [{"title": "c", "teams": [
        {"lead": "d", "depts": []}]}]}]}
    deep = {"title": "a", "teams": [{"lead": "b", "depts": [{"title": "c", "teams": [
        {"lead": "d", "depts": [{"title": "e"}]}]}]}]}
    assert v.is_valid(ok) and not v.is_valid(deep)


def test_a_definition_that_leads_to_a_recursive_one_is_copied_and_the_cut_moves_up():
    """``Chart`` refers to ``Node`` through a property; a required recursion or a list that
    may not be empty cannot end at the cut, so the cut moves to where the schema can end."""
    unrolled, _ = unroll_recursion(schema(Chart), 1)
    assert unrolled["properties"]["root"] == {"$ref": "#/$defs/Node-d1"}
    assert unrolled["$defs"]["Node-d1"]["properties"]["kids"]["maxItems"] == 0
    must = {"type": "object", "required": ["next"], "properties": {"next": {"$ref": "#/$defs/L"}},
            "$defs": {"L": {"type": "object", "properties": {
                "v": {"type": "integer"},
                "more": {"type": "array", "items": {"$ref": "#/$defs/L"}},
                "next": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/L"}}}}}}
    unrolled, _ = unroll_recursion(must, 1)
    last = unrolled["$defs"]["L-d1"]["properties"]
    assert last["more"]["maxItems"] == 0 and "next" not in last  # optional: left out
    loop = {"$ref": "#/$defs/A", "$defs": {"A": {"type": "object", "required": ["a"],
                                                 "properties": {"a": {"$ref": "#/$defs/A"}}}}}
    assert unroll_recursion(loop, 2) == (loop, [])  # nothing can end it: left as it was


def test_a_schema_without_recursion_comes_back_as_it_is():
    class Flat(BaseModel):
        a: int
        b: list[str]

    s = schema(Flat)
    assert recursive_defs(s) == set() and unroll_recursion(s, 3) == (s, [])
    assert bound_runaways(s, None, None, 3) == (s, [])


def test_the_depth_bound_is_checked():
    for bad in (0, MAX_DEPTH + 1):
        with pytest.raises(ValueError, match="depth"):
            bound_runaways(schema(Node), 16, 500, bad)
    for bad in (0, -1, MAX_DEPTH + 1, 2.5, True, "deep"):
        with pytest.raises(ConfigError, match="runaway_max_depth"):
            RetryConfig(runaway_max_depth=bad)
    assert RetryConfig().runaway_max_depth == 4 and RetryConfig(runaway_max_depth=None)


@settings(max_examples=80, deadline=None)
@given(levels=st.integers(0, 6), bound=st.integers(1, 5), data=st.data())
def test_what_the_copy_admits_the_original_admits_and_shallow_trees_stay_admitted(
        levels, bound, data):
    def grow(n: int) -> Any:
        kids = st.lists(st.deferred(lambda: grow(n - 1)), max_size=2) if n else st.just([])
        return st.fixed_dictionaries({"name": st.text(max_size=3), "kids": kids})

    tree = data.draw(grow(levels))
    unrolled, _ = unroll_recursion(schema(Node), bound)
    admitted = jsonschema.Draft202012Validator(unrolled).is_valid(tree)
    assert jsonschema.Draft202012Validator(schema(Node)).is_valid(tree)
    assert admitted == (depth(tree) <= bound)
    if admitted:
        Node.model_validate(tree)


@pytest.mark.parametrize("model", [Node, Person, Dept, Chart])
def test_llama_cpps_converter_builds_a_grammar_from_every_unrolled_schema(model):
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import _grammar_for_json_schema
    from llama_cpp.llama_grammar import JSON_GBNF

    bounded, _ = bound_runaways(schema(model), 16, 500, 3)
    grammar = _grammar_for_json_schema(json.dumps(bounded))._grammar
    assert grammar != JSON_GBNF and "-d3" in grammar


# -- the loop ------------------------------------------------------------------------------------

CUT = '{"name": "Ann", "kids": [{"name": "Bo", "kids": [{"name": "Cy", "kids": [{"na'
GOOD = '{"name": "Ann", "kids": [{"name": "Bo"}, {"name": "Cy"}]}'


async def test_after_a_cut_answer_the_next_attempt_sends_the_tree_unrolled():
    call = ScriptedCall([reply(CUT, finish_reason="length"), GOOD])
    cfg = RetryConfig(max_attempts=2, initial_delay=0, max_attempts_before_constrained=0,
                      runaway_max_depth=2)
    result = await retry_with_validation(call, [{"role": "user", "content": "A tree."}],
                                         [V.PydanticSchema(Node)], cfg)
    first, second = (r.kwargs["response_format"]["schema"] for r in call.requests)
    assert first == schema(Node) and second == bound_runaways(schema(Node), 16, 500, 2)[0]
    assert result.attempts[1].note.startswith("runaway guard: /$defs/Node unrolled to depth 2; ")
    assert result.parsed == Node.model_validate_json(GOOD)


# -- the real model ------------------------------------------------------------------------------

class Family(BaseModel):
    tree: Node


async def test_a_tree_that_runs_away_on_smollm2_ends_valid_under_the_depth_bound(local_model):
    """SmolLM2 under the tree's grammar invents generation after generation until
    ``max_tokens``; the second attempt, unrolled to 4 levels with lists of 3, closes."""
    from retrylib import make_call

    call = make_call(f"openai/{local_model.model}", api_base=local_model.api_base,
                     max_tokens=150, temperature=0)
    messages = [{"role": "user", "content": "The family tree: Ann has two children, Bo and Cy. "
                 "Give it as JSON: tree with name and kids."}]
    result = await retry_with_validation(call, messages, [V.PydanticSchema(Family)], RetryConfig(
        max_attempts=2, max_attempts_before_constrained=0, initial_delay=0, runaway_max_items=3))
    first, second = result.attempts
    assert first.finish_reason == "length" and first.outcome == "validation_failed"
    assert second.outcome == "ok" and "unrolled to depth 4" in second.note
    assert depth(result.parsed.tree.model_dump()) <= 4 and local_model.alive()
