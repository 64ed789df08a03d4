"""A grounding validator: every extracted free-text value must occur in the source text.

Schema validation cannot tell a right answer from a well-formed wrong one ("Mariadella"
for Valencia, ``""`` for a name). Checking that extracted strings are quoted from the
source (the "source grounding" of extraction tools such as LangExtract) catches a large
share of those without knowing the expected answer, so the escalation ladder can act on
them: re-ask, then hand the case to the fallback model.

Exempt: enum values (chosen from a fixed set, not quoted), values formatted by rule
(``YYYY-MM-DD``, ``HH:MM``), and non-strings. ``null`` is allowed (optional fields).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.structured import load_json

_FORMATTED = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{1,2}:\d{2}$")


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().strip(".,;:'\"").casefold()


def enum_values(model: type[BaseModel]) -> set[str]:
    """Every string that appears in an ``enum`` of the model's JSON schema."""
    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            out.update(v for v in node.get("enum", ()) if isinstance(v, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(model.model_json_schema())
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
        model: the pydantic model (its enum values are exempt).

    parsed: the JSON object.
    """

    name = "grounded"

    def __init__(self, source: str, model: type[BaseModel]):
        self.source = _norm(source)
        self.exempt = {_norm(v) for v in enum_values(model)}

    def __repr__(self) -> str:
        return f"Grounded({self.source[:30]!r}...)"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        result = load_json(text)
        if not result.valid:
            return result
        errors = []
        for path, value in _strings(result.parsed):
            v = _norm(value)
            if not v:
                errors.append(f"field `{path}` is empty; copy the value from the text")
            elif v not in self.source and v not in self.exempt and not _FORMATTED.match(v):
                errors.append(f"field `{path}`: {value!r} does not appear in the text")
        if errors:
            return ValidationResult.fail(
                *errors, suggestions=["Copy names, places and other words exactly as the text writes them."])
        return result
