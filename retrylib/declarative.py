"""``llm_call(config)``: the original design's declarative form.

The config is one dict (or a YAML file holding it)::

    model: openai/smollm2              # any litellm model string, or proxy/<name>
    api_base: http://127.0.0.1:8080/v1
    messages: [{role: user, content: "Reply with a JSON object with a key 'name'."}]
    response_format: {type: json_object}
    validation:                        # validator specs, see retrylib.validators.registry
      - {type: json_string}
      - {type: field_present, params: {field: name}}
    retry_config: {max_attempts: 5, initial_delay: 0.5, jitter: full, seed: 7}
    max_attempts_before_tool_use: 2   # these five may also sit inside retry_config
    max_attempts_before_human: 4
    debug_tool_name: debugger
    debug_tool_mcp_config: {command: mcp-debugger}
    original_user_prompt: "..."
    default_validate: true             # adds response_not_empty when no validators are given
    temperature: 0.2                   # anything else is a litellm keyword, passed through
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrylib.client import make_call
from retrylib.config import RetryConfig, format_validation_error
from retrylib.errors import ConfigError
from retrylib.manager import retry_with_validation, run_sync
from retrylib.result import RetryResult
from retrylib.validators.registry import build_validators

_LIFTED = ("max_attempts_before_tool_use", "max_attempts_before_human", "debug_tool_name",
           "debug_tool_mcp_config", "original_user_prompt", "max_attempts_before_constrained",
           "max_attempts_before_fallback", "fallback_models", "escalation_history")


class LLMCallConfig(BaseModel):
    """The declarative config, validated. Unknown keys are litellm keywords."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    response_format: Any = None
    validation: list[Any] = Field(default_factory=list)
    retry_config: dict[str, Any] = Field(default_factory=dict)
    default_validate: bool = True


def load_llm_config(source: str | Path | dict[str, Any]) -> LLMCallConfig:
    """Read a config from a dict, a YAML file path, or a YAML string.

    Raises:
        ConfigError: unreadable YAML, or a config that breaks a rule (named in the message).
    """
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                     and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"llm_call config file not found: {path}")
        source = path.read_text()
    if isinstance(source, str):
        try:
            source = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise ConfigError(f"llm_call config is not valid YAML: {exc}") from None
    if not isinstance(source, dict):
        raise ConfigError(f"llm_call config must be a mapping, got {type(source).__name__}")
    try:
        return LLMCallConfig(**source)
    except ValidationError as exc:
        raise ConfigError(format_validation_error("llm_call config", exc)) from None


def plan(
    source: str | Path | dict[str, Any] | LLMCallConfig,
) -> tuple[Any, list[dict[str, Any]], list[Any], RetryConfig, Any]:
    """Turn a config into ``(call, messages, validators, retry_config, response_format)``."""
    cfg = source if isinstance(source, LLMCallConfig) else load_llm_config(source)
    extra = dict(cfg.model_extra or {})
    retry = dict(cfg.retry_config)
    for key in _LIFTED:
        if key in extra:
            retry[key] = extra.pop(key)
    config = RetryConfig(**retry)
    specs = list(cfg.validation)
    if not specs and cfg.default_validate:
        specs = ["response_not_empty"]
    validators = build_validators(specs)
    call = make_call(cfg.model, **extra)
    return call, cfg.messages, validators, config, cfg.response_format


async def llm_call(source: str | Path | dict[str, Any] | LLMCallConfig) -> RetryResult:
    """Run the declarative config through ``retry_with_validation``.

    Args:
        source: a config dict, a YAML file path or a YAML string (see the module docstring).

    Returns:
        The :class:`RetryResult`.

    Raises:
        ConfigError: before any call, for an invalid config.
        RetryError: as ``retry_with_validation`` does.
    """
    call, messages, validators, config, response_format = plan(source)
    return await retry_with_validation(call, messages, validators, config, response_format)


def llm_call_sync(source: str | Path | dict[str, Any] | LLMCallConfig) -> RetryResult:
    """The sync wrapper of :func:`llm_call`."""
    return run_sync(llm_call(source))
