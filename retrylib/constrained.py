"""The constrained-decoding stage: a JSON schema sent as ``response_format``.

Small models rarely repair JSON from feedback; a grammar built from the schema makes the
server emit only text that fits it. Two hazards, measured on llama-cpp-python 0.3.36:

- a ``pattern`` holding regex escapes (``\\d``, ``\\s``, ``\\.``) makes the server segfault
  while it builds the grammar; and a ``pattern`` without ``^…$`` is silently ignored;
- the grammar does not enforce ``minimum``/``maximum`` and is not airtight.

So the stage sends a *grammar-safe* copy of the schema (unsafe patterns dropped) and every
constrained answer still goes through the validators, which hold the full rules.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

# Constructs the grammar builder cannot hold safely; they are left to the validators.
_UNSAFE_PATTERN_CHARS = ("\\",)


def grammar_safe_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``schema`` that llama.cpp's grammar builder can take without crashing.

    Args:
        schema: a JSON schema (``model_json_schema()`` output, say).

    Returns:
        ``(safe_schema, dropped)``: the copy, and a list of ``"path: what"`` strings naming
        each constraint removed (for the attempt's note).
    """
    dropped: list[str] = []

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k == "pattern" and isinstance(v, str) and _unsafe_pattern(v):
                    dropped.append(f"{path or '/'}: pattern {v!r}")
                    continue
                out[k] = walk(v, f"{path}/{k}")
            return out
        if isinstance(node, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        return copy.copy(node)

    return walk(schema, ""), dropped


def _unsafe_pattern(p: str) -> bool:
    return any(c in p for c in _UNSAFE_PATTERN_CHARS)


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
