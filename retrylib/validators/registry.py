"""Validators by name, for declarative configs (YAML parameter files, notebooks).

A spec is one of:

- a type name: ``"json_object"``;
- a dict: ``{"type": "regex", "params": {"pattern": "^\\\\d+$", "mode": "fullmatch"}}``;
- a validator that is already built, which passes through unchanged.

The names of the original design (``response_not_empty``, ``json_string``,
``field_present``, ``agent_task``, ``ai_contradiction_check``) mean what they meant there,
with the original's params (``field_name``/``present``/``expected_value``,
``task_prompt_to_claude``/``validation_model_alias``/``mcp_config``/``success_criteria``...);
``field_present`` and ``agent_task`` also take retrylib's params (``field``/``fields``, an
``LLMJudge``'s ``model``/``rubric``). retrylib's own names (``json_object``,
``fields_present``, ``llm_judge``...) keep retrylib's meanings. ``register`` adds your own.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from retrylib.errors import ConfigError
from retrylib.validators.agent import AgentTask
from retrylib.validators.base import Validator
from retrylib.validators.code import PythonCode
from retrylib.validators.combine import AllOf, AnyOf, Soft
from retrylib.validators.contradiction import ContradictionCheck
from retrylib.validators.grounded import Grounded
from retrylib.validators.judge import LLMJudge
from retrylib.validators.original import FieldPresent, JsonString
from retrylib.validators.structured import FieldsPresent, JsonObject, JsonSchema, PydanticSchema
from retrylib.validators.text import LengthRange, RegexMatch, ResponseNotEmpty

Factory = Callable[..., Validator]
_REGISTRY: dict[str, Factory] = {}


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``factory(**params)`` buildable as ``{"type": name, "params": params}``.

    Args:
        name: the type name.
        factory: a class or function that takes the params as keyword arguments and
            returns a validator.
        replace: allow replacing a name that is already registered.

    Raises:
        ConfigError: the name is taken (and ``replace`` is false), or empty, or the factory
            is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"validator type names must be non-empty strings, not {name!r}")
    if not callable(factory):
        raise ConfigError(f"the factory for validator type {name!r} is not callable: {factory!r}")
    if name in _REGISTRY and not replace:
        raise ConfigError(f"validator type {name!r} is already registered (pass replace=True)")
    _REGISTRY[name] = factory


def unregister(name: str) -> None:
    """Forget a registered type name (a no-op when it is unknown)."""
    _REGISTRY.pop(name, None)


def known_types() -> list[str]:
    """The registered type names, sorted."""
    return sorted(_REGISTRY)


def _is_validator(obj: Any) -> bool:
    return not isinstance(obj, str | Mapping) and callable(getattr(obj, "validate", None))


def build_validator(spec: str | Mapping[str, Any] | Validator) -> Validator:
    """The validator a spec describes.

    Raises:
        ConfigError: an unknown type (the message lists the known ones), params that the
            type does not take or lacks (named), or a value the validator refuses.
    """
    if _is_validator(spec):
        return spec  # type: ignore[return-value]
    kind: Any
    params: Any
    if isinstance(spec, str):
        kind, params = spec, {}
    elif isinstance(spec, Mapping):
        extra = sorted(set(spec) - {"type", "params"})
        if extra:
            raise ConfigError(
                f"validator spec {dict(spec)!r} has unknown keys {extra}; "
                "use {'type': ..., 'params': {...}}"
            )
        kind, params = spec.get("type"), spec.get("params") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"validator type {kind!r}: params must be a mapping, not {params!r}")
    else:
        raise ConfigError(
            f"a validator spec must be a type name, a dict or a validator, not {spec!r}"
        )
    factory = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ConfigError(
            f"unknown validator type {kind!r}; known types: {', '.join(known_types())}"
        )
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        _check_params(kind, signature, params)
    try:
        return factory(**params)
    except ConfigError as exc:
        raise ConfigError(f"validator type {kind!r}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"validator type {kind!r}: bad params: {exc}") from exc


def _check_params(kind: Any, signature: inspect.Signature, params: Mapping[str, Any]) -> None:
    """Name the unknown or missing params before the factory sees them."""
    accepted = [p.name for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    listed = f"(params: {', '.join(accepted)})"
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [k for k in params if k not in accepted]
    if unknown and not takes_any:
        raise ConfigError(
            f"validator type {kind!r}: unknown param{'s' * (len(unknown) > 1)} "
            f"{', '.join(map(repr, unknown))} {listed}"
        )
    try:
        signature.bind(**params)
    except TypeError as exc:
        raise ConfigError(f"validator type {kind!r}: bad params: {exc} {listed}") from None


def build_validators(
    specs: Iterable[str | Mapping[str, Any] | Validator] | None,
) -> list[Validator]:
    """:func:`build_validator` for each spec; ``None`` gives an empty list."""
    if specs is None:
        return []
    if isinstance(specs, str | Mapping) or _is_validator(specs):
        specs = [specs]  # type: ignore[list-item]
    return [build_validator(s) for s in specs]


def import_object(path: str) -> Any:
    """The object ``"pkg.mod:Class"`` (or ``"pkg.mod.Class"``) names."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{path!r} is not an import path like 'pkg.mod:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path!r}: {exc}") from exc
    return obj


# -- factories whose params differ from the class's arguments ------------------------------


def _fields(field: str | None = None, fields: list[str] | None = None) -> FieldsPresent:
    if (field is None) == (fields is None):
        raise ConfigError("give exactly one of 'field' (one path) and 'fields' (a list)")
    return FieldsPresent(field if field is not None else fields)  # type: ignore[arg-type]


def _field_present(field_name: str | None = None, present: bool = True, expected_value: Any = None,
                   field: str | None = None, fields: list[str] | None = None) -> Validator:
    """The original's form (``field_name``, ``present``, ``expected_value``) or retrylib's."""
    if field_name is not None:
        if field is not None or fields is not None:
            raise ConfigError("give 'field_name' (the original design's form) or 'field'/'fields' "
                              "(dotted paths), not both")
        return FieldPresent(field_name, expected_value=expected_value, present=present)
    if present is not True or expected_value is not None:
        raise ConfigError("'present' and 'expected_value' go with 'field_name'")
    if field is None and fields is None:
        raise ConfigError("give 'field_name' (one key), or exactly one of 'field' (one path) "
                          "and 'fields' (a list)")
    return _fields(field, fields)


_DEFAULT_AGENT = "max/generic_agent_validator"  # the original's default validation model


def _agent_task(task_prompt_to_claude: str | None = None,
                validation_model_alias: str = _DEFAULT_AGENT,
                mcp_config: dict[str, Any] | None = None,
                success_criteria: dict[str, Any] | None = None,
                model: str | None = None, **judge_params: Any) -> Validator:
    """The original's agent task (``task_prompt_to_claude``), or an ``LLMJudge`` (``model``)."""
    if task_prompt_to_claude is not None:
        if model is not None or judge_params:
            extra = sorted({"model", *judge_params} if model is not None else judge_params)
            raise ConfigError(f"unknown params {extra} next to 'task_prompt_to_claude' (params: "
                              "task_prompt_to_claude, validation_model_alias, mcp_config, "
                              "success_criteria)")
        return AgentTask(task_prompt_to_claude, validation_model_alias, mcp_config,
                         success_criteria)
    original = {"validation_model_alias": validation_model_alias != _DEFAULT_AGENT,
                "mcp_config": mcp_config is not None,
                "success_criteria": success_criteria is not None}
    if model is not None and any(original.values()):
        raise ConfigError(f"{sorted(k for k, v in original.items() if v)} go with "
                          "'task_prompt_to_claude', not with an LLM judge's 'model'")
    if model is None:
        got = f" (got: {', '.join(sorted(judge_params))})" if judge_params else ""
        raise ConfigError("give 'task_prompt_to_claude' (the original design's agent task) or "
                          f"'model' and 'rubric' (an LLM judge){got}")
    return _judge(model, **judge_params)


def _pydantic(model: str | type) -> PydanticSchema:
    return PydanticSchema(import_object(model) if isinstance(model, str) else model)


def _regex(
    pattern: str,
    flags: int | str | list[str] = 0,
    mode: str = "search",
    description: str | None = None,
) -> RegexMatch:
    if not isinstance(flags, int):  # YAML: "IGNORECASE" or ["I", "MULTILINE"]
        names = [flags] if isinstance(flags, str) else list(flags)
        value = 0
        for n in names:
            flag = getattr(re, str(n).upper(), None)
            if not isinstance(flag, re.RegexFlag):
                raise ConfigError(f"unknown regex flag {n!r}")
            value |= flag
        flags = value
    return RegexMatch(pattern, flags=flags, mode=mode, description=description)  # type: ignore[arg-type]


def _judge(
    model: str, rubric: str | None = None, task: str | None = None, **kwargs: Any
) -> LLMJudge:
    if (rubric is None) == (task is None):
        raise ConfigError("give exactly one of 'rubric' and 'task' (the same thing)")
    return LLMJudge(model, rubric if rubric is not None else task, **kwargs)  # type: ignore[arg-type]


def _all_of(validators: list[Any], fail_fast: bool = False) -> AllOf:
    return AllOf(*build_validators(validators), fail_fast=fail_fast)


def _any_of(validators: list[Any]) -> AnyOf:
    return AnyOf(*build_validators(validators))


def _soft(validator: Any) -> Soft:
    return Soft(build_validator(validator))


def _grounded(source: str, schema: Any = None, exempt: list[str] | None = None,
              fields: list[str] | None = None) -> Grounded:
    if isinstance(schema, str):
        schema = import_object(schema)
    return Grounded(source, schema, exempt or (), fields)


_BUILTINS: dict[str, Factory] = {
    "response_not_empty": ResponseNotEmpty,
    "json_string": JsonString,
    "field_present": _field_present,
    "agent_task": _agent_task,
    "ai_contradiction_check": ContradictionCheck,
    "json_object": JsonObject,
    "fields_present": _fields,
    "pydantic_schema": _pydantic,
    "json_schema": JsonSchema,
    "regex": _regex,
    "length_range": LengthRange,
    "python_code": PythonCode,
    "llm_judge": _judge,
    "all_of": _all_of,
    "any_of": _any_of,
    "soft": _soft,
    "grounded": _grounded,
}
for _name, _factory in _BUILTINS.items():
    register(_name, _factory)
