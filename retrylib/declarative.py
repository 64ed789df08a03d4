"""``llm_call(config)``: the original design's declarative form, with the original's meanings.

The config is one dict (or a YAML file holding it), an ``llm_config`` of the original design
taken unchanged::

    model: max/code_generator_agent    # a litellm model string, proxy/<name>, or an alias
    model_aliases:                     # how aliases are served (see retrylib.aliases)
      max/code_generator_agent: {model: openai/smollm2, api_base: "http://127.0.0.1:8080/v1"}
    messages: [{role: user, content: "Reply with a JSON object with a key 'name'."}]
    # question: "..."                  # instead of messages: one user message
    response_format: {type: json_object}   # also adds a system line asking for JSON
    validation:                        # a list of specs, or one spec (see validators.registry)
      - {type: json_string}
      - {type: field_present, params: {field_name: name}}
    retry_config: {max_attempts: 5, initial_delay: 0.5}
    max_attempts_before_tool_use: 2   # these (and debug_mode) may also sit inside retry_config
    max_attempts_before_human: 4      # default: max_attempts (running out means human review)
    debug_tool_name: debugger
    debug_tool_mcp_config: {mcpServers: {debugger: {command: mcp-debugger}}}
    original_user_prompt: "..."        # default: the last user message
    image_directory: ./images          # local image paths become base64 data URIs
    max_image_size_kb: 500
    default_validate: true             # adds response_not_empty when no validators are given
    temperature: 0.2                   # anything else is a litellm keyword, passed through

Where it differs from ``retry_with_validation`` with a default ``RetryConfig``, it does what
the original did: the retry defaults are the original's (``initial_delay`` 1.0, no jitter, a
human after ``max_attempts`` failures), a retry after a failed validation waits its backoff
delay when ``retry_config`` sets ``initial_delay`` or ``backoff_factor``, and a
``HumanReviewNeededError`` carries ``context`` (``original_llm_config``, ``last_response``,
``attempt``) as the original's ``PoCHumanReviewNeededError`` did.

``call=`` replaces the routes: one call function (a ``ScriptedCall``, your own client)
serves the main model and every validation model, or a dict maps model names to call
functions. It receives the request keywords (``temperature``, ``max_tokens``, ``mcp_config``,
``response_format``...), never ``model``/``api_base``/``api_key``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrylib.aliases import Routes, load_aliases, original_defaults
from retrylib.config import RetryConfig, format_validation_error
from retrylib.errors import ConfigError, HumanReviewNeededError
from retrylib.manager import retry_with_validation, run_sync
from retrylib.messages import add_json_instruction, has_images, inline_images, wants_json_object
from retrylib.result import RetryResult
from retrylib.validators.registry import build_validators

_LIFTED = ("max_attempts_before_tool_use", "max_attempts_before_human", "debug_tool_name",
           "debug_tool_mcp_config", "original_user_prompt", "max_attempts_before_constrained",
           "max_attempts_before_fallback", "fallback_models", "escalation_history")
# The original's PoCRetryConfig: used where retry_config does not say otherwise.
_ORIGINAL_RETRY = {"initial_delay": 1.0, "backoff_factor": 2.0, "max_delay": 60.0, "jitter": "none"}

Source = str | Path | dict[str, Any]
CallOverride = Callable[..., Any] | Mapping[str, Callable[..., Any]] | None


class LLMCallConfig(BaseModel):
    """The declarative config, validated. Unknown keys are litellm keywords."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    response_format: Any = None
    validation: list[Any] = Field(default_factory=list)
    retry_config: dict[str, Any] = Field(default_factory=dict)
    default_validate: bool = True
    model_aliases: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _original_forms(cls, data: Any) -> Any:
        """The original's shorthands: ``question`` for one user message, one validation spec."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        question = data.pop("question", None)
        if question is not None and "messages" not in data:
            data["messages"] = [{"role": "user", "content": question}]
        spec = data.get("validation")
        if "validation" in data and not isinstance(spec, list):
            data["validation"] = [spec] if spec else []
        return data


def load_llm_config(source: Source | LLMCallConfig) -> LLMCallConfig:
    """Read a config from a dict, a YAML file path, or a YAML string.

    Raises:
        ConfigError: unreadable YAML, or a config that breaks a rule (named in the message).
    """
    if isinstance(source, LLMCallConfig):
        return source
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


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    texts = [m.get("content") for m in messages if m.get("role") == "user"]
    return texts[-1] if texts and isinstance(texts[-1], str) else None


def _retry_config(cfg: LLMCallConfig, extra: dict[str, Any]) -> RetryConfig:
    """The ``RetryConfig`` of a declarative call (the lifted keys leave ``extra``)."""
    given = dict(cfg.retry_config)
    retry = dict(given)
    for key in _LIFTED:
        if key in extra:
            retry[key] = extra.pop(key)
    if "debug_mode" in extra:  # the original read it at the top level too
        retry.setdefault("debug_mode", extra.pop("debug_mode"))
    for key, value in _ORIGINAL_RETRY.items():
        retry.setdefault(key, value)
    # The original slept initial_delay * backoff_factor**n before every retry; retrylib re-asks
    # a failed validation at once unless the user asked for delays.
    user_delays = "initial_delay" in given or "backoff_factor" in given
    retry.setdefault("delay_validation_retries", user_delays)
    n = retry.get("max_attempts", 3)
    if "max_attempts_before_human" not in retry and type(n) is int and n >= 1:
        retry["max_attempts_before_human"] = n  # the original's default: running out = a human
    if retry.get("max_attempts_before_human") is not None:
        retry.setdefault("human_when_exhausted", True)  # ... also when transport errors took attempts
    if retry.get("max_attempts_before_tool_use") is not None and not retry.get("debug_tool_name"):
        if retry.get("debug_tool_mcp_config") is not None:
            raise ConfigError("max_attempts_before_tool_use with debug_tool_mcp_config needs "
                              "debug_tool_name: the re-ask names the tool to use")
        retry.pop("max_attempts_before_tool_use")  # no tool to suggest: it did nothing there either
    if "original_user_prompt" not in retry:
        retry["original_user_prompt"] = _last_user_text(cfg.messages)
    return RetryConfig(**retry)


def _walk(validators: list[Any]) -> list[Any]:
    out = []
    for v in validators:
        out.append(v)
        out += _walk(list(getattr(v, "validators", ()) or ()))
        inner = getattr(v, "validator", None)
        if inner is not None:
            out += _walk([inner])
    return out


def plan(
    source: Source | LLMCallConfig, *, call: CallOverride = None,
) -> tuple[Any, list[dict[str, Any]], list[Any], RetryConfig, Any]:
    """Turn a config into ``(call, messages, validators, retry_config, response_format)``.

    Args:
        source: the config.
        call: replaces the routes, as in :func:`llm_call`.

    Returns:
        The main model's call function, the messages to send (with the JSON line and the
        inlined images), the validators (their validation models bound to routes), the
        ``RetryConfig`` and the ``response_format``.

    Raises:
        ConfigError: an invalid config, an unmapped alias, or a missing image file.
    """
    cfg = load_llm_config(source)
    extra = dict(cfg.model_extra or {})
    config = _retry_config(cfg, extra)
    image_directory = extra.pop("image_directory", None)
    max_kb = extra.pop("max_image_size_kb", 500)
    messages = copy.deepcopy(cfg.messages)
    if wants_json_object(cfg.response_format):
        messages = add_json_instruction(messages)
    if has_images(messages):
        if cfg.model.lower().startswith("max/"):
            raise ConfigError(f"model {cfg.model!r}: the original's max/ route (the Claude CLI "
                              "proxy) takes no image inputs, and no call is made")
        messages = inline_images(messages, image_directory, max_kb)
    routes = Routes(load_aliases(cfg.model_aliases), call)
    specs = list(cfg.validation)
    if not specs and cfg.default_validate:
        specs = ["response_not_empty"]
    validators = build_validators(specs)
    for v in _walk(validators):
        if callable(getattr(v, "bind_route", None)):
            v.bind_route(routes.make, original_prompt=config.original_user_prompt)
    main = routes.make(cfg.model, low=original_defaults(cfg.model), high=extra)
    return main, messages, validators, config, cfg.response_format


class _Recorder:
    """The main call, remembering its last response and messages (for the error context)."""

    def __init__(self, call: Any):
        self.call = call
        self.model = getattr(call, "model", None)
        self.last_response: Any = None
        self.last_messages: list[dict[str, Any]] = []
        for hook in ("accept", "reject"):  # the loop tells the route its verdicts
            if callable(getattr(call, hook, None)):
                setattr(self, hook, getattr(call, hook))

    async def __call__(self, messages: list[dict[str, Any]], **kw: Any) -> Any:
        self.last_messages = messages
        out = self.call(messages=messages, **kw)
        self.last_response = await out if inspect.isawaitable(out) else out
        return self.last_response


def _plain(value: Any) -> Any:
    """``value`` as plain data (objects as their repr), so the error context always pickles."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, str | int | float | bool) else repr(value)


def _context(cfg: LLMCallConfig, last_response: Any, attempts: list[Any],
             config: RetryConfig) -> dict[str, Any]:
    # The original's ``attempt`` is the 0-based index of the attempt it did not make, or of
    # the last one when the attempts ran out.
    n = len(attempts)
    ctx = {"original_llm_config": _plain(cfg.model_dump(exclude_unset=True)),
           "last_response": last_response, "attempt": n if n < config.max_attempts else n - 1}
    if attempts and attempts[-1].outcome == "transport_error":
        ctx["error"] = attempts[-1].error_message
    return ctx


async def llm_call(source: Source | LLMCallConfig, *, call: CallOverride = None) -> RetryResult:
    """Run an original-design ``llm_config`` through ``retry_with_validation``.

    Args:
        source: a config dict, a YAML file path or a YAML string (see the module docstring).
        call: replaces the routes: one call function for every model of the config (the main
            one and each validation model), or a dict from model name (as the config writes
            it) to call function, the others going by their routes. Useful for tests
            (``retrylib.testing.ScriptedCall``) and for serving aliases with your own client.

    Returns:
        The :class:`RetryResult`.

    Raises:
        ConfigError: before any call, for an invalid config or an unmapped alias.
        HumanReviewNeededError: at ``max_attempts_before_human`` failures, or when the attempts
            run out (the original's default); its ``context`` holds ``original_llm_config``,
            ``last_response`` and ``attempt``.
        RetryError: otherwise, as ``retry_with_validation`` does.
    """
    cfg = load_llm_config(source)
    main, messages, validators, config, response_format = plan(cfg, call=call)
    rec = _Recorder(main)
    try:
        return await retry_with_validation(rec, messages, validators, config, response_format)
    except HumanReviewNeededError as exc:
        exc.context = _context(cfg, exc.last_response or rec.last_response, exc.attempts, config)
        raise


def llm_call_sync(source: Source | LLMCallConfig, *, call: CallOverride = None) -> RetryResult:
    """The sync wrapper of :func:`llm_call` (same arguments, result and errors)."""
    return run_sync(llm_call(source, call=call))


__all__ = ["LLMCallConfig", "llm_call", "llm_call_sync", "load_llm_config", "plan"]
