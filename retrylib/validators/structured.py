"""Validators of JSON answers: a JSON object, required fields, a pydantic model, a JSON schema.

All of them read the answer the same way, through :func:`load_json`: the answer may be
bare JSON or one fenced block (```json … ``` or plain ```) with prose around it. Because
they share the parse, they also share its error lines word for word, which lets
:class:`~retrylib.validators.combine.AllOf` drop the repeats.
"""

from __future__ import annotations

import json
import re
from typing import Any

from retrylib.errors import ConfigError
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.text import fenced_blocks, shorten

_JSON_LANGS = {"", "json", "jsonc", "json5", "javascript", "js"}

_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
}


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type: object, array, string, number, boolean or null."""
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def json_candidate(text: str) -> tuple[str, str]:
    """The part of an answer that should be JSON, and where it came from.

    Bare JSON wins; otherwise the first fenced block labelled as JSON (or unlabelled),
    otherwise the first fenced block of any kind, otherwise the whole stripped answer.

    Returns:
        ``(candidate, where)``, ``where`` being "the answer" or "the fenced block".
    """
    s = (text or "").strip()
    if s[:1] in ("{", "["):
        return s, "the answer"
    blocks = fenced_blocks(s)
    if blocks:
        chosen = next((body for lang, body in blocks if lang in _JSON_LANGS), blocks[0][1])
        return chosen.strip(), "the fenced block"
    return s, "the answer"


_CONTROL = re.compile(r"[\x00-\x1f]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def escape_raw_controls(text: str) -> str | None:
    """``text`` with each control character that stands raw inside a JSON string escaped as
    JSON writes it (a newline as ``\\n``); ``None`` when there is none.

    JSON forbids them there, and ``json.loads`` refuses them ("Invalid control character"),
    but the meaning is plain, and llama-cpp-python's grammar lets a model write them even
    under a schema. Text outside strings (the newlines of pretty-printed JSON) is kept.
    """
    if not _CONTROL.search(text):
        return None
    out: list[str] = []
    in_string = escaped = changed = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif ch < " ":
                out.append(_SHORT_ESCAPES.get(ch) or f"\\u{ord(ch):04x}")
                changed = True
                continue
        elif ch == '"':
            in_string = True
        out.append(ch)
    return "".join(out) if changed else None


def _describe(exc: json.JSONDecodeError, where: str) -> str:
    doc, pos = exc.doc, exc.pos
    line = (
        f"invalid JSON in {where}: {exc.msg} at line {exc.lineno}, column {exc.colno} (char {pos})"
    )
    if exc.msg == "Expecting value" and pos == 0:
        return line + f"; {where} starts with {shorten(doc, 30)!r}, not with '{{'"
    line += f", near {shorten(doc[max(0, pos - 20) : pos + 20].replace(chr(10), ' '), 50)!r}"
    if exc.msg == "Extra data":
        line += "; there is text after the JSON value"
    elif exc.msg.startswith("Expecting property name"):
        line += "; keys need double quotes, and a trailing comma is not allowed"
    return line


def load_json(text: str, *, allow_array: bool = False) -> ValidationResult:
    """Parse an answer as JSON, tolerating one fenced block and prose around it.

    Args:
        text: the model's answer.
        allow_array: accept a top-level array as well as an object.

    Returns:
        ``ok(parsed)`` with the dict (or list), or a failure naming the JSON error and its
        position, with a suggestion the model can act on.
    """
    # The same words whatever allow_array is, so AllOf can drop the repeats.
    hint = (
        "Reply with only a JSON object: start with '{', end with '}', put double quotes around "
        "keys and strings, and add no comments, trailing commas or prose."
    )
    candidate, where = json_candidate(text)
    if not candidate:
        return ValidationResult.fail(
            f"{where} is empty; expected a JSON object", suggestions=[hint]
        )
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError as exc:
        return ValidationResult.fail(_describe(exc, where), suggestions=[hint])
    if isinstance(value, dict) or (allow_array and isinstance(value, list)):
        return ValidationResult.ok(value)
    what = "a JSON object or array" if allow_array else "a JSON object {...}"
    return ValidationResult.fail(
        f"expected {what}, got a JSON {json_type(value)}: {shorten(candidate)!r}",
        suggestions=[hint],
    )


class JsonObject:
    """Checks that the answer is a JSON object (bare, or in one fenced block).

    Args:
        allow_array: accept a top-level JSON array too.

    parsed: the dict (or list).
    """

    name = "json_object"

    def __init__(self, allow_array: bool = False):
        self.allow_array = bool(allow_array)

    def __repr__(self) -> str:
        return "JsonObject(allow_array=True)" if self.allow_array else "JsonObject()"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        return load_json(text, allow_array=self.allow_array)


def split_path(path: str) -> tuple[str, ...]:
    """``"items.0.name"`` as ``("items", "0", "name")``; ConfigError on an empty part."""
    if not isinstance(path, str) or not path or any(p == "" for p in path.split(".")):
        raise ConfigError(f"FieldsPresent: bad field path {path!r} (use 'a.b.c' or 'items.0.name')")
    return tuple(path.split("."))


def find_missing(obj: Any, parts: tuple[str, ...]) -> str | None:
    """Why the dotted path ``parts`` is absent from ``obj``, or ``None`` when it is present."""
    path = ".".join(parts)
    cur = obj
    for i, part in enumerate(parts):
        here = f"`{'.'.join(parts[:i])}`" if i else "the object"
        if isinstance(cur, dict):
            if part not in cur:
                keys = ", ".join(map(str, list(cur)[:10])) or "none"
                return f"missing field `{path}` ({here} has keys: {keys})"
            cur = cur[part]
        elif isinstance(cur, list):
            if not part.isdigit():
                return f"missing field `{path}`: {here} is an array, so `{part}` must be an index"
            if int(part) >= len(cur):
                n = len(cur)
                return f"missing field `{path}`: {here} has {n} item{'s' * (n != 1)}, so there is no index {part}"
            cur = cur[int(part)]
        else:
            return f"missing field `{path}`: {here} is a {json_type(cur)}, not an object"
    return None


class FieldsPresent:
    """Checks that a JSON object answer holds every listed field.

    Args:
        fields: one dotted path or a list of them. A dotted path reaches into nested
            objects (``"a.b.c"``); a numeric part indexes an array (``"items.0.name"``).
            A field whose value is ``null`` counts as present.

    Raises:
        ConfigError: no fields, or a path with an empty part.

    parsed: the dict.
    """

    name = "fields_present"

    def __init__(self, fields: str | list[str] | tuple[str, ...]):
        fields = [fields] if isinstance(fields, str) else list(fields)
        if not fields:
            raise ConfigError("FieldsPresent: give at least one field")
        self.fields = [".".join(split_path(f)) for f in fields]
        self._paths = [split_path(f) for f in fields]

    def __repr__(self) -> str:
        return f"FieldsPresent({self.fields!r})"

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        result = load_json(text, allow_array=True)
        if not result.valid:
            return result
        missing = [m for p in self._paths if (m := find_missing(result.parsed, p))]
        if missing:
            return ValidationResult.fail(
                *missing,
                suggestions=[
                    f"Reply with a JSON object that has every field: {', '.join(self.fields)}."
                ],
            )
        return result


class PydanticSchema:
    """Checks that a JSON answer validates against a pydantic model.

    Each pydantic error becomes one line: "field `loc`: msg (got: input)".

    Args:
        model: a ``pydantic.BaseModel`` subclass (a ``RootModel`` may take an array).

    Raises:
        ConfigError: ``model`` is not a pydantic model class.

    parsed: the model instance.
    """

    name = "pydantic_schema"

    def __init__(self, model: type):
        from pydantic import BaseModel, RootModel

        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(
                f"PydanticSchema: model must be a pydantic BaseModel class, not {model!r}"
            )
        self.model = model
        self._allow_array = issubclass(model, RootModel)

    def __repr__(self) -> str:
        return f"PydanticSchema({self.model.__name__})"

    def json_schema(self) -> dict[str, Any]:
        """The model's JSON schema (``model.model_json_schema()``)."""
        return self.model.model_json_schema()

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        from pydantic import ValidationError

        result = load_json(text, allow_array=self._allow_array)
        if not result.valid:
            return result
        try:
            # JSON mode, not python mode: a strict model accepts "2024-01-02" for a date only there.
            instance = self.model.model_validate_json(json_candidate(text)[0])
        except ValidationError as exc:
            lines = []
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"]) or "(root)"
                line = f"field `{loc}`: {err['msg']}"
                if err["type"] != "missing":  # the input of "missing" is the whole parent
                    line += f" (got: {shorten(repr(err.get('input')))})"
                lines.append(line)
            required = self.json_schema().get("required", [])
            hint = "Reply with only a JSON object that fixes the fields named above"
            hint += f"; required fields: {', '.join(required)}." if required else "."
            return ValidationResult.fail(*lines, suggestions=[hint])
        return ValidationResult.ok(instance)


class JsonSchema:
    """Checks a JSON answer against an explicit JSON schema (with the ``jsonschema`` package).

    Each schema violation becomes one line: "field `path`: message".

    Args:
        schema: the JSON schema, as a dict; its ``$schema`` picks the draft (default: the
            latest the installed ``jsonschema`` knows).

    Raises:
        ConfigError: the schema itself is invalid.

    parsed: the dict (or list).
    """

    name = "json_schema"

    def __init__(self, schema: dict[str, Any]):
        from retrylib._extras import require

        exceptions = require("jsonschema.exceptions", "validators.JsonSchema")
        validators = require("jsonschema.validators", "validators.JsonSchema")

        if not isinstance(schema, dict):
            raise ConfigError(f"JsonSchema: schema must be a dict, not {type(schema).__name__}")
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except exceptions.SchemaError as exc:
            raise ConfigError(f"JsonSchema: invalid schema: {exc.message}") from exc
        self.schema = schema
        self._checker = cls(schema)

    def __repr__(self) -> str:
        return f"JsonSchema({shorten(json.dumps(self.schema), 80)})"

    def json_schema(self) -> dict[str, Any]:
        """The schema this validator checks against."""
        return self.schema

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        result = load_json(text, allow_array=True)
        if not result.valid:
            return result
        errors = sorted(
            self._checker.iter_errors(result.parsed), key=lambda e: list(map(str, e.absolute_path))
        )
        if not errors:
            return result
        lines = [
            f"field `{'.'.join(map(str, e.absolute_path)) or '(root)'}`: {shorten(e.message, 200)}"
            for e in errors
        ]
        return ValidationResult.fail(
            *lines, suggestions=["Reply with only a JSON object that fixes the fields named above."]
        )
