"""The validators: text, JSON, pydantic, JSON schema, Python code, the LLM judge, combinators
and the registry.

Code runs in real child processes; the judge talks HTTP to a real chaos proxy on loopback
(scripted ``reply:`` faults, so its verdicts are deterministic) and, once, to the embedded
model. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import time
import uuid
from typing import Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from retrylib import validators
from retrylib.errors import ConfigError
from retrylib.validators import (
    AllOf,
    AnyOf,
    FieldsPresent,
    JsonObject,
    JsonSchema,
    LengthRange,
    LLMJudge,
    PydanticSchema,
    PythonCode,
    RegexMatch,
    ResponseNotEmpty,
    ValidationContext,
    ValidationResult,
    Validator,
    build_validator,
    build_validators,
    known_types,
    load_json,
)


def ctx(**kw) -> ValidationContext:
    return ValidationContext(**kw)


async def check(v, text: str, **kw) -> ValidationResult:
    return await v.validate(text, ctx(**kw))


class Item(BaseModel):
    name: str
    qty: int = Field(ge=1)


class Order(BaseModel):
    id: int
    items: list[Item]
    status: Literal["open", "closed"]


ORDER = {"id": 7, "items": [{"name": "pen", "qty": 2}], "status": "open"}


# -- text -------------------------------------------------------------------------------------


async def test_not_empty_passes_text():
    """Any non-blank answer passes ResponseNotEmpty."""
    assert (await check(ResponseNotEmpty(), " hi ")).valid


@pytest.mark.parametrize(("text", "words"), [("", "empty"), (" \n\t ", "only whitespace")])
async def test_not_empty_rejects_blank(text, words):
    """Empty and whitespace-only answers fail, and the error says which."""
    r = await check(ResponseNotEmpty(), text)
    assert not r.valid and words in r.errors[0] and r.suggestions


async def test_regex_search_finds_pattern_anywhere():
    """Search mode passes when the pattern occurs anywhere; parsed is the match."""
    r = await check(RegexMatch(r"\d{4}-\d{2}-\d{2}"), "It was on 2024-03-01, I think.")
    assert r.valid and r.parsed == "2024-03-01"


async def test_regex_search_failure_names_description():
    """A failed search names the description given, not the raw pattern."""
    r = await check(RegexMatch(r"\d{4}-\d{2}-\d{2}", description="an ISO date"), "March 1st")
    assert not r.valid and "an ISO date" in r.errors[0]


async def test_regex_fullmatch_ignores_outer_whitespace_only():
    """Fullmatch accepts a trailing newline but not extra words."""
    v = RegexMatch(r"yes|no", flags=0, mode="fullmatch")
    assert (await check(v, "yes\n")).valid
    r = await check(v, "yes, definitely")
    assert not r.valid and "/yes|no/" in r.errors[0] and "as a whole" in r.errors[0]


async def test_regex_flags_apply():
    """Flags passed as re flags change the match."""
    import re

    assert (await check(RegexMatch("^ok$", flags=re.I, mode="fullmatch"), "OK")).valid


@pytest.mark.parametrize("kwargs", [{"pattern": "("}, {"pattern": "a", "mode": "match"}])
def test_regex_bad_config_raises(kwargs):
    """A pattern that does not compile, or an unknown mode, is a ConfigError."""
    with pytest.raises(ConfigError):
        RegexMatch(**kwargs)


async def test_length_range_bounds():
    """Inside the range passes; outside names the length and the bound."""
    v = LengthRange(min_chars=3, max_chars=5)
    assert (await check(v, "  abcd  ")).valid
    short, long = await check(v, "ab"), await check(v, "abcdefg")
    assert "2 characters" in short.errors[0] and "at least 3" in short.errors[0]
    assert "7 characters" in long.errors[0] and "at most 5" in long.errors[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_chars": 5, "max_chars": 4},
        {"min_chars": -1},
        {"max_chars": -2},
        {},
        {"min_chars": 1.5},
    ],
)
def test_length_range_bad_config_raises(kwargs):
    """min > max, negative bounds, no bound at all and non-integers are ConfigErrors."""
    with pytest.raises(ConfigError):
        LengthRange(**kwargs)


# -- JSON -----------------------------------------------------------------------------------


async def test_json_object_bare():
    """A bare JSON object passes and is parsed to a dict."""
    r = await check(JsonObject(), ' {"a": [1, 2], "b": null}\n')
    assert r.valid and r.parsed == {"a": [1, 2], "b": None}


@pytest.mark.parametrize(
    "text",
    [
        'Sure! Here it is:\n```json\n{"a": 1}\n```\nHope this helps.',
        '```\n{"a": 1}\n```',
        '```JSON\n{"a": 1}```',
        'Answer:\n```json\n{"a": 1}\n',  # the model never closed the fence
        '```python\nprint(1)\n```\nand the data:\n```json\n{"a": 1}\n```',
    ],
)
async def test_json_object_fenced(text):
    """A fenced block (json-labelled or plain, closed or not) with prose around it parses."""
    r = await check(JsonObject(), text)
    assert r.valid and r.parsed == {"a": 1}


async def test_json_bare_string_with_backticks_is_not_cut():
    """Bare JSON whose string value holds a fence is read whole, not as a fenced block."""
    data = {"code": "```python\nx = 1\n```"}
    assert (await check(JsonObject(), json.dumps(data))).parsed == data


async def test_json_error_names_position_and_suggests():
    """Invalid JSON names the decoder's error, line and column, and suggests a fix."""
    r = await check(JsonObject(), '{"a": 1,\n "b" 2}')
    assert not r.valid
    assert "Expecting ':' delimiter at line 2, column 6" in r.errors[0]
    assert r.suggestions[0].startswith("Reply with only a JSON object")


async def test_json_error_for_prose_before_json():
    """An answer that starts with prose says what it starts with."""
    r = await check(JsonObject(), 'Sure: {"a": 1}')
    assert "starts with 'Sure" in r.errors[0] and "line 1, column 1" in r.errors[0]


async def test_json_error_for_text_after_json():
    """Text after the JSON value is named as such."""
    r = await check(JsonObject(), '{"a": 1}\nDone!')
    assert "Extra data" in r.errors[0] and "text after the JSON" in r.errors[0]


async def test_json_error_inside_fence_names_block():
    """An error inside a fenced block says it is in the fenced block."""
    r = await check(JsonObject(), "```json\n{'a': 1}\n```")
    assert "in the fenced block" in r.errors[0] and "double quotes" in r.errors[0]


async def test_json_object_rejects_array_unless_allowed():
    """A top-level array fails by default and passes with allow_array=True."""
    r = await check(JsonObject(), "[1, 2]")
    assert not r.valid and "got a JSON array" in r.errors[0]
    assert (await check(JsonObject(allow_array=True), "[1, 2]")).parsed == [1, 2]


@pytest.mark.parametrize(("text", "kind"), [('"hi"', "string"), ("3", "number"), ("null", "null")])
async def test_json_object_rejects_scalars(text, kind):
    """A JSON scalar fails and the error names its type."""
    assert f"got a JSON {kind}" in (await check(JsonObject(), text)).errors[0]


async def test_json_object_empty_answer():
    """An empty answer fails with 'empty'."""
    assert "empty" in (await check(JsonObject(), "  ")).errors[0]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
prose = st.text(alphabet=string.ascii_letters + string.digits + " .,:!?\n", max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    data=st.dictionaries(st.text(), json_values, max_size=6),
    before=prose,
    after=prose,
    lang=st.sampled_from(["json", "", "JSON"]),
    indent=st.sampled_from([None, 2]),
    ascii_only=st.booleans(),
)
def test_property_any_dict_fenced_parses_back(data, before, after, lang, indent, ascii_only):
    """Any dict, serialized and fenced with prose around it, parses back equal."""
    body = json.dumps(data, indent=indent, ensure_ascii=ascii_only)
    r = load_json(f"{before}\n```{lang}\n{body}\n```\n{after}")
    assert r.valid and r.parsed == data
    assert load_json(body).parsed == data


# -- FieldsPresent ----------------------------------------------------------------------------


async def test_fields_present_nested_and_list_paths():
    """Dotted paths reach nested objects, numeric parts index arrays, null counts as present."""
    doc = {"a": {"b": {"c": None}}, "items": [{"name": "x"}, {"name": "y"}]}
    r = await check(FieldsPresent(["a.b.c", "items.1.name", "items"]), json.dumps(doc))
    assert r.valid and r.parsed == doc


async def test_fields_present_reports_each_missing_path():
    """Every missing path gets its own line saying where the path broke."""
    doc = {"a": {"x": 1}, "items": [{"name": "x"}], "n": 3}
    r = await check(
        FieldsPresent(["a.b", "items.4.name", "items.first", "n.k", "zzz", "a.x"]), json.dumps(doc)
    )
    assert not r.valid and len(r.errors) == 5
    assert r.errors[0] == "missing field `a.b` (`a` has keys: x)"
    assert "`items` has 1 item, so there is no index 4" in r.errors[1]
    assert "`items` is an array, so `first` must be an index" in r.errors[2]
    assert "`n` is a number, not an object" in r.errors[3]
    assert "missing field `zzz` (the object has keys: a, items, n)" == r.errors[4]
    assert "a.b, items.4.name" in r.suggestions[0]


async def test_fields_present_single_string_and_fences():
    """One field may be given as a string; the answer may be fenced like for JsonObject."""
    assert (await check(FieldsPresent("pass"), '```json\n{"pass": true}\n```')).valid


async def test_fields_present_parse_error_matches_json_object():
    """Unparseable JSON gives FieldsPresent exactly JsonObject's error (one shared parser)."""
    text = '{"pass": tru}'
    assert (await check(FieldsPresent(["pass"]), text)).errors == (
        await check(JsonObject(), text)
    ).errors


@pytest.mark.parametrize("fields", [[], ["a..b"], [""], [".a"], [3]])
def test_fields_present_bad_paths_raise(fields):
    """No fields, or a path with an empty part, is a ConfigError."""
    with pytest.raises(ConfigError):
        FieldsPresent(fields)


paths_key = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=5)
nested = st.recursive(
    st.integers(),
    lambda inner: st.dictionaries(paths_key, inner, min_size=1, max_size=3),
    max_leaves=8,
)


def leaf_paths(obj, prefix=()):
    if not isinstance(obj, dict):
        return [".".join(prefix)]
    return [p for k, v in obj.items() for p in leaf_paths(v, (*prefix, k))]


@settings(max_examples=100, deadline=None)
@given(doc=st.dictionaries(paths_key, nested, min_size=1, max_size=4))
def test_property_every_leaf_path_is_present(doc):
    """Every leaf path of a nested dict passes FieldsPresent."""
    r = asyncio.run(check(FieldsPresent(leaf_paths(doc)), json.dumps(doc)))
    assert r.valid, r.errors


# -- PydanticSchema -------------------------------------------------------------------------


async def test_pydantic_valid_gives_instance():
    """A matching fenced answer parses to the model instance."""
    r = await check(PydanticSchema(Order), f"Here:\n```json\n{json.dumps(ORDER)}\n```")
    assert r.valid and isinstance(r.parsed, Order) and r.parsed.items[0].qty == 2


async def test_pydantic_errors_one_line_each_with_loc_and_input():
    """Each pydantic error is one line naming the field path, the message and what it got."""
    bad = {"id": "abc", "items": [{"name": "pen", "qty": 0}], "status": "pending"}
    r = await check(PydanticSchema(Order), json.dumps(bad))
    assert not r.valid and len(r.errors) == 3
    assert (
        r.errors[0].startswith("field `id`: Input should be a valid integer")
        and "(got: 'abc')" in r.errors[0]
    )
    assert r.errors[1].startswith("field `items.0.qty`: Input should be greater than or equal to 1")
    assert r.errors[1].endswith("(got: 0)")
    assert r.errors[2].startswith("field `status`: Input should be 'open' or 'closed'")
    assert "required fields: id, items, status" in r.suggestions[0]


async def test_pydantic_missing_field_has_no_input_dump():
    """A missing field's line names it without dumping the whole parent object."""
    r = await check(PydanticSchema(Order), '{"id": 1, "status": "open"}')
    assert r.errors == ("field `items`: Field required",)


async def test_pydantic_long_input_is_shortened():
    """A long wrong input is shortened in the error line."""
    r = await check(PydanticSchema(Item), json.dumps({"name": ["x" * 500], "qty": 1}))
    assert "…" in r.errors[0] and len(r.errors[0]) < 150


async def test_pydantic_invalid_json_uses_shared_error():
    """Invalid JSON fails before pydantic, with the shared JSON error."""
    r = await check(PydanticSchema(Order), "{id: 1}")
    assert r.errors == (await check(JsonObject(), "{id: 1}")).errors


def test_pydantic_json_schema_and_bad_model():
    """json_schema() is the model's schema; a non-model is a ConfigError."""
    assert PydanticSchema(Order).json_schema() == Order.model_json_schema()
    with pytest.raises(ConfigError):
        PydanticSchema(dict)


# -- JsonSchema -----------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["name", "kind"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["cat", "dog"]},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


async def test_json_schema_valid():
    """A conforming answer passes; parsed is the dict."""
    r = await check(JsonSchema(SCHEMA), '{"name": "Rex", "kind": "dog", "tags": ["good"]}')
    assert r.valid and r.parsed["name"] == "Rex"


async def test_json_schema_violations_one_line_each():
    """Required keys, types, enums and nested items each give a line with the field path."""
    r = await check(JsonSchema(SCHEMA), '{"name": 5, "age": -1, "tags": ["a", 2], "kind": "cow"}')
    assert not r.valid and len(r.errors) == 4
    assert any(e.startswith("field `name`:") and "not of type 'string'" in e for e in r.errors)
    assert any(e.startswith("field `kind`:") and "is not one of" in e for e in r.errors)
    assert any(e.startswith("field `age`:") and "minimum" in e for e in r.errors)
    assert any(e.startswith("field `tags.1`:") for e in r.errors)
    missing = await check(JsonSchema(SCHEMA), '{"name": "Rex"}')
    assert missing.errors == ("field `(root)`: 'kind' is a required property",)


def test_json_schema_bad_schema_raises_and_exposes_schema():
    """An invalid schema is a ConfigError; json_schema() returns the schema."""
    with pytest.raises(ConfigError, match="invalid schema"):
        JsonSchema({"type": "objekt"})
    assert JsonSchema(SCHEMA).json_schema() is SCHEMA


def test_json_schema_exposure():
    """Only validators that know a schema have json_schema(); combinators have it if a child does."""
    for v in (
        JsonObject(),
        FieldsPresent("a"),
        ResponseNotEmpty(),
        RegexMatch("a"),
        LengthRange(1),
        PythonCode("f", []),
        LLMJudge("openai/x", "r"),
        AllOf(JsonObject(), ResponseNotEmpty()),
    ):
        assert not hasattr(v, "json_schema"), v
    assert AllOf(JsonObject(), PydanticSchema(Order)).json_schema() == Order.model_json_schema()
    both = AllOf(PydanticSchema(Order), JsonSchema(SCHEMA)).json_schema()
    assert both == {"allOf": [Order.model_json_schema(), SCHEMA]}
    assert AnyOf(PydanticSchema(Item), JsonSchema(SCHEMA)).json_schema() == {
        "anyOf": [Item.model_json_schema(), SCHEMA]
    }


# -- PythonCode -----------------------------------------------------------------------------

ADD_OK = "Here you go:\n```python\ndef add(a, b):\n    print('noise')\n    return a + b\n```\n"
ADD_BAD = "```python\ndef add(a, b):\n    return a - b\n```"


async def test_python_code_passes():
    """Correct code passes string tests and (args, expected) pairs; parsed is the code."""
    v = PythonCode(
        "add", ["assert add(1, 2) == 3", ((2, 2), 4), ({"a": 1, "b": 5}, 6), ([3, 4], 7)]
    )
    r = await check(v, ADD_OK)
    assert r.valid, r.errors
    assert r.parsed.startswith("def add(a, b):")


async def test_python_code_raw_code_without_fence():
    """An answer that is bare code works too."""
    assert (
        await check(PythonCode("add", [((1, 1), 2)]), "def add(a, b):\n    return a + b\n")
    ).valid


async def test_python_code_failing_tests_one_line_each_with_actual():
    """Each failing test is a line; pairs and simple asserts show the actual value."""
    v = PythonCode(
        "add", ["assert add(1, 2) == 3", ((2, 2), 4), ((1, 0), 1), "assert add(2, 1) == 0, 'no'"]
    )
    r = await check(v, ADD_BAD)
    assert r.errors == (
        "assert add(1, 2) == 3 failed: add(1, 2) returned -1",
        "add(2, 2) returned 0, expected 4",
        "assert add(2, 1) == 0, 'no' failed (no): add(2, 1) returned 1",
    )
    assert "Fix `add`" in r.suggestions[0]


async def test_python_code_exception_in_function():
    """A function that raises is reported with the exception type and message."""
    r = await check(PythonCode("inv", [(2, 0.5), (0, 0)]), "def inv(x):\n    return 1 / x\n")
    assert r.errors == ("inv(0) raised ZeroDivisionError: division by zero",)


async def test_python_code_syntax_error_names_line():
    """A syntax error names the line number and the message, before any process runs."""
    r = await check(
        PythonCode("add", ["assert add(1, 2) == 3"]), "import os\n\ndef add(a, b)\n    return a+b"
    )
    assert not r.valid and r.errors[0].startswith(
        "syntax error at line 3 of the code: expected ':'"
    )


async def test_python_code_missing_function():
    """Code that defines another function fails, naming what it does define."""
    r = await check(
        PythonCode("add", ["assert add(1, 2) == 3"]), "def plus(a, b):\n    return a + b"
    )
    assert r.errors == ("the code does not define a function named `add` (it defines: plus)",)


async def test_python_code_infinite_loop_times_out():
    """An infinite loop is killed after the timeout and reported as such."""
    v = PythonCode("add", ["assert add(1, 2) == 3", "assert add(5, 5) == 10"], timeout=1)
    t0 = time.monotonic()
    r = await check(v, "def add(a, b):\n    while a == 5:\n        pass\n    return a + b\n")
    took = time.monotonic() - t0
    assert r.errors == (
        "tests timed out after 1 s (infinite loop?) while running assert add(5, 5) == 10",
    )
    assert 0.9 < took < 5


async def test_python_code_top_level_loop_times_out():
    """A loop at module level times out 'while running the code itself'."""
    r = await check(
        PythonCode("f", [(1, 1)], timeout=1), "while True:\n    pass\ndef f(x):\n    return x\n"
    )
    assert r.errors == ("tests timed out after 1 s (infinite loop?) while running the code itself",)


async def test_python_code_exit_and_crash_are_contained():
    """sys.exit at import and os._exit in a test are reported, not inherited."""
    r = await check(PythonCode("f", [(1, 1)]), "def f(x):\n    return x\nraise SystemExit(2)\n")
    assert r.errors == ("running the code raised SystemExit: 2",)
    r = await check(PythonCode("f", [(1, 1)]), "import os\ndef f(x):\n    os._exit(3)\n")
    assert r.errors[0].startswith("the test process crashed (exit code 3) while running f(1)")


async def test_python_code_runs_in_separate_process():
    """The code runs in another process: its pid differs, and this process is untouched."""
    code = "import os\ndef pid():\n    return os.getpid()\n"
    r = await check(PythonCode("pid", [((), os.getpid())]), code)
    assert not r.valid and r.errors[0].startswith("pid() returned ")
    assert "pid" not in globals()


async def test_python_code_cancellation_kills_the_child():
    """Cancelling a validation mid-run kills the test process; nothing is left behind."""
    import psutil

    def runners():
        found = []
        for c in psutil.Process().children(recursive=True):
            try:
                if "runner.py" in " ".join(c.cmdline()):
                    found.append(c)
            except psutil.Error:
                continue
        return found

    v = PythonCode("f", [(1, 1)], timeout=60)
    task = asyncio.create_task(check(v, "def f(x):\n    while True:\n        pass\n"))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if runners():
            break
    else:
        pytest.fail("the test process never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runners() == []


async def test_python_code_prefers_block_defining_function():
    """With several fenced blocks, the one that defines the function is tested."""
    text = "Usage:\n```python\nprint(add(1, 2))\n```\nCode:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert (await check(PythonCode("add", [((1, 2), 3)]), text)).valid


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("add", ["assert add(1,"]), {}),
        (("add", [(1, 2, 3)]), {}),
        (("add", [((object(),), 1)]), {}),
        (("add", "assert add(1, 2) == 3"), {}),
        (("not a name", []), {}),
        (("add", []), {"timeout": 0}),
    ],
)
def test_python_code_bad_config_raises(args, kwargs):
    """Malformed tests, non-literal values, a bad name or timeout are ConfigErrors."""
    with pytest.raises(ConfigError):
        PythonCode(*args, **kwargs)


async def test_python_code_without_tests_checks_syntax_and_name():
    """With no tests, syntax and the function's presence are still checked."""
    assert (await check(PythonCode("f"), "def f():\n    pass\n")).valid
    assert not (await check(PythonCode("f"), "def g():\n    pass\n")).valid


# -- combinators ----------------------------------------------------------------------------


class CountingCostly:
    """A real validator that counts its calls and marks itself costly."""

    name = "counting"
    costly = True

    def __init__(self):
        self.calls = 0

    async def validate(self, text, context):
        self.calls += 1
        return ValidationResult.fail("costly said no")


async def test_all_of_collects_every_error():
    """AllOf reports the errors of every failing validator, in order."""
    v = AllOf(FieldsPresent(["a", "b"]), LengthRange(max_chars=5), RegexMatch("zzz"))
    r = await check(v, '{"c": 1}')
    assert len(r.errors) == 4
    assert (
        r.errors[0].startswith("missing field `a`")
        and "at most 5" in r.errors[2]
        and "zzz" in r.errors[3]
    )


async def test_all_of_dedupes_shared_json_error():
    """Not-JSON answers give one JSON error line, not one per JSON validator."""
    v = AllOf(JsonObject(), FieldsPresent(["a"]), PydanticSchema(Order), JsonSchema(SCHEMA))
    r = await check(v, "Sorry, I can't.")
    assert len(r.errors) == 1 and r.errors[0].startswith("invalid JSON") and len(r.suggestions) == 1


async def test_all_of_parsed_is_last_non_none():
    """parsed is the last non-None parsed value: the model, not the dict or None."""
    v = AllOf(JsonObject(), PydanticSchema(Order), ResponseNotEmpty(), LengthRange(max_chars=500))
    r = await check(v, json.dumps(ORDER))
    assert r.valid and isinstance(r.parsed, Order)


async def test_all_of_fail_fast_and_costly_skip():
    """fail_fast stops at the first failure; a costly validator is skipped after one failed."""
    costly = CountingCostly()
    r = await check(AllOf(JsonObject(), costly), "nope")
    assert costly.calls == 0 and len(r.errors) == 1
    r = await check(AllOf(JsonObject(), costly), "{}")
    assert costly.calls == 1 and r.errors == ("costly said no",)
    r = await check(AllOf([LengthRange(max_chars=1), RegexMatch("z")], fail_fast=True), "abc")
    assert len(r.errors) == 1


async def test_any_of_passes_on_first_match():
    """AnyOf passes if any alternative passes, with that alternative's parsed value."""
    v = AnyOf(PydanticSchema(Order), RegexMatch(r"^\d+$", mode="fullmatch"))
    assert (await check(v, "42")).parsed == "42"
    assert isinstance((await check(v, json.dumps(ORDER))).parsed, Order)


async def test_any_of_failure_prefixes_alternatives():
    """When no alternative passes, every error is prefixed by its alternative."""
    r = await check(AnyOf(JsonObject(), RegexMatch("^yes$", description="'yes'")), "maybe")
    assert r.errors[0].startswith("alternative 1 (json_object): invalid JSON")
    assert r.errors[1].startswith("alternative 2 (regex): the answer does not contain 'yes'")


def test_combinator_bad_children_raise_and_reprs_read_well():
    """Empty combinators and non-validators are ConfigErrors; reprs show the children."""
    for bad in ((), ("json_object",)):
        with pytest.raises(ConfigError):
            AllOf(*bad)
        with pytest.raises(ConfigError):
            AnyOf(*bad)
    assert (
        repr(AllOf(JsonObject(), FieldsPresent("a"))) == "AllOf(JsonObject(), FieldsPresent(['a']))"
    )
    assert repr(AnyOf(LengthRange(1, 2))) == "AnyOf(LengthRange(min_chars=1, max_chars=2))"


def test_every_validator_has_name_repr_doc_and_protocol():
    """Each built-in has a name, a readable repr, a docstring, and meets the protocol."""
    for v in (
        ResponseNotEmpty(),
        RegexMatch("a"),
        LengthRange(1),
        JsonObject(),
        FieldsPresent("a"),
        PydanticSchema(Order),
        JsonSchema(SCHEMA),
        PythonCode("f"),
        LLMJudge("openai/m", "r"),
        AllOf(JsonObject()),
        AnyOf(JsonObject()),
    ):
        assert isinstance(v, Validator) and v.name and type(v).__doc__
        assert repr(v).startswith(type(v).__name__ + "(") and "object at 0x" not in repr(v)


# -- registry -------------------------------------------------------------------------------

SPECS = {
    "response_not_empty": ({}, ResponseNotEmpty, "x"),
    "json_string": ({}, JsonObject, '{"a": 1}'),
    "json_object": ({"allow_array": True}, JsonObject, "[1]"),
    "field_present": ({"field": "a.b"}, FieldsPresent, '{"a": {"b": 1}}'),
    "fields_present": ({"fields": ["a", "c.0"]}, FieldsPresent, '{"a": 1, "c": [0]}'),
    "pydantic_schema": (
        {"model": "retrylib.config:RetryConfig"},
        PydanticSchema,
        '{"max_attempts": 2}',
    ),
    "json_schema": ({"schema": SCHEMA}, JsonSchema, '{"name": "a", "kind": "cat"}'),
    "regex": ({"pattern": "^ok$", "flags": ["IGNORECASE"], "mode": "fullmatch"}, RegexMatch, "OK"),
    "length_range": ({"min_chars": 1, "max_chars": 5}, LengthRange, "abc"),
    "python_code": (
        {"function_name": "f", "tests": [[[1], 1], "assert f(2) == 2"]},
        PythonCode,
        "def f(x):\n    return x\n",
    ),
    "llm_judge": (
        {"model": "openai/m", "rubric": "r", "api_base": "http://127.0.0.1:9/v1"},
        LLMJudge,
        None,
    ),
    "agent_task": ({"model": "openai/m", "task": "r", "temperature": 0}, LLMJudge, None),
    "all_of": (
        {"validators": ["json_object", {"type": "fields_present", "params": {"fields": ["a"]}}]},
        AllOf,
        '{"a": 1}',
    ),
    "any_of": (
        {"validators": [{"type": "regex", "params": {"pattern": "^a"}}, "json_object"]},
        AnyOf,
        "{}",
    ),
}


def test_registry_knows_every_listed_type():
    """Every original and new type name is registered."""
    assert set(SPECS) <= set(known_types())


@pytest.mark.parametrize("kind", sorted(SPECS))
async def test_registry_builds_each_type(kind):
    """Each type builds from {'type', 'params'} and the result validates a good answer."""
    params, cls, good = SPECS[kind]
    v = build_validator({"type": kind, "params": params})
    assert isinstance(v, cls)
    if good is not None:
        r = await check(v, good)
        assert r.valid, r.errors


def test_registry_bare_names_instances_and_lists():
    """A bare name builds, an instance passes through, None and one spec become lists."""
    assert isinstance(build_validator("json_string"), JsonObject)
    v = JsonObject()
    assert build_validator(v) is v
    assert build_validators(None) == []
    assert [type(x) for x in build_validators("response_not_empty")] == [ResponseNotEmpty]
    built = build_validators(
        ["json_object", v, {"type": "length_range", "params": {"max_chars": 3}}]
    )
    assert [type(x) for x in built] == [JsonObject, JsonObject, LengthRange] and built[1] is v


def test_registry_pydantic_model_class_and_dotted_path():
    """pydantic_schema takes a class or a 'pkg.mod.Class' path; a bad path is a ConfigError."""
    assert build_validator({"type": "pydantic_schema", "params": {"model": Order}}).model is Order
    dotted = build_validator(
        {"type": "pydantic_schema", "params": {"model": "retrylib.config.FallbackModel"}}
    )
    assert dotted.model.__name__ == "FallbackModel"
    with pytest.raises(ConfigError, match="cannot import"):
        build_validator({"type": "pydantic_schema", "params": {"model": "retrylib.config:Nope"}})


def test_registry_unknown_type_lists_known_types():
    """An unknown type is a ConfigError listing the known types."""
    with pytest.raises(ConfigError) as info:
        build_validator({"type": "json_strng"})
    assert "unknown validator type 'json_strng'" in str(info.value)
    assert "json_string" in str(info.value) and "python_code" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"type": "regex", "params": {"patern": "a"}}, "patern"),
        ({"type": "regex", "params": {}}, "pattern"),
        (
            {"type": "length_range", "params": {"min_chars": 9, "max_chars": 1}},
            "min_chars (9) > max_chars (1)",
        ),
        ({"type": "regex", "params": {"pattern": "a", "flags": "NOPE"}}, "NOPE"),
        ({"type": "field_present", "params": {"field": "a", "fields": ["b"]}}, "exactly one"),
        ({"type": "agent_task", "params": {"model": "m"}}, "rubric"),
        ({"type": "all_of", "params": {"validators": ["json_object", "nope"]}}, "'nope'"),
        ({"type": "regex", "params": "a"}, "params must be a mapping"),
        ({"type": "regex", "pattern": "a"}, "unknown keys ['pattern']"),
        (42, "not 42"),
    ],
)
def test_registry_bad_params_name_type_and_param(spec, words):
    """Bad params raise a ConfigError naming the validator type and the bad param."""
    with pytest.raises(ConfigError) as info:
        build_validator(spec)
    assert words in str(info.value)
    if isinstance(spec, dict) and "params" in spec:
        assert f"validator type {spec['type']!r}" in str(info.value)


def test_registry_register_custom_type():
    """register() adds a type; a duplicate is refused unless replace=True."""
    name = f"custom_{uuid.uuid4().hex[:6]}"
    try:
        validators.register(name, lambda n=1: LengthRange(max_chars=n))
        assert build_validator({"type": name, "params": {"n": 3}}).max_chars == 3
        with pytest.raises(ConfigError, match="already registered"):
            validators.register(name, ResponseNotEmpty)
        validators.register(name, ResponseNotEmpty, replace=True)
        assert isinstance(build_validator(name), ResponseNotEmpty)
    finally:
        validators.unregister(name)
    assert name not in known_types()


def test_public_names_are_exported():
    """Everything in __all__ is importable from retrylib.validators."""
    for n in validators.__all__:
        assert getattr(validators, n) is not None


# -- LLMJudge -------------------------------------------------------------------------------


def scripted_judge(proxy, plan, **kw):
    """A judge whose calls go to the proxy under a fresh key scripted with ``plan``."""
    key = uuid.uuid4().hex
    proxy.set_plan(plan, key=key)
    judge = LLMJudge(
        "openai/judge",
        "The answer names the capital of France.",
        api_base=proxy.url,
        api_key="sk-local",
        extra_headers={"X-Chaos-Key": key},
        **kw,
    )
    return judge, key


def sent_text(entry) -> str:
    return json.dumps(entry["body"]["messages"])


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_judge_bad_config_raises():
    """An empty model or rubric, or a negative max_depth, is a ConfigError."""
    for args, kw in ((("", "r"), {}), (("m", " "), {}), (("m", "r"), {"max_depth": -1})):
        with pytest.raises(ConfigError):
            LLMJudge(*args, **kw)


async def test_judge_depth_limit_makes_no_call(chaos_free):
    """At the depth limit the judge fails without calling the model."""
    judge, key = scripted_judge(chaos_free, [])
    context = ctx(depth=2)
    r = await judge.validate("Paris", context)
    assert not r.valid and "depth limit (2)" in r.errors[0]
    assert chaos_free.journal(key) == [] and context.subresults == []
    r = await LLMJudge("openai/m", "r", max_depth=5).validate("x", ctx(depth=1, max_depth=1))
    assert "depth limit (1)" in r.errors[0]


async def test_judge_fail_reason_becomes_error(chaos_free):
    """'pass': false fails the answer with the judge's reason as the error line."""
    judge, key = scripted_judge(chaos_free, ['reply:{"pass": false, "reason": "too short"}'])
    context = ctx(messages=QUESTION)
    r = await judge.validate("Paris", context)
    assert not r.valid and r.errors == ("too short",)
    assert "capital of France" in r.suggestions[0]
    (entry,) = chaos_free.journal(key)
    assert "The answer names the capital of France." in sent_text(entry)
    assert "What is the capital of France?" in sent_text(entry) and "Paris" in sent_text(entry)
    (sub,) = context.subresults
    assert sub.metrics["api_calls"] == 1 and sub.parsed == {"pass": False, "reason": "too short"}


async def test_judge_pass_is_valid(chaos_free):
    """'pass': true passes the answer; parsed stays None."""
    judge, _ = scripted_judge(chaos_free, ['reply:{"pass": true, "reason": "correct"}'])
    r = await judge.validate("Paris", ctx())
    assert r.valid and r.parsed is None


async def test_judge_retries_its_own_bad_json(chaos_free):
    """A judge reply that is not JSON is re-asked through the retry manager, one level down."""
    judge, key = scripted_judge(chaos_free, ["reply:I think it passes.", 'reply:{"pass": true}'])
    context = ctx()
    assert (await judge.validate("Paris", context)).valid
    _, second = chaos_free.journal(key)
    assert "invalid JSON" in sent_text(second) and "I think it passes." in sent_text(second)
    assert context.subresults[0].metrics["api_calls"] == 2


async def test_judge_unclear_verdict_fails(chaos_free):
    """A 'pass' value that is neither true nor false fails, quoting it."""
    judge, _ = scripted_judge(chaos_free, ['reply:{"pass": "maybe", "reason": "hmm"}'])
    r = await judge.validate("Paris", ctx())
    assert not r.valid and "unclear verdict: pass = 'maybe'" in r.errors[0]


async def test_judge_retry_error_fails_and_still_counts_calls(chaos_free):
    """When the judge's call ends in a RetryError the answer fails naming it; calls still count."""
    judge, key = scripted_judge(chaos_free, ["reply:no", "reply:no", "reply:no"])
    context = ctx()
    r = await judge.validate("Paris", context)
    assert not r.valid and "gave no usable verdict: RetryExhaustedError" in r.errors[0]
    assert len(chaos_free.journal(key)) == 3 and context.subresults[0].metrics["api_calls"] == 3


async def test_judge_non_retryable_error_fails(chaos_free):
    """A 401 from the judge's server ends its call at once and fails the answer."""
    judge, key = scripted_judge(chaos_free, ["401"])
    r = await judge.validate("Paris", ctx())
    assert "NonRetryableError" in r.errors[0] and len(chaos_free.journal(key)) == 1


async def test_judge_inside_retry_loop_feeds_back_and_counts(chaos_free):
    """In retry_with_validation, the judge's reason reaches the model and its calls the metrics."""
    from retrylib.client import make_call
    from retrylib.config import RetryConfig
    from retrylib.manager import retry_with_validation

    judge, key = scripted_judge(
        chaos_free,
        [
            "reply:Paris",
            'reply:{"pass": false, "reason": "answer in a full sentence"}',
            "reply:The capital of France is Paris.",
            'reply:{"pass": true, "reason": "ok"}',
        ],
    )
    call = make_call(
        "openai/answerer",
        api_base=chaos_free.url,
        api_key="sk-local",
        extra_headers={"X-Chaos-Key": key},
    )
    result = await retry_with_validation(
        call,
        QUESTION,
        validators=[ResponseNotEmpty(), judge],
        config=RetryConfig(max_attempts=3, initial_delay=0.0),
    )
    assert result.content == "The capital of France is Paris."
    assert result.metrics["api_calls"] == 2 and result.metrics["validator_api_calls"] == 2
    assert result.metrics["total_api_calls"] == 4
    journal = chaos_free.journal(key)
    assert "answer in a full sentence" in sent_text(journal[2])


async def test_judge_against_local_model(local_model):
    """Against the embedded SmolLM2 the judge returns a verdict or a named failure, never raises."""
    from retrylib.config import RetryConfig

    judge = LLMJudge(
        f"openai/{local_model.model}",
        "The answer names the capital of France.",
        api_base=local_model.api_base,
        api_key="sk-local",
        max_tokens=32,
        temperature=0,
        config=RetryConfig(max_attempts=1, initial_delay=0.0),
    )
    context = ctx(messages=QUESTION)
    r = await judge.validate("The capital of France is Paris.", context)
    assert isinstance(r, ValidationResult) and (r.valid or r.errors)
    (sub,) = context.subresults
    assert sub.metrics["api_calls"] == 1


async def test_judge_constrained_verdict_against_local_model(local_model):
    """With VERDICT_SCHEMA as a llama.cpp response_format, even SmolLM2 replies with a verdict."""
    from retrylib.validators.judge import VERDICT_SCHEMA

    judge = LLMJudge(
        f"openai/{local_model.model}",
        "The answer names the capital of France.",
        api_base=local_model.api_base,
        api_key="sk-local",
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_object", "schema": VERDICT_SCHEMA},
    )
    context = ctx(messages=QUESTION)
    await judge.validate("The capital of France is Paris.", context)
    (sub,) = context.subresults
    assert isinstance(sub.parsed, dict) and isinstance(sub.parsed["pass"], bool)
