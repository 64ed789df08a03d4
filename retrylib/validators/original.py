"""The original design's two JSON validators, with its meanings: ``json_string`` and
``field_present`` by ``field_name``.

retrylib's own :class:`~retrylib.validators.JsonObject` and
:class:`~retrylib.validators.FieldsPresent` stay what they were (an object, dotted paths);
these two exist so that the original's configs mean what they meant there:

- ``json_string`` accepts any JSON value: an object, an array, a string, a number, a bool,
  ``null`` (the original ran ``json.loads`` on the content and nothing else);
- ``field_present`` checks one top-level key of a JSON object: present (a ``null`` value
  counts), present with ``expected_value``, or absent (``present: false``).

Both read the answer as the other JSON validators do (bare, or one fenced block).
"""

from __future__ import annotations

import json
from typing import Any

from retrylib.errors import ConfigError
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.structured import JsonObject, _describe, json_candidate, load_json
from retrylib.validators.text import shorten

_HINT = ("Reply with only valid JSON: double quotes around keys and strings, and no comments, "
         "trailing commas or prose.")


class JsonString(JsonObject):
    """Checks that the answer is valid JSON of any kind (the original design's ``json_string``).

    A subclass of :class:`JsonObject` because it is the same parse with a wider acceptance:
    arrays, strings, numbers, booleans and ``null`` pass too.

    parsed: the decoded value.
    """

    name = "json_string"

    def __init__(self) -> None:
        super().__init__(allow_array=True)

    def __repr__(self) -> str:
        return "JsonString()"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        candidate, where = json_candidate(text)
        if not candidate:
            return ValidationResult.fail(f"{where} is empty; expected JSON", suggestions=[_HINT])
        try:
            return ValidationResult.ok(json.loads(candidate))
        except json.JSONDecodeError as exc:
            return ValidationResult.fail(_describe(exc, where), suggestions=[_HINT])



class FieldPresent:
    """Checks one top-level key of a JSON object answer (the original's ``field_present``).

    Args:
        field_name: the key, taken literally (no dotted paths: use ``FieldsPresent`` for those).
        expected_value: when not ``None``, the key must hold exactly this value.
        present: ``False`` to require that the key is absent.

    Raises:
        ConfigError: an empty ``field_name``, or ``expected_value`` with ``present=False``.

    parsed: the dict.
    """

    name = "field_present"

    def __init__(self, field_name: str, expected_value: Any = None, present: bool = True):
        if not isinstance(field_name, str) or not field_name:
            raise ConfigError("field_present: field_name must be a non-empty string, "
                              f"not {field_name!r}")
        if not isinstance(present, bool):
            raise ConfigError(f"field_present: present must be true or false, not {present!r}")
        if not present and expected_value is not None:
            raise ConfigError("field_present: expected_value means nothing with present: false")
        self.field_name = field_name
        self.expected_value = expected_value
        self.present = present

    def __repr__(self) -> str:
        extra = "" if self.expected_value is None else f", expected_value={self.expected_value!r}"
        extra += "" if self.present else ", present=False"
        return f"FieldPresent({self.field_name!r}{extra})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        result = load_json(text)
        if not result.valid:
            return result
        data, key = result.parsed, self.field_name
        if not self.present:
            if key in data:
                return ValidationResult.fail(f"field `{key}` is present but must be absent",
                                             suggestions=[f"Leave the field `{key}` out."])
            return result
        if key not in data:
            keys = ", ".join(map(str, list(data)[:10])) or "none"
            return ValidationResult.fail(
                f"required field `{key}` is missing (the object has keys: {keys})",
                suggestions=[f"Include the field `{key}`."])
        if self.expected_value is not None and data[key] != self.expected_value:
            want, got = json.dumps(self.expected_value), json.dumps(data[key], default=str)
            return ValidationResult.fail(
                f"field `{key}` is {shorten(got)} but must be {want}",
                suggestions=[f"Set `{key}` to {want}."])
        return result
