"""The constrained stage keeps every constraint it can: patterns rewritten, not dropped.

Three kinds of proof:

- hypothesis: every text a rewritten pattern admits is a JSON string body whose value the
  original pattern matches, and (on ASCII) every value the original matches, written as
  JSON writes it, is admitted by the rewrite; for realistic and for generated patterns;
- llama_cpp's own converter takes the rewritten schemas (the server would otherwise fall
  back to plain JSON), and, in a subprocess (a crash is an exit code, not a dead pytest),
  llama.cpp's C++ grammar parser builds them and a random walk through the grammar emits
  only JSON the original schema accepts, while the original escaped pattern segfaults;
- the real server answers a rewritten schema and stays up.

Run as a script (``python tests/test_constrained_patterns.py N < jobs.json``) this file is
the subprocess: for each job it builds the schema's grammar as the server does, feeds it the
job's documents, and samples N documents from it at random.
"""

from __future__ import annotations

import copy
import doctest
import ipaddress
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from retrylib import patterns
from retrylib.constrained import FORMAT_PATTERNS, grammar_safe_schema
from retrylib.patterns import MAX_SPAN, Unsupported, grammar_pattern

DATE = r"^\d{4}-\d{2}-\d{2}$"
# Realistic patterns, each with a value it matches.
EXAMPLES = {
    DATE: "2025-03-14",
    r"^\d{1,2}:\d{2}$": "8:30",  # times
    r"^[A-Z]{2}\d{3,4}$": "KL1234",  # flight numbers
    r"^Flight\s[A-Z]{2}\d{3,4}$": "Flight KL1234",
    r"^INV-\d{4}-\d{2}$": "INV-2024-01",  # invoice numbers
    r"^\d+\.\d{2}$": "12.50",  # money
    r"^\$\d+(?:\.\d\d)?$": "$5.25",
    r"^[\w.+-]+@[\w-]+\.[\w.-]+$": "ann.lee+x@mail-box.co.uk",  # e-mails
    r"^[^\s@]+@[^\s@]+\.[^\s@]+$": "o'neil@x.org",
    r"^\d{5}(?:-\d{4})?$": "12345-6789",  # US ZIP
    r"^[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}$": "SW1A 1AA",  # UK postcode
    r"^\d{4}\s?[A-Z]{2}$": "1012 AB",  # Dutch postcode
    r"^[A-Z]{3}-\w{4}$": "ABC-x_9Z",  # codes with \w
    r"^[^,]+,\s*[^,]+$": 'Lee, Ann "Annie"',  # negated classes
    r"^(?:\+\d{1,3}\s?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}$": "+1 (555) 123-4567",  # phones
    r"^(?:red|green|blue)$": "green",
    r"^[a-z]+(?:-[a-z]+)*$": "my-first-post",  # slugs
    r"^v\d+\.\d+\.\d+$": "v1.12.0",
    r"^#[0-9a-fA-F]{6}$": "#1fA2b3",
    r"^\(\d{3}\) \d{3}-\d{4}$": "(555) 123-4567",
    r"^[\[\]{}^-]+$": "[^]{-}",
    r'^"[^"]*"$': '"quoted"',  # quotes inside the value
    r"^C:\\[\w\\]+$": "C:\\Users\\ann",  # backslashes inside the value
    r"^.{2,5}$": 'a"b\\',
    r"^\S+$": "no-spaces!",
    r"^\W\D$": "#x",
    r"^[\d\s-]+$": "12 34\t-5",
    r"\d{3}": "room 101, floor 1",  # unanchored: searched
    r"^KL": "KL1234 to Oslo",
    r"\.pdf$": "report (final).pdf",
    r"^a|b$": "ab",  # top-level alternation, one side anchored each
    r"^\d{5}$|^[A-Z]\d[A-Z] ?\d[A-Z]\d$": "K1A 0B1",  # alternatives anchored each
    r"(?:^KL|^AF)\d+": "AF1234",
}
REALISTIC = list(EXAMPLES)
# Values that got through the grammar when such patterns were dropped (issue 10).
REJECTED = [(DATE, "2025-3-14"), (r"^\d{2}:\d{2}$", "8:30"),
            (r"^[A-Z]{2}\d{3,4}$", "Flight KL1234"), (r"^INV-\d{6}$", "INV-2024-01")]
# What JSON writes as itself or with a short escape; the reverse property is over these.
ASCII = "".join(map(chr, range(0x20, 0x7F))) + "\t\n\r\f\b"
SAFE_ESCAPE = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[-\[\]\\])")
UNSAFE_RAW = '"\\' + "".join(map(chr, range(0x20)))


def schema_for(pattern: str) -> dict:
    return {"type": "object", "properties": {"v": {"type": "string", "pattern": pattern}},
            "required": ["v"]}


def tokens(pattern: str) -> list[str]:
    """A rewritten pattern as escapes, classes and single characters."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\":
            m = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)").match(pattern, i)
            assert m
            out.append(m.group(0))
        elif pattern[i] == "[":
            m = re.compile(r"\[\^?(?:\\(?:x..|u....|U........|.)|[^\]\\])*\]").match(pattern, i)
            assert m, pattern[i:]
            out.append(m.group(0))
        else:
            out.append(pattern[i])
        i += len(out[-1])
    return out


# -- the rewrite, by hypothesis ------------------------------------------------------------

@pytest.mark.parametrize("original", REALISTIC)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_text_a_rewrite_admits_decodes_to_a_value_the_original_matches(original, data):
    """Each text the rewrite admits is a valid JSON string body the original pattern matches."""
    rewritten, _ = grammar_pattern(original)
    text = data.draw(st.from_regex(rewritten, fullmatch=True), label="text")
    value = json.loads(f'"{text}"')  # raises on a raw control character, '"' or bad escape
    assert re.search(original, value), (rewritten, value)


@pytest.mark.parametrize("original", REALISTIC)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_ascii_value_the_original_matches_is_admitted_by_the_rewrite(original, data):
    """Each ASCII value the original fully matches, JSON-encoded, is admitted by the rewrite."""
    value = data.draw(st.from_regex(original, fullmatch=True, alphabet=ASCII), label="value")
    rewritten, _ = grammar_pattern(original)
    assert re.fullmatch(rewritten, json.dumps(value)[1:-1]), (rewritten, value)


ATOMS = [r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", ".", r"\.", r"\-", "a", "Z", "-", "_", " ",
         ":", '"', r"\\", "[a-c]", "[^,]", r"[\d.]", r"[^\s@]", r"[A-F\d]", r"\(", r"\$", r"\t",
         r"\x41", "[^a-z0-9]"]
QUANTIFIERS = ["*", "+", "?", "{2}", "{1,3}", "{0,2}", "{2,}", "*?", "{,2}"]
GENERATED = st.tuples(
    st.booleans(),
    st.recursive(st.sampled_from(ATOMS), lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(QUANTIFIERS)).map(lambda t: f"(?:{t[0]}){t[1]}"),
        st.lists(inner, min_size=2, max_size=3).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(?:" + "|".join(xs) + ")"),
        inner.map(lambda x: f"({x})")), max_leaves=8),
    st.booleans(),
).map(lambda t: ("^" if t[0] else "") + t[1] + ("$" if t[2] else ""))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_generated_patterns_are_rewritten_soundly_and_completely(data):
    """For generated patterns both directions hold, and no rewrite needs a note."""
    original = data.draw(GENERATED, label="pattern")
    rewritten, notes = grammar_pattern(original)
    assert notes == []
    assert all(SAFE_ESCAPE.fullmatch(t) for t in tokens(rewritten) if t.startswith("\\"))
    text = data.draw(st.from_regex(rewritten, fullmatch=True), label="text")
    assert re.search(original, json.loads(f'"{text}"')), (rewritten, text)
    value = data.draw(st.from_regex(original, fullmatch=True, alphabet=ASCII), label="value")
    assert re.fullmatch(rewritten, json.dumps(value)[1:-1]), (rewritten, value)


def test_non_ascii_literals_survive_and_shorthands_take_their_ascii_meaning():
    """Non-ASCII literals and classes are kept; \\d admits 0-9 only, \\D only ASCII."""
    rewritten, _ = grammar_pattern(r"^Café [€$]\d\D[^,]$")
    assert re.fullmatch(rewritten, "Café €5xé") and re.fullmatch(rewritten, "Café $0-ß")
    assert not re.fullmatch(rewritten, "Café €٣xé")  # ARABIC-INDIC DIGIT THREE is a \d ...
    assert not re.fullmatch(rewritten, "Café €5٣é")  # ... so \D must not admit it
    assert not re.fullmatch(rewritten, "Café €5éé")  # \D is taken within ASCII


def test_a_repeat_wider_than_the_grammar_holds_is_loosened_and_noted():
    """{m,n} with n - m over MAX_SPAN becomes {m,}, and the note says so."""
    assert grammar_pattern(r"^a{2,5000}$") == ("^a{2,}$", ["{2,5000} held as {2,}"])
    wide = f"^a{{2,{MAX_SPAN + 2}}}$"
    assert grammar_pattern(wide) == (wide, [])


def test_max_length_bounds_every_open_repeat():
    """With max_length, *, + and {m,} (and the unanchored sides) are bounded by it."""
    rewritten, _ = grammar_pattern(r"^[A-Z]+-\d*x{2,}", max_length=12)
    assert rewritten.startswith("^[A-Z]{1,12}-[0-9]{0,12}x{2,12}(")
    assert rewritten.endswith("){0,12}$") and "*" not in rewritten and "+" not in rewritten


@pytest.mark.parametrize(("original", "why"), [
    (r"^(?=.*\d)\w+$", "lookaround"),
    (r"^(?!x)\w+$", "negative lookaround"),
    (r"^\w+(?<!_)$", "negative lookaround"),
    (r"^(a)\1$", "backreference"),
    (r"^\bword\b$", r"\b"),
    (r"^\p{L}+$", r"bad escape \p"),
    (r"(?i)^abc$", "(?i)"),
    (r"^a(?i:b)$", "a flag on a group"),
    (r"^a*+$", "possessive"),
    (r"^(?>ab)$", "atomic group"),
    (r"^a^b$", "anchor inside"),
    (r"^a\x01$", "\\u escapes"),
])
def test_what_cannot_be_rewritten_safely_raises_unsupported_saying_why(original, why):
    """Lookarounds, backreferences, \\b, \\p{..}, flags ... raise Unsupported, saying which."""
    with pytest.raises(Unsupported, match=re.escape(why)):
        grammar_pattern(original)


def test_the_module_docstring_examples_hold():
    """The examples in retrylib.patterns' docstring are what the code does."""
    result = doctest.testmod(patterns, optionflags=doctest.IGNORE_EXCEPTION_DETAIL)
    assert result.attempted >= 5 and result.failed == 0


# -- what a rewrite may contain ------------------------------------------------------------

@pytest.mark.parametrize("original", [*REALISTIC, *FORMAT_PATTERNS.values()])
def test_rewrites_hold_only_escapes_the_grammar_parser_was_measured_to_know(original):
    """Every backslash escape in a rewrite is \\xHH, \\uHHHH, \\UHHHHHHHH, \\-, \\[, \\] or \\\\."""
    rewritten, _ = grammar_pattern(original)
    bad = [t for t in tokens(rewritten) if t.startswith("\\") and not SAFE_ESCAPE.fullmatch(t)]
    assert not bad, (rewritten, bad)
    assert rewritten.startswith("^") and rewritten.endswith("$") and "(?" not in rewritten


@pytest.mark.parametrize("original", [*REALISTIC, *FORMAT_PATTERNS.values()])
def test_no_class_in_a_rewrite_admits_a_quote_a_backslash_or_a_control_character(original):
    """Classes (negated ones above all) exclude '"', '\\' and U+0000-U+001F, except after '\\'."""
    parts = tokens(grammar_pattern(original)[0])
    classes = [t for prev, t in zip(["", *parts[:-1]], parts, strict=True)
               if t.startswith("[") and prev != "\\\\"]
    assert classes or not re.search(r"\\[dDsSwW.]|\[", original)
    for cls in classes:
        assert not [c for c in UNSAFE_RAW if re.fullmatch(cls, c)], cls


def test_the_known_cases_are_rewritten_as_the_issue_asks():
    """\\d, \\., \\s, \\w and negated classes become the classes named in issue 10."""
    assert grammar_pattern(DATE)[0] == "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
    assert grammar_pattern(r"^\d+\.\d{2}$")[0] == "^[0-9]+[.][0-9]{2}$"
    assert grammar_pattern(r"^\w$")[0] == "^[0-9A-Z_a-z]$"
    assert grammar_pattern(r"^\s$")[0] == r"^( |\\[fnrt])$"
    assert grammar_pattern(r"^[^,]$")[0] == r'^([^\x00-\x1f",\\]|\\["\\bfnrt])$'
    assert grammar_pattern(r"^(?:ab|cd)$")[0] == "^(ab|cd)$"


# -- the schema copy -------------------------------------------------------------------------

def test_numeric_bounds_leave_the_copy_and_are_named_while_the_original_keeps_them():
    """minimum, maximum, exclusive bounds and multipleOf are removed from the copy and named."""
    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 10},
        "p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e6,
              "multipleOf": 0.01},
        "code": {"type": "string", "pattern": r"^\d{3}$"}}}
    before = copy.deepcopy(schema)
    safe, dropped = grammar_safe_schema(schema)
    assert schema == before
    assert safe["properties"]["n"] == {"type": "integer"}
    assert safe["properties"]["p"] == {"type": "number"}
    assert safe["properties"]["code"]["pattern"] == "^[0-9]{3}$"
    assert sorted(dropped) == sorted([
        "/properties/n: minimum 0", "/properties/n: maximum 10",
        "/properties/p: exclusiveMinimum 0", "/properties/p: exclusiveMaximum 1000000.0",
        "/properties/p: multipleOf 0.01"])


def test_a_pydantic_models_schema_is_rewritten_through_refs_and_optional_fields():
    """Patterns in $defs and in Optional (anyOf) fields are rewritten; the model's schema stays."""
    from pydantic import BaseModel, Field

    class Leg(BaseModel):
        flight: str = Field(pattern=r"^[A-Z]{2}\d{3,4}$")

    class Trip(BaseModel):
        legs: list[Leg] = Field(max_length=4)
        invoice: str | None = Field(default=None, pattern=r"^INV-\d{4}-\d{2}$")
        seats: int = Field(ge=1, le=9)

    safe, dropped = grammar_safe_schema(Trip.model_json_schema())
    assert safe["$defs"]["Leg"]["properties"]["flight"]["pattern"] == "^[A-Z]{2}[0-9]{3,4}$"
    assert safe["properties"]["invoice"]["anyOf"][0]["pattern"] == "^INV-[0-9]{4}-[0-9]{2}$"
    assert safe["properties"]["legs"]["maxItems"] == 4
    assert sorted(dropped) == ["/properties/seats: maximum 9", "/properties/seats: minimum 1"]
    assert Trip.model_json_schema()["properties"]["seats"]["maximum"] == 9


@pytest.mark.parametrize("fmt", ["date", "time", "date-time", "uuid", "uuid4"])
def test_formats_llama_cpp_holds_itself_are_kept_as_they_are(fmt):
    """date, time, date-time and uuid stay formats (llama.cpp has rules for them), unnamed."""
    schema = {"type": "string", "format": fmt}
    assert grammar_safe_schema(schema) == (schema, [])


@pytest.mark.parametrize("fmt", sorted(FORMAT_PATTERNS))
def test_formats_llama_cpp_ignores_become_patterns(fmt):
    """email, ipv4, hostname and uri are sent as (rewritten) patterns and nothing is named."""
    safe, dropped = grammar_safe_schema({"type": "string", "format": fmt})
    assert safe["pattern"] == grammar_pattern(FORMAT_PATTERNS[fmt])[0] and dropped == []


def _is_hostname(value: str) -> bool:
    return all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label)
               for label in value.split("."))


FORMAT_CHECKS = {
    "ipv4": lambda v: str(ipaddress.IPv4Address(v)) == v,
    "hostname": _is_hostname,
    "email": lambda v: (v.count("@") == 1 and ".." not in v.split("@")[0]
                        and "." in v.split("@")[1] and _is_hostname(v.split("@")[1])
                        and not v.startswith(".")),
    "uri": lambda v: bool(urlsplit(v).scheme and urlsplit(v).netloc) and " " not in v,
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_PATTERNS))
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_what_a_format_pattern_admits_is_a_value_of_that_format(fmt, data):
    """Values drawn from a format's rewritten pattern pass an independent check of the format."""
    rewritten = grammar_pattern(FORMAT_PATTERNS[fmt])[0]
    value = json.loads('"' + data.draw(st.from_regex(rewritten, fullmatch=True)) + '"')
    assert FORMAT_CHECKS[fmt](value), value


def test_other_formats_and_formats_beside_a_pattern_are_named():
    """A format llama.cpp ignores is named; so is a format (or length) beside a pattern."""
    assert grammar_safe_schema({"type": "string", "format": "duration"})[1] == [
        "/: format 'duration'"]
    safe, dropped = grammar_safe_schema({"type": "object", "properties": {"d": {
        "type": "string", "format": "date", "pattern": DATE, "minLength": 10, "maxLength": 10}}})
    assert safe["properties"]["d"]["pattern"] == "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
    assert [d.split(" (")[0] for d in dropped] == [
        "/properties/d: format 'date'", "/properties/d: minLength 10",
        "/properties/d: maxLength 10"]
    assert grammar_safe_schema({"type": "integer", "format": "int64"}) == (
        {"type": "integer", "format": "int64"}, [])


def test_length_and_item_bounds_are_kept_unless_the_grammar_parser_would_fail():
    """maxLength/maxItems up to MAX_SPAN above the minimum are kept; further ones are named."""
    ok = {"type": "object", "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": MAX_SPAN + 1},
        "a": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}}}
    assert grammar_safe_schema(ok) == (ok, [])
    wide = {"type": "object", "properties": {
        "s": {"type": "string", "maxLength": 5000},
        "a": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2000}}}
    safe, dropped = grammar_safe_schema(wide)
    assert safe["properties"]["s"] == {"type": "string"}
    assert safe["properties"]["a"] == {"type": "array", "items": {"type": "integer"},
                                       "minItems": 2}
    assert dropped == ["/properties/s: maxLength 5000 (over 1000 above minLength)",
                       "/properties/a: maxItems 2000 (over 1000 above minItems)"]


def test_unsupported_patterns_are_dropped_and_named_with_the_reason():
    """A lookahead pattern leaves the copy; the note names the path, the pattern and why."""
    safe, dropped = grammar_safe_schema({"type": "object", "properties": {
        "pw": {"type": "string", "pattern": r"^(?=.*\d)\w{8,}$", "maxLength": 64}}})
    assert safe["properties"]["pw"] == {"type": "string", "maxLength": 64}
    assert dropped == [
        r"/properties/pw: pattern '^(?=.*\\d)\\w{8,}$' (lookaround (?=…) or (?<=…))"]


def test_keyword_names_used_as_property_names_or_values_are_left_alone():
    """A property called "pattern" or "minimum", and defaults/examples/enums, are not keywords."""
    schema = {"type": "object", "properties": {
        "pattern": {"type": "string", "default": r"\d"},
        "minimum": {"type": "integer", "examples": [{"maximum": 3}]},
        "kind": {"enum": [{"pattern": r"\d"}]}}, "required": ["pattern", "minimum"]}
    assert grammar_safe_schema(schema) == (schema, [])


def test_a_type_list_is_split_so_the_converter_keeps_the_pattern():
    """{"type": ["string", "null"], "pattern": p} becomes anyOf, whose grammar holds the pattern."""
    json_schema_to_gbnf = pytest.importorskip("llama_cpp.llama_grammar").json_schema_to_gbnf
    schema = {"type": "object", "properties": {
        "v": {"type": ["string", "null"], "pattern": r"^\d{3}$"}}}
    assert "[0-9]" not in json_schema_to_gbnf(json.dumps(schema))  # the converter drops it
    safe, _ = grammar_safe_schema(schema)
    assert safe["properties"]["v"] == {"anyOf": [{"pattern": "^[0-9]{3}$", "type": "string"},
                                                 {"pattern": "^[0-9]{3}$", "type": "null"}]}
    assert "[0-9]" in json_schema_to_gbnf(json.dumps(safe))


# -- llama_cpp's converter, in process ---------------------------------------------------------

def _grammar_for(schema: dict) -> str:
    from llama_cpp.llama_chat_format import _grammar_for_json_schema

    return _grammar_for_json_schema(json.dumps(schema))._grammar


@pytest.mark.parametrize("original", REALISTIC)
def test_llama_cpps_converter_takes_every_rewritten_schema(original):
    """The server's own conversion of the rewritten schema is a real grammar, not plain JSON."""
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_grammar import JSON_GBNF

    safe, dropped = grammar_safe_schema(schema_for(original))
    assert dropped == [] and _grammar_for(safe) != JSON_GBNF


@pytest.mark.parametrize("original", [r"\d{3}", r"^[0-9]{3}", r"^(?:ab|cd)$"])
def test_without_the_rewrite_an_unanchored_pattern_or_a_group_drops_the_whole_grammar(original):
    """Unanchored, half-anchored or (?:) patterns: the server quietly uses plain JSON instead."""
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_grammar import JSON_GBNF

    schema = schema_for(original)
    schema["properties"]["n"] = {"type": "integer"}  # lost as well
    assert _grammar_for(schema) == JSON_GBNF
    assert _grammar_for(grammar_safe_schema(schema)[0]) != JSON_GBNF


class _Tree(BaseModel):
    """A recursive model: pydantic's schema is a root ``$ref`` into its own ``$defs``."""

    name: str
    kids: list[_Tree] = []


class _Loose(BaseModel):
    """A field of any value (``{"title": ...}``) and one that is ``{}``."""

    label: str
    extra: Any = None
    count: int


_LOOSE = _Loose.model_json_schema()
_LOOSE["properties"]["bare"] = {}


@pytest.mark.parametrize("schema", [_Tree.model_json_schema(), _LOOSE], ids=["recursive", "any"])
def test_schemas_the_converter_misreads_keep_their_grammar(schema):
    """A recursive model (refs left unresolved: KeyError) or an ``Any`` field (an assertion)
    makes the server quietly use plain JSON for the whole schema; the copy keeps a grammar
    and means the same: every property and requirement is still there."""
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_grammar import JSON_GBNF

    assert _grammar_for(schema) == JSON_GBNF
    safe, dropped = grammar_safe_schema(schema)
    assert dropped == [] and _grammar_for(safe) != JSON_GBNF
    assert "$ref" not in safe and safe["properties"].keys() == (
        schema.get("properties") or schema["$defs"]["_Tree"]["properties"]).keys()
    assert safe["required"] == (schema.get("required") or schema["$defs"]["_Tree"]["required"])


def test_an_any_value_becomes_every_json_type_and_annotations_only_nodes_elsewhere_stay():
    """``Any`` allows every JSON type (``{}`` alone the converter reads as "an object"); a
    discriminator's mapping, which is data, is left as it is."""
    safe = grammar_safe_schema(_LOOSE)[0]
    for name in ("extra", "bare"):
        assert [t["type"] for t in safe["properties"][name]["anyOf"]] == [
            "object", "array", "string", "number", "boolean", "null"]
    assert safe["properties"]["extra"]["title"] == "Extra"
    disc = {"type": "object", "properties": {"p": {"oneOf": [{"$ref": "#/$defs/A"}],
            "discriminator": {"propertyName": "k", "mapping": {"title": "#/$defs/A"}}}},
            "$defs": {"A": {"type": "object", "properties": {"k": {"const": "title"}}}}}
    assert grammar_safe_schema(disc)[0]["properties"]["p"]["discriminator"] == (
        disc["properties"]["p"]["discriminator"])


def test_a_root_ref_chain_is_followed_and_a_ref_it_cannot_follow_is_left():
    chain = {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"type": "object", "properties": {
        "x": {"type": "integer"}}, "required": ["x"]}}, "$ref": "#/$defs/A"}
    safe = grammar_safe_schema(chain)[0]
    assert safe["type"] == "object" and safe["required"] == ["x"] and "$ref" not in safe
    for ref in ("#/$defs/Missing", "https://example.com/s.json", "#/properties/x"):
        assert grammar_safe_schema({"$ref": ref, "$defs": {}})[0]["$ref"] == ref


# -- llama.cpp's C++ grammar, in a subprocess ----------------------------------------------------

def _probe(jobs: list[dict], samples: int, timeout: float = 600) -> tuple[int, list[dict], str]:
    """Run this file as the probe on ``jobs``: (exit code, its reports, the end of stderr)."""
    pytest.importorskip("llama_cpp")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(samples)],
                          input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=timeout)
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, reports, proc.stderr[-3000:]


def _doc(value: str) -> str:
    return json.dumps({"v": value}, ensure_ascii=False)


def test_the_original_escaped_pattern_segfaults_the_grammar_and_the_rewrite_does_not():
    """The escaped date pattern fails llama.cpp's grammar parser and the sampler segfaults."""
    code, reports, err = _probe([{"schema": schema_for(DATE)}], samples=1)
    assert code == -signal.SIGSEGV, (code, err)
    assert reports == [{"job": 0, "parsed": False}] and "unknown escape" in err
    safe = grammar_safe_schema(schema_for(DATE))[0]
    code, reports, err = _probe([{"schema": safe, "docs": [_doc("2025-03-14")]}], samples=1)
    assert code == 0, err
    assert reports[:2] == [{"job": 0, "parsed": True},
                           {"job": 0, "doc": _doc("2025-03-14"), "admitted": True}]
    assert re.fullmatch(DATE, json.loads(reports[2]["text"])["v"])


def test_a_max_length_far_above_min_length_segfaults_the_grammar_unless_dropped():
    """maxLength 2000 fails the grammar parser (and the sampler segfaults); the copy builds."""
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 2000}}}
    code, reports, err = _probe([{"schema": schema}], samples=1)
    assert code == -signal.SIGSEGV and reports == [{"job": 0, "parsed": False}], (code, err)
    code, reports, err = _probe([{"schema": grammar_safe_schema(schema)[0]}], samples=1)
    assert code == 0 and reports[0] == {"job": 0, "parsed": True}, err


def test_every_rewritten_schema_builds_in_llama_cpp_admits_its_example_and_emits_only_valid():
    """In llama.cpp's C++ grammar each rewrite parses, admits its example, refuses what the
    original refuses, and random walks through it give JSON the original schema accepts."""
    jsonschema = pytest.importorskip("jsonschema")
    cases = [(schema_for(p), [_doc(e)], []) for p, e in EXAMPLES.items()]
    cases += [(schema_for(p), [], [_doc(bad)]) for p, bad in REJECTED]
    formats = {"date": "2025-03-14", "time": "08:30:00Z", "date-time": "2025-03-14T08:30:00Z",
               "uuid": "123e4567-e89b-12d3-a456-426614174000", "email": "ann@mail.example.com",
               "ipv4": "192.168.0.1", "hostname": "mail.example.com",
               "uri": "https://example.com/a?b=1#c"}
    cases += [({"type": "object", "required": ["v"], "properties": {"v": {
        "type": "string", "format": f}}}, [_doc(e)], []) for f, e in formats.items()]
    cases.append(({"type": "object", "required": ["v"], "properties": {"v": {
        "type": "array", "minItems": 1, "maxItems": 1 + MAX_SPAN,
        "items": {"type": "string", "pattern": r"^[A-Z]\d$"}}}}, ['{"v": ["A1", "B2"]}'], []))
    jobs = [{"schema": grammar_safe_schema(s)[0], "docs": good + bad} for s, good, bad in cases]
    code, reports, err = _probe(jobs, samples=3)
    assert code == 0, (code, reports[-3:], err)
    assert [r["job"] for r in reports if r.get("parsed")] == list(range(len(cases)))
    admitted = {(r["job"], r["doc"]): r["admitted"] for r in reports if "doc" in r}
    for i, (original, good, bad) in enumerate(cases):
        assert all(admitted[i, d] for d in good), (original, good)
        assert not any(admitted[i, d] for d in bad), (original, bad)
    walked = [r for r in reports if "text" in r]
    for r in walked:
        value = json.loads(r["text"])  # the grammar's output is JSON ...
        jsonschema.validate(value, cases[r["job"]][0])  # ... that the original schema accepts
        fmt = cases[r["job"]][0]["properties"]["v"].get("format")
        assert fmt not in FORMAT_CHECKS or FORMAT_CHECKS[fmt](value["v"]), value
    assert len({r["job"] for r in walked}) >= 0.8 * len(cases)


def test_a_recursive_and_an_any_schema_build_in_llama_cpp_and_hold_their_shape():
    """In llama.cpp's C++ grammar, the copies of a recursive model and of a model with
    ``Any`` fields admit nested and free values and refuse what the originals refuse; random
    walks give JSON the original schemas accept."""
    jsonschema = pytest.importorskip("jsonschema")
    tree = _Tree.model_json_schema()
    tree_good = ['{"name": "a", "kids": [{"name": "b", "kids": [{"name": "c"}]}]}']
    tree_bad = ['{"name": "a", "kids": [{"kids": []}]}', '{"name": "a", "kids": [3]}']
    # (the converter writes required properties first, in order)
    loose_good = ['{"label": "x", "count": 3, "extra": [1, "two", null], "bare": "s"}',
                  '{"label": "x", "count": 3, "extra": 2.5}', '{"label": "x", "count": 3}']
    loose_bad = ['{"label": "x", "extra": 1}', '{"label": 1, "count": 3}']
    cases = [(tree, tree_good, tree_bad), (_LOOSE, loose_good, loose_bad)]
    jobs = [{"schema": grammar_safe_schema(s)[0], "docs": good + bad} for s, good, bad in cases]
    code, reports, err = _probe(jobs, samples=4)
    assert code == 0, (code, reports[-3:], err)
    assert [r["job"] for r in reports if r.get("parsed")] == [0, 1]
    admitted = {(r["job"], r["doc"]): r["admitted"] for r in reports if "doc" in r}
    for i, (_, good, bad) in enumerate(cases):
        assert all(admitted[i, d] for d in good) and not any(admitted[i, d] for d in bad)
    for r in (r for r in reports if "text" in r):
        jsonschema.validate(json.loads(r["text"]), cases[r["job"]][0])


class _Holder(BaseModel):
    tree: _Tree


def test_a_recursive_definition_whose_name_no_rule_may_hold_crashes_llama_cpp_unless_renamed():
    """``_Tree`` reached through a property: the converter leaves its recursive reference
    unclean, the C++ grammar does not parse and the sampler segfaults (as the server would).
    The copy renames the definitions and every reference to them, and builds."""
    original = _Holder.model_json_schema()
    code, reports, err = _probe([{"schema": original}], samples=1)
    assert code == -signal.SIGSEGV and reports == [{"job": 0, "parsed": False}], (code, err)
    safe = grammar_safe_schema(original)[0]
    assert list(safe["$defs"]) == ["Tree"] and safe["properties"]["tree"]["$ref"] == "#/$defs/Tree"
    assert safe["$defs"]["Tree"]["properties"]["kids"]["items"] == {"$ref": "#/$defs/Tree"}
    code, reports, err = _probe([{"schema": safe, "docs": ['{"tree": {"name": "a", "kids": '
                                                           '[{"name": "b"}]}}']}], samples=0)
    assert code == 0 and [r.get("parsed", r.get("admitted")) for r in reports] == [True, True], err


def test_renamed_definitions_stay_distinct_and_discriminator_mappings_follow():
    schema = {"$defs": {"a_b": {"type": "integer"}, "a-b": {"type": "string"},
                        "P.Q": {"type": "object", "properties": {"k": {"const": "q"}}}},
              "type": "object", "properties": {
                  "x": {"$ref": "#/$defs/a_b"}, "y": {"$ref": "#/$defs/a-b"},
                  "z": {"oneOf": [{"$ref": "#/$defs/P.Q"}], "discriminator": {
                      "propertyName": "k", "mapping": {"q": "#/$defs/P.Q"}}}}}
    safe = grammar_safe_schema(schema)[0]
    assert sorted(safe["$defs"]) == ["P-Q", "a-b", "a-b-2"]
    x, y = safe["properties"]["x"]["$ref"], safe["properties"]["y"]["$ref"]
    assert {x, y} == {"#/$defs/a-b", "#/$defs/a-b-2"} and y == "#/$defs/a-b"
    assert safe["$defs"][x.rsplit("/", 1)[1]] == {"type": "integer"}
    assert safe["properties"]["z"]["discriminator"]["mapping"] == {"q": "#/$defs/P-Q"}
    assert schema["properties"]["x"]["$ref"] == "#/$defs/a_b"  # the original is not changed


def _probe_main(samples: int) -> None:
    """For each job: build its schema's grammar as llama.cpp's server does, feed it documents
    token by token (is each admitted?), then walk it at random for ``samples`` documents."""
    import ctypes
    import random
    from collections.abc import Callable

    import numpy as np
    from llama_cpp import llama_cpp as C
    from llama_cpp import llama_grammar
    from llama_cpp._internals import LlamaSampler
    from llama_cpp.llama import Llama

    from retrylib.testing.local import model_path

    model = Llama(str(model_path("smollm2")), vocab_only=True, verbose=False)
    vocab = model._model.vocab
    n = C.llama_vocab_n_tokens(vocab)
    pieces = [model.detokenize([t]) for t in range(n)]
    eog = [t for t in range(n) if C.llama_vocab_is_eog(vocab, t)]
    closing = np.array([b'"' in p or b"}" in p for p in pieces])
    dtype = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    rng = random.Random(0)

    def checker(ids: list[int]) -> Callable[[LlamaSampler], np.ndarray]:
        """What the grammar allows next among ``ids``, as a mask over the whole vocabulary."""
        template = (C.llama_token_data * len(ids))(*[C.llama_token_data(t, 0, 0) for t in ids])
        where = np.array(ids)

        def allowed(sampler: LlamaSampler) -> np.ndarray:
            data = type(template)()
            ctypes.memmove(data, template, ctypes.sizeof(template))
            C.llama_sampler_apply(sampler.sampler, ctypes.byref(C.llama_token_data_array(
                data, len(ids), -1, False)))
            mask = np.zeros(n, dtype=bool)
            mask[where[np.frombuffer(data, dtype)["logit"] > -np.inf]] = True
            return mask

        return allowed

    every = checker(list(range(n)))  # to feed documents as the tokenizer cuts them
    short = checker([t for t in range(n) if 0 < len(pieces[t]) <= 3 or t in eog])  # to walk

    def report(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    def fresh(grammar: llama_grammar.LlamaGrammar) -> LlamaSampler:
        sampler = LlamaSampler()
        sampler.add_grammar(model._model, grammar)  # as the server does, NULL or not
        return sampler

    for i, job in enumerate(json.loads(sys.stdin.read())):
        grammar = llama_grammar.LlamaGrammar.from_json_schema(json.dumps(job["schema"]))
        built = C.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), b"root")
        report(job=i, parsed=bool(built))
        for doc in job.get("docs", []):
            sampler, ok = fresh(grammar), True
            for tok in model.tokenize(doc.encode(), add_bos=False, special=False):
                ok = ok and bool(every(sampler)[tok])
                if ok:
                    C.llama_sampler_accept(sampler.sampler, tok)
            report(job=i, doc=doc, admitted=ok and bool(every(sampler)[eog].any()))
        for _ in range(samples):
            sampler, text = fresh(grammar), b""
            for step in range(120):
                mask = short(sampler)
                if mask[eog].any():
                    report(job=i, text=text.decode())
                    break
                ends = np.flatnonzero(mask & closing)
                pick = ends if len(ends) and rng.random() < (0.3 if step < 40 else 0.9) else (
                    np.flatnonzero(mask))
                tok = int(rng.choice(list(pick)))
                C.llama_sampler_accept(sampler.sampler, tok)
                text += pieces[tok]


# -- the real server, over HTTP ------------------------------------------------------------------

def test_the_real_server_survives_the_rewritten_schema_and_answers_to_the_original(local_model):
    """llama.cpp's server takes the rewritten schema, stays up, and its answer fits the original."""
    import httpx
    import jsonschema

    schema = {"type": "object", "required": ["date", "flight"], "properties": {
        "date": {"type": "string", "pattern": DATE},
        "flight": {"type": "string", "pattern": r"^[A-Z]{2}\d{3,4}$"}}}
    safe, dropped = grammar_safe_schema(schema)
    assert dropped == []
    t0 = time.monotonic()
    reply = httpx.post(f"{local_model.api_base}/chat/completions", timeout=120, json={
        "model": local_model.model, "max_tokens": 60, "temperature": 0,
        "messages": [{"role": "user", "content": "Flight KL1234 leaves on 14 March 2025. "
                      "Give the date and the flight number as JSON."}],
        "response_format": {"type": "json_object", "schema": safe}})
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.json()["choices"][0]["message"]["content"])
    jsonschema.validate(answer, schema)
    assert local_model.alive() and time.monotonic() - t0 < 120



async def test_a_recursive_model_runs_through_the_constrained_stage_on_the_real_server(local_model):
    """End to end on SmolLM2: ``_Holder``'s schema as pydantic writes it would crash the
    server; through retrylib's constrained stage the grammar holds the tree, the answer
    parses as the model, and the server is still up."""
    from retrylib import RetryConfig, make_call, retry_with_validation
    from retrylib import validators as V

    call = make_call(f"openai/{local_model.model}", api_base=local_model.api_base,
                     max_tokens=150, temperature=0)
    messages = [{"role": "user", "content": "Ann is the mother of Bo and Cy; Bo and Cy have no "
                 "children. Write this family tree as JSON."}]
    result = await retry_with_validation(call, messages, [V.PydanticSchema(_Holder)], RetryConfig(
        max_attempts=2, max_attempts_before_constrained=0, initial_delay=0))
    first = result.attempts[0]
    assert first.constrained and first.stage == "constrained"
    assert isinstance(result.parsed, _Holder) and local_model.alive()


async def test_a_model_with_any_fields_keeps_its_grammar_on_the_real_server(local_model):
    """``_Loose`` (an ``Any`` field and a ``{}`` one) through the constrained stage: the
    server builds the schema's grammar (as sent, it would have used plain JSON), so the
    answer has the required keys in the grammar's order and parses as the model."""
    from retrylib import RetryConfig, make_call, retry_with_validation
    from retrylib import validators as V

    call = make_call(f"openai/{local_model.model}", api_base=local_model.api_base,
                     max_tokens=80, temperature=0)
    messages = [{"role": "user", "content": "Label the box 'tools' and count 3 items. JSON."}]
    result = await retry_with_validation(call, messages, [V.PydanticSchema(_Loose)], RetryConfig(
        max_attempts=1, max_attempts_before_constrained=0))
    assert result.attempts[0].constrained and isinstance(result.parsed, _Loose)
    assert list(json.loads(result.content))[:2] == ["label", "count"] and local_model.alive()

if __name__ == "__main__":
    _probe_main(int(sys.argv[1]))
