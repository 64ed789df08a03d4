"""Validators: what a model's answer must satisfy, and the words that say why it did not.

Public usage::

    from retrylib import validators

    validators.JsonObject()
    validators.FieldsPresent(["name", "address.city"])
    validators.build_validators([{"type": "regex", "params": {"pattern": "^OK"}}])

Every validator has a ``name``, a readable ``repr`` and an ``async validate(text, context)``
that returns a :class:`ValidationResult`. Those that know a JSON schema (``PydanticSchema``,
``JsonSchema``, and ``AllOf``/``AnyOf`` over them) also have ``json_schema()``.
"""

from retrylib.validators.agent import AgentTask
from retrylib.validators.base import ValidationContext, ValidationResult, Validator
from retrylib.validators.code import PythonCode, extract_code
from retrylib.validators.combine import AllOf, AnyOf, Soft
from retrylib.validators.contradiction import ContradictionCheck
from retrylib.validators.grounded import Grounded
from retrylib.validators.judge import LLMJudge
from retrylib.validators.original import FieldPresent, JsonString
from retrylib.validators.registry import (
    build_validator,
    build_validators,
    import_object,
    known_types,
    register,
    unregister,
)
from retrylib.validators.structured import (
    FieldsPresent,
    JsonObject,
    JsonSchema,
    PydanticSchema,
    json_candidate,
    load_json,
)
from retrylib.validators.text import LengthRange, RegexMatch, ResponseNotEmpty, fenced_blocks

__all__ = [
    "AgentTask",
    "AllOf",
    "AnyOf",
    "ContradictionCheck",
    "FieldPresent",
    "FieldsPresent",
    "Grounded",
    "JsonObject",
    "JsonSchema",
    "JsonString",
    "LLMJudge",
    "LengthRange",
    "PydanticSchema",
    "PythonCode",
    "RegexMatch",
    "ResponseNotEmpty",
    "Soft",
    "ValidationContext",
    "ValidationResult",
    "Validator",
    "build_validator",
    "build_validators",
    "extract_code",
    "fenced_blocks",
    "import_object",
    "json_candidate",
    "known_types",
    "load_json",
    "register",
    "unregister",
]
