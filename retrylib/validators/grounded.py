"""``Grounded``: every extracted free-text value must occur in the source text.

A schema cannot tell a right answer from a well-formed wrong one (``"Mariadella"`` for
Valencia, ``""`` for a name). Checking that extracted strings are quoted from the source
(the "source grounding" of extraction tools such as LangExtract) catches a large share of
those without knowing the expected answer, so the escalation ladder can act on them:
re-ask, then hand the case to the fallback model.

Compared after normalising (case folded, runs of whitespace collapsed, surrounding
punctuation stripped). Exempt: values chosen from a fixed set (the ``enum`` values of the
schema given), values formatted by rule (``YYYY-MM-DD``, ``HH:MM``), ``exempt`` values, and
non-strings; ``null`` is allowed. A paraphrase fails it, so it is a heuristic: wrap it in
:class:`~retrylib.validators.Soft` when a right answer may be worded differently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from retrylib.errors import ConfigError
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.structured import load_json

_FORMATTED = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{1,2}:\d{2}$")


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().strip(".,;:'\"").casefold()


def enum_values(schema: Any) -> set[str]:
    """Every string in an ``enum`` (or ``const``) of a JSON schema or a pydantic model's schema."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        schema = schema.model_json_schema()
    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            out.update(v for v in node.get("enum", ()) if isinstance(v, str))
            if isinstance(node.get("const"), str):
                out.add(node["const"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return out


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path or "(root)", value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in _strings(v, f"{path}.{i}")]
    return []


class Grounded:
    """Checks that the answer's free-text string values occur in ``source``.

    Args:
        source: the text the values were extracted from.
        schema: a pydantic model or JSON schema; its enum values are exempt.
        exempt: more values that need not occur in the text.
        fields: check only these top-level fields (default: every string, nested too).

    Raises:
        ConfigError: ``source`` is not a non-empty string.

    parsed: the JSON object.
    """

    name = "grounded"

    def __init__(self, source: str, schema: Any = None, exempt: Iterable[str] = (),
                 fields: Iterable[str] | None = None):
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"Grounded: source must be a non-empty string, not {source!r}")
        self.source = _norm(source)
        self.exempt = {_norm(v) for v in (*enum_values(schema), *exempt)} if schema is not None \
            else {_norm(v) for v in exempt}
        self.fields = None if fields is None else set(fields)

    def __repr__(self) -> str:
        return f"Grounded({self.source[:30]!r}...)"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        result = load_json(text)
        if not result.valid:
            return result
        parsed = result.parsed
        if self.fields is not None and isinstance(parsed, dict):
            parsed = {k: v for k, v in parsed.items() if k in self.fields}
        errors = []
        for path, value in _strings(parsed):
            v = _norm(value)
            if not v:
                errors.append(f"field `{path}` is empty; copy the value from the text")
            elif v not in self.source and v not in self.exempt and not _FORMATTED.match(v):
                errors.append(f"field `{path}`: {value!r} does not appear in the text")
        if errors:
            return ValidationResult.fail(
                *errors, suggestions=["Copy names, places and other words exactly as the text writes them."])
        return result
