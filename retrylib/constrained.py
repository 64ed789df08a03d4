"""The constrained-decoding stage: a JSON schema sent as ``response_format``.

Small models rarely repair JSON from feedback; a grammar built from the schema makes the
server emit only text that fits it. Hazards, measured on llama-cpp-python 0.3.36 (details in
:mod:`retrylib.patterns`):

- a ``pattern`` holding regex escapes (``\\d``, ``\\s``, ``\\.``) makes the server segfault
  while it builds the grammar, and so does a repeat with more than 1000 optional parts
  (``maxLength - minLength > 1000``, ``{0,5000}``);
- a ``pattern`` without ``^…$`` (or with ``(?:``) makes the server silently fall back to a
  plain-JSON grammar for the whole schema;
- the grammar holds neither ``minimum``/``maximum`` nor most ``format`` values.

So the stage sends a *grammar-safe* copy of the schema: patterns rewritten into a form the
grammar holds (:func:`retrylib.patterns.grammar_pattern`), ``email``/``ipv4``/``hostname``/
``uri`` formats turned into patterns, and what cannot be held removed and named. The
validators keep the original schema and still check every constrained answer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from retrylib.patterns import MAX_SPAN, Unsupported, grammar_pattern
from retrylib.schema_refs import (
    DATA_KEYWORDS,
    MAX_DEPTH,
    hoist_root_ref,
    rename_defs,
    unroll_recursion,
)

# Keys whose value maps names to subschemas (a property called "pattern" is no keyword).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_UNHELD_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
# Formats llama.cpp's converter holds itself; the ones below it ignores, so they go in as
# patterns. Both are looser than the validators (a date of 2025-02-31 gets through).
_NATIVE_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3",
                            "uuid4", "uuid5"})
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
FORMAT_PATTERNS = {
    "email": rf"^[\w%+-]+(\.[\w%+-]+)*@({_LABEL}\.)+[A-Za-z]{{2,}}$",
    "ipv4": rf"^({_OCTET}\.){{3}}{_OCTET}$",
    "hostname": rf"^({_LABEL}\.)*{_LABEL}$",
    # scheme://authority, then an optional path, query or fragment
    "uri": (r"^[A-Za-z][A-Za-z0-9+.-]*://[\w.~%!$&'()*+,;=:@-]+"
            r"([/?#][\w.~%!$&'()*+,;=:@/?#\[\]-]*)?$"),
}
# Keywords that only describe: a node with nothing else allows any value.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated",
                          "readOnly", "writeOnly"})
_JSON_TYPES = ("object", "array", "string", "number", "boolean", "null")
# Keys llama.cpp's converter reads before (and instead of) a node's bounds.
_CONVERTED_FIRST = ("$ref", "anyOf", "oneOf", "enum", "const")
# Keywords that only mean something for one type of a ``"type": [...]`` list.
_TYPED = ("pattern", "format", "minLength", "maxLength", "items", "prefixItems", "properties",
          "additionalProperties", "minItems", "maxItems")


def grammar_safe_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``schema`` that llama.cpp's grammar builder can take without crashing.

    Patterns are rewritten (not dropped), convertible formats become patterns, and only
    what the grammar cannot hold is removed or named: ``minimum``/``maximum``/
    ``exclusiveMinimum``/``exclusiveMaximum``/``multipleOf``, patterns that cannot be
    rewritten (lookarounds, backreferences, ``\\b``, ``\\p{..}``), other formats, a
    ``maxLength``/``maxItems`` more than 1000 above its minimum, and ``minLength``/
    ``maxLength``/``format`` beside a pattern (the grammar follows the pattern alone).
    ``schema`` itself is not changed.

    Args:
        schema: a JSON schema (``model_json_schema()`` output, say).

    Returns:
        ``(safe_schema, dropped)``: the copy, and a list of ``"path: what"`` strings naming
        each constraint the grammar does not hold (for the attempt's note).
    """
    dropped: list[str] = []

    def unheld(key: str, value: Any, where: str) -> bool:
        if key in _UNHELD_NUMBERS and isinstance(value, int | float):
            dropped.append(f"{where}: {key} {value}")
            return True
        return False

    def finish(node: dict[str, Any], where: str) -> dict[str, Any]:
        _bounds(node, where, dropped)
        _string(node, where, dropped)
        return _any_value(_split_type_list(node), where)

    return hoist_root_ref(rename_defs(_rebuild(schema, finish, drop=unheld))), dropped


def _any_value(node: dict[str, Any], where: str) -> dict[str, Any]:
    """A schema that allows any value (``{}``, or annotations only: pydantic's ``Any``) as an
    ``anyOf`` of the six JSON types. llama.cpp's converter asserts on ``{"title": ...}``
    ("Unrecognized schema") and reads ``{}`` as "an object"; either way the server drops the
    grammar of the *whole* schema for plain JSON, without a word."""
    if set(node) <= _ANNOTATIONS and not where.endswith(("/discriminator", "/mapping")):
        return {**node, "anyOf": [{"type": t} for t in _JSON_TYPES]}
    return node


def _rebuild(schema: Any, finish: Callable[[dict[str, Any], str], Any],
             drop: Callable[[str, Any, str], bool] | None = None) -> Any:
    """A copy of ``schema``, each schema node rebuilt bottom-up: its subschemas first, then
    ``finish(node, where)``; ``drop(key, value, where)`` may leave a keyword out. Keywords
    whose values are data (``enum``, ``const``, ...) are copied as they are."""

    def visit(node: Any, path: str) -> Any:
        if not isinstance(node, dict):
            return copy.deepcopy(node)
        out: dict[str, Any] = {}
        for key, value in node.items():
            sub = f"{path}/{key}"
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {k: visit(v, f"{sub}/{k}") for k, v in value.items()}
            elif key in DATA_KEYWORDS:
                out[key] = copy.deepcopy(value)
            elif drop is not None and drop(key, value, path or "/"):
                continue
            elif isinstance(value, list):
                out[key] = [visit(v, f"{sub}/{i}") for i, v in enumerate(value)]
            else:
                out[key] = visit(value, sub)
        return finish(out, path or "/")

    return visit(schema, "")


def _bounds(node: dict[str, Any], where: str, dropped: list[str]) -> None:
    """Remove a maximum so far above its minimum that llama.cpp's grammar parser fails."""
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        lo, hi = node.get(low, 0), node.get(high)
        if isinstance(hi, int) and isinstance(lo, int) and hi - lo > MAX_SPAN:
            del node[high]
            dropped.append(f"{where}: {high} {hi} (over {MAX_SPAN} above {low})")


def _string(node: dict[str, Any], where: str, dropped: list[str]) -> None:
    """Rewrite the node's pattern (or its format, as a pattern) for the grammar."""
    kind = node.get("type", "string")
    if kind != "string" and not (isinstance(kind, list) and "string" in kind):
        return  # pattern and format only constrain strings
    pattern, fmt = node.get("pattern"), node.get("format")
    if isinstance(pattern, str):
        what = f"pattern {pattern!r}"
        if isinstance(fmt, str):
            dropped.append(f"{where}: format {fmt!r} (the grammar follows the pattern)")
    elif fmt in FORMAT_PATTERNS:
        pattern, what = FORMAT_PATTERNS[fmt], f"format {fmt!r}"
    else:
        if isinstance(fmt, str) and fmt not in _NATIVE_FORMATS:
            dropped.append(f"{where}: format {fmt!r}")
        return
    bound = node.get("maxLength")
    try:
        node["pattern"], notes = grammar_pattern(pattern, bound if isinstance(bound, int) else None)
    except Unsupported as exc:
        node.pop("pattern", None)
        dropped.append(f"{where}: {what} ({exc})")
        return
    dropped += [f"{where}: {what}: {note}" for note in notes]
    if "minLength" in node:
        dropped.append(f"{where}: minLength {node['minLength']} (beside a pattern, not held)")
    if "maxLength" in node:
        dropped.append(f"{where}: maxLength {node['maxLength']} (beside a pattern, held only as "
                       "a bound on each of its repeats)")


def _split_type_list(node: dict[str, Any]) -> dict[str, Any]:
    """``{"type": ["string", "null"], "pattern": p}`` as an ``anyOf`` of one type each.

    llama.cpp's converter turns a type list into bare types, losing pattern, bounds, etc.
    """
    types = node.get("type")
    if (not isinstance(types, list) or not any(k in node for k in _TYPED)
            or any(k in node for k in ("anyOf", "oneOf", "allOf", "$ref", "enum", "const"))):
        return node
    rest = {k: v for k, v in node.items() if k != "type"}
    return {"anyOf": [{**copy.deepcopy(rest), "type": t} for t in types]}


def bound_runaways(schema: dict[str, Any], max_items: int | None, max_length: int | None,
                   max_depth: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """A copy of a grammar-safe ``schema`` in which no list and no free string is unbounded.

    A small model under a grammar can keep adding list items (or characters) until
    ``max_tokens`` cuts the answer, and a retry under the same grammar runs away again. So
    every array of one item schema without ``maxItems`` gets ``max_items`` (or its
    ``minItems``, if that is larger), and every free string (``"type": "string"`` without
    ``enum``, ``const``, ``pattern``, ``maxLength`` or a format the grammar holds) gets
    ``maxLength`` ``max_length`` (or its ``minLength``, if larger). An existing bound is
    never changed, so nothing is loosened; a type list that gains a bound is split into
    ``anyOf`` (llama.cpp's converter drops the keywords beside a type list). Arrays without
    an ``items`` schema and tuples (``prefixItems``) are left alone: the converter ignores
    ``maxItems`` there, and a tuple is bounded already. A recursive definition (a tree) is
    unrolled to ``max_depth`` levels (:func:`retrylib.schema_refs.unroll_recursion`).
    ``schema`` itself is not changed.

    Args:
        schema: a grammar-safe schema (:func:`grammar_safe_schema`'s copy).
        max_items: the bound for lists, 1 to ``MAX_SPAN``; ``None``: lists are left alone.
        max_length: the bound for free strings, 1 to ``MAX_SPAN``; ``None``: left alone.
        max_depth: the levels a recursive definition may nest, 1 to 32; ``None``: unbounded.

    Returns:
        ``(bounded, added)``: the copy, and ``"path maxItems=n"`` / ``"path maxLength=n"``
        for each bound added (for the attempt's note).

    Raises:
        ValueError: a bound outside 1..``MAX_SPAN`` (llama.cpp's grammar parser fails on a
            repeat with more optional parts than that).
    """
    for bound in (max_items, max_length):
        if bound is not None and not 1 <= bound <= MAX_SPAN:
            raise ValueError(f"a runaway bound must be 1 to {MAX_SPAN}, got {bound}")
    if max_depth is not None and not 1 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"a runaway depth must be 1 to {MAX_DEPTH}, got {max_depth}")
    added: list[str] = []
    if max_depth is not None:
        schema, added = unroll_recursion(schema, max_depth)
    return _rebuild(schema, lambda node, where: _bound_node(node, where, max_items, max_length,
                                                          added)), added


def _bound_node(node: dict[str, Any], where: str, max_items: int | None, max_length: int | None,
                added: list[str]) -> dict[str, Any]:
    if any(k in node for k in _CONVERTED_FIRST):
        return node  # the converter follows these keys and ignores any bound beside them
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    before = len(added)
    if (max_items is not None and isinstance(node.get("items"), dict) and "maxItems" not in node
            and ("array" in kinds or (kind is None and "properties" not in node))):
        low = node.get("minItems")
        node["maxItems"] = max(max_items, low if isinstance(low, int) else 0)
        added.append(f"{where} maxItems={node['maxItems']}")
    if (max_length is not None and "string" in kinds and node.get("format") not in _NATIVE_FORMATS
            and "pattern" not in node and "maxLength" not in node):
        low = node.get("minLength")
        node["maxLength"] = max(max_length, low if isinstance(low, int) else 0)
        added.append(f"{where} maxLength={node['maxLength']}")
    return _split_type_list(node) if len(added) > before else node


def response_format_for(schema: dict[str, Any], form: str = "llama_cpp") -> dict[str, Any]:
    """``response_format`` in the form a route understands.

    Args:
        schema: the (grammar-safe) JSON schema.
        form: ``llama_cpp`` for llama-cpp-python's server (``{"type": "json_object",
            "schema": ...}``; it rejects OpenAI's form), ``openai`` for providers that take
            ``{"type": "json_schema", "json_schema": {...}}``.
    """
    if form == "openai":
        name = str(schema.get("title") or "response").replace(" ", "_")[:64]
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    return {"type": "json_object", "schema": schema}


def schema_from_validators(validators: Iterable[Any]) -> dict[str, Any] | None:
    """The first JSON schema any validator knows (``PydanticSchema``, ``JsonSchema``, ...)."""
    for v in validators:
        get = getattr(v, "json_schema", None)
        if callable(get):
            schema = get()
            if schema:
                return dict(schema)
    return None


def looks_like_schema_rejection(status_code: int | None, retryable: bool, reason: str) -> bool:
    """Did a route refuse the constrained request itself (rather than fail in transit)?

    llama.cpp's server rejects OpenAI's ``json_schema`` form, and litellm reports that as a
    500; a provider without schema support answers 400/422, or litellm refuses the parameter
    before sending (``UnsupportedParamsError``, no status). A refused connection, a timeout,
    an exceeded context window and any other status (401, 403, 404, 429, 503...) are not:
    they say nothing about the schema.
    """
    if status_code is None:
        return not retryable and reason in ("unsupported parameters", "bad request",
                                            "unprocessable entity")
    if reason.startswith(("connection", "timeout", "context window", "content policy")):
        return False
    return status_code in (400, 422, 500, 501)


def asks_for_schema(response_format: Any) -> bool:
    """Does the caller's own ``response_format`` already constrain the answer to a schema?"""
    if isinstance(response_format, type):
        return True  # a pydantic model class: litellm turns it into json_schema
    if isinstance(response_format, dict):
        return response_format.get("type") == "json_schema" or "schema" in response_format
    return False
