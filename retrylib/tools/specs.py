"""The tools as the model sees them: OpenAI names, minimal grammar-safe schemas, argument checks.

An MCP tool becomes an OpenAI ``tools`` entry here. Its name is kept unless two servers
share it (then ``<server>_<name>``), and made a valid OpenAI function name
(``^[a-zA-Z0-9_-]{1,64}$``). Its input schema loses pydantic's ``title`` keys (tiny models
copy what a schema shows) and whatever llama.cpp's grammar builder cannot take
(:func:`retrylib.constrained.grammar_safe_schema`: a ``maxLength`` over 1000 made the server
segfault, measured), since a forced call and chatml-function-calling turn the parameters
into a grammar. The server still checks the arguments against its own schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retrylib.constrained import grammar_safe_schema

_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")  # OpenAI function names: ^[a-zA-Z0-9_-]{1,64}$
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list, tuple), "object": (dict,)}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as offered: its name for the model, where it lives, and its schema (with
    ``dropped`` naming the constraints left out because llama.cpp's grammar cannot hold them)."""

    name: str
    server: str
    remote_name: str
    description: str
    parameters: dict[str, Any]
    dropped: tuple[str, ...] = ()

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry (no ``strict``, no ``additionalProperties`` added)."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


def minimal_schema(schema: Any) -> dict[str, Any]:
    """The input schema without pydantic's ``title`` keys, with ``type``/``properties`` set.

    Small models copy whatever a schema shows, and the llama.cpp grammar builder needs an
    object schema: a tool's parameters are always ``{"type": "object", "properties": ...}``.
    """
    def strip(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, dict):
            return {k: strip(v, k in ("properties", "$defs", "definitions") and not in_properties)
                    for k, v in node.items() if in_properties or k != "title"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out = strip(dict(schema or {})) if isinstance(schema, Mapping) else {}
    out.setdefault("type", "object")
    out.setdefault("properties", {})
    return out


def check_arguments(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> str | None:
    """What is wrong with ``arguments`` for a top-level object ``schema``, or ``None``."""
    props = schema.get("properties") or {}
    missing = [k for k in schema.get("required") or () if k not in arguments]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    if schema.get("additionalProperties") is False:
        extra = [k for k in arguments if k not in props]
        if extra:
            return f"unknown argument(s): {', '.join(extra)}"
    for key, value in arguments.items():
        want = (props.get(key) or {}).get("type")
        types = _JSON_TYPES.get(want) if isinstance(want, str) else None
        if types and (not isinstance(value, types) or (want != "boolean" and isinstance(value, bool))):
            return f"argument {key!r} must be a {want}, got {type(value).__name__}"
    return None


def name_tools(listed: list[tuple[str, Any]]) -> dict[str, ToolSpec]:
    """Names for the model: unchanged unless two servers share one (then ``server_name``)."""
    counts: dict[str, int] = {}
    for _, t in listed:
        counts[t.name] = counts.get(t.name, 0) + 1
    out: dict[str, ToolSpec] = {}
    for server, t in listed:
        base = t.name if counts[t.name] == 1 else f"{server}_{t.name}"
        name = _NAME_OK.sub("_", base)[:64] or "tool"
        n = 2
        while name in out:  # sanitizing may make two names equal
            name = f"{_NAME_OK.sub('_', base)[:60]}_{n}"
            n += 1
        # The parameters become a llama.cpp grammar (a forced call, chatml-function-calling):
        # what would crash its builder (a maxLength over 1000, say: measured, SIGSEGV) is
        # left out of what the model sees; the server still checks the arguments.
        params, dropped = grammar_safe_schema(minimal_schema(t.input_schema))
        out[name] = ToolSpec(name, server, t.name, (t.description or "").strip(), params,
                             tuple(dropped))
    return out
