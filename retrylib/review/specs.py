"""Validators as registry specs, and back: so a stored case can be validated again later.

:func:`spec_of` turns a validator instance into the spec that
:func:`~retrylib.validators.registry.build_validator` builds it from
(``{"type": "regex", "params": {...}}``). A validator of your own gives its spec with a
``to_spec()`` method. A spec is kept only when it is JSON and builds an equal validator (same
type, same settings): otherwise the case names the validator (``name``, ``repr``) and whoever
resumes it passes ``validators=``. So, on purpose, these are named only: a judge holding an
``api_key`` (secrets stay out of the store), a validator bound to a call object of its own
or to a prompt (a call cannot be stored), a pydantic model defined inside a function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from retrylib.errors import ConfigError
from retrylib.validators import (
    AgentTask,
    AllOf,
    AnyOf,
    ContradictionCheck,
    FieldPresent,
    FieldsPresent,
    Grounded,
    JsonObject,
    JsonSchema,
    JsonString,
    LengthRange,
    LLMJudge,
    PydanticSchema,
    PythonCode,
    RegexMatch,
    ResponseNotEmpty,
    Soft,
)
from retrylib.validators.base import Validator
from retrylib.validators.registry import build_validator, import_object

Spec = dict[str, Any]


def _spec(kind: str, **params: Any) -> Spec:
    return {"type": kind, "params": params} if params else {"type": kind}


def _children(vs: Sequence[Any]) -> list[Spec] | None:
    specs = [spec_of(v) for v in vs]
    return None if any(s is None for s in specs) else specs  # type: ignore[return-value]


def _pydantic(v: PydanticSchema) -> Spec | None:
    path = f"{v.model.__module__}:{v.model.__qualname__}"
    if "<locals>" in path:  # a class made inside a function cannot be imported back
        return None
    try:
        return _spec("pydantic_schema", model=path) if import_object(path) is v.model else None
    except ConfigError:
        return None


def _regex(v: RegexMatch) -> Spec:
    flags = v.pattern.flags & ~re.UNICODE  # str patterns always carry UNICODE
    return _spec("regex", pattern=v.pattern.pattern, flags=flags, mode=v.mode,
                 description=v.description)


def _judge(v: LLMJudge) -> Spec:
    config = v.config.model_dump(mode="json") if v.config is not None else None
    return _spec("llm_judge", model=v.model, rubric=v.rubric, api_base=v.api_base, config=config,
                 max_depth=v.max_depth, **v.call_kwargs)


def _agent(v: AgentTask) -> Spec | None:
    if v._own_call or v.original_prompt is not None:  # a call object or a bound prompt: not data
        return None
    return _spec("agent_task", task_prompt_to_claude=v.task_prompt,
                 validation_model_alias=v.validation_model_alias, mcp_config=v.mcp_config,
                 success_criteria=v.success_criteria or None)


def _contradiction(v: ContradictionCheck) -> Spec | None:
    if v._own_call:
        return None
    return _spec("ai_contradiction_check", text_to_check=v.text_to_check,
                 topic_context=v.topic_context, validation_model_alias=v.validation_model_alias,
                 required_mcp_tools=v.required_mcp_tools, mcp_config=v.mcp_config)


def _all_of(v: AllOf) -> Spec | None:
    kids = _children(v.validators)
    return None if kids is None else _spec("all_of", validators=kids, fail_fast=v.fail_fast)


def _any_of(v: AnyOf) -> Spec | None:
    kids = _children(v.validators)
    return None if kids is None else _spec("any_of", validators=kids)


def _soft(v: Soft) -> Spec | None:
    kid = spec_of(v.validator)
    return None if kid is None else _spec("soft", validator=kid)


def _grounded(v: Grounded) -> Spec:
    return _spec("grounded", source=v.source, exempt=sorted(v.exempt),
                 fields=None if v.fields is None else sorted(v.fields))


# Exact types: JsonString is a JsonObject subclass with a spec of its own.
_MAKERS: dict[type, Callable[[Any], Spec | None]] = {
    ResponseNotEmpty: lambda v: _spec("response_not_empty"),
    JsonString: lambda v: _spec("json_string"),
    JsonObject: lambda v: _spec("json_object", allow_array=True) if v.allow_array
    else _spec("json_object"),
    FieldsPresent: lambda v: _spec("fields_present", fields=list(v.fields)),
    FieldPresent: lambda v: _spec("field_present", field_name=v.field_name,
                                  expected_value=v.expected_value, present=v.present),
    PydanticSchema: _pydantic,
    JsonSchema: lambda v: _spec("json_schema", schema=v.schema),
    RegexMatch: _regex,
    LengthRange: lambda v: _spec("length_range", min_chars=v.min_chars, max_chars=v.max_chars),
    PythonCode: lambda v: _spec("python_code", function_name=v.function_name, tests=v.tests,
                                timeout=v.timeout),
    LLMJudge: _judge,
    AgentTask: _agent,
    ContradictionCheck: _contradiction,
    AllOf: _all_of,
    AnyOf: _any_of,
    Soft: _soft,
    Grounded: _grounded,
}
# What defines each validator, where its public attributes do not: PythonCode's tests are
# compared as it runs them (a tuple and a list of arguments are the same call).
_DEFINING: dict[type, tuple[str, ...]] = {PythonCode: ("function_name", "_cases", "timeout")}


def _fingerprint(v: Any) -> Any:
    if isinstance(v, list | tuple):  # the type too: a test expecting (2, 3) is not one expecting [2, 3]
        return (type(v), [_fingerprint(x) for x in v])
    if not callable(getattr(v, "validate", None)):
        return v
    # Public settings only; a method stored on the instance (AllOf's json_schema) is not one.
    names = _DEFINING.get(type(v)) or sorted(
        k for k, x in vars(v).items() if not k.startswith("_")
        and (not callable(x) or callable(getattr(x, "validate", None))))
    return (type(v), {k: _fingerprint(getattr(v, k)) for k in names})


def spec_of(validator: Any) -> Spec | None:
    """The registry spec that builds ``validator`` again, or ``None`` when there is none.

    Args:
        validator: a validator instance (a custom one may define ``to_spec()``).

    Returns:
        ``{"type": ..., "params": {...}}`` (JSON, and checked: it builds an equal validator),
        or ``None``.
    """
    own = getattr(validator, "to_spec", None)
    maker = _MAKERS.get(type(validator))
    if not callable(own) and maker is None:
        return None
    try:
        spec = own() if callable(own) else maker(validator)  # type: ignore[misc]
        if spec is None:
            return None
        spec = json.loads(json.dumps(spec))  # the store keeps JSON: what it cannot hold, fails here
        rebuilt = build_validator(spec)
    except Exception:  # a spec that cannot be made or built is no spec (the case names it)
        return None
    return spec if _fingerprint(rebuilt) == _fingerprint(validator) else None


def describe(validators: Sequence[Any]) -> list[dict[str, Any]]:
    """One entry per validator for a case: ``name``, ``repr`` and ``spec`` (or ``None``)."""
    return [{"name": str(getattr(v, "name", type(v).__name__)), "repr": repr(v)[:500],
             "spec": spec_of(v)} for v in validators]


def rebuild(entries: Sequence[dict[str, Any]], case_id: str = "") -> list[Validator]:
    """The validators of a case, built from their specs.

    Raises:
        ConfigError: some validator has no spec (named, with how to pass it), or a spec no
            longer builds.
    """
    missing = [f"{e.get('name')} ({e.get('repr')})" for e in entries if e.get("spec") is None]
    if missing:
        raise ConfigError(f"case {case_id!r}: validators {', '.join(missing)} were stored by name "
                          "only (no registry spec); pass validators=[...] to validate against them")
    return [build_validator(e["spec"]) for e in entries]
