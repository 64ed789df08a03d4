"""Model aliases: the original design's model names, mapped to routes.

The original design sent ``max/<agent>`` to its Claude CLI proxy and named its own configs
``meta-task/<task>``; neither is a litellm provider. retrylib serves such names through a
map from alias to route, given in the ``llm_config``::

    model_aliases:
      max/code_tester_agent: {model: openai/smollm2, api_base: "http://127.0.0.1:8080/v1"}
      meta-task/validate-python-code: openai/gpt-4o-mini     # a bare model string

or in a YAML file named by ``$RETRYLIB_MODEL_ALIASES`` (the same mapping, at the top level or
under a ``model_aliases`` key); the config's entries win over the file's. An entry is a model
string, or a dict with ``model`` plus any keyword of ``make_call`` (``api_base``,
``api_key``, ``max_tokens``, ...). Any model string can be mapped, ``vertex_ai/...`` too.

An unmapped name with an alias prefix (``max/``, ``meta-task/``) is a ``ConfigError`` that
names it and says how to map it. Every other name is a litellm model string (or
``proxy/<name>``), exactly as before.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from retrylib.client import make_call
from retrylib.errors import ConfigError

ALIAS_PREFIXES = ("max/", "meta-task/")
ALIASES_ENV = "RETRYLIB_MODEL_ALIASES"
# What identifies a route rather than a request: a call that replaces the route gets none of it.
_ROUTE_KEYS = ("model", "api_base", "api_key")
# The original's defaults for its Claude proxy (max/) when the config does not set them.
_MAX_DEFAULTS = {"temperature": 0.1, "max_tokens": 250}
_VERTEX_ENV = {"vertex_project": ("LITELLM_VERTEX_PROJECT", "GOOGLE_CLOUD_PROJECT"),
               "vertex_location": ("LITELLM_VERTEX_LOCATION", "GOOGLE_CLOUD_REGION")}


def is_alias(model: str) -> bool:
    """Whether ``model`` is an original-design alias (``max/...``, ``meta-task/...``)."""
    return model.lower().startswith(ALIAS_PREFIXES)


def original_defaults(model: str) -> dict[str, Any]:
    """The request defaults the original gave a model name: ``max/`` got temperature 0.1 and
    max_tokens 250 unless the config set them."""
    return dict(_MAX_DEFAULTS) if model.lower().startswith("max/") else {}


def _entry(alias: str, value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str) and value:
        return {"model": value}
    if isinstance(value, Mapping) and isinstance(value.get("model"), str) and value["model"]:
        return dict(value)
    raise ConfigError(f"model alias {alias!r} in {where} must map to a model string or to a dict "
                      f"with a 'model' key, not {value!r}")


def load_aliases(config_aliases: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The alias map: the ``$RETRYLIB_MODEL_ALIASES`` file's entries, then the config's.

    Args:
        config_aliases: the ``model_aliases`` of an ``llm_config``.

    Returns:
        ``{alias: {"model": ..., **make_call keywords}}``.

    Raises:
        ConfigError: the file is missing or not a YAML mapping, or an entry names no model.
    """
    out: dict[str, dict[str, Any]] = {}
    path = os.environ.get(ALIASES_ENV)
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"${ALIASES_ENV} names {path!r}, which is not a file")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"${ALIASES_ENV} file {path!r} is not valid YAML: {exc}") from None
        if isinstance(data, Mapping) and isinstance(data.get("model_aliases"), Mapping):
            data = data["model_aliases"]
        if not isinstance(data, Mapping):
            raise ConfigError(f"${ALIASES_ENV} file {path!r} must hold a mapping of aliases")
        out.update({str(k): _entry(str(k), v, path) for k, v in data.items()})
    for k, v in (config_aliases or {}).items():
        out[str(k)] = _entry(str(k), v, "model_aliases")
    return out


def _unmapped(model: str) -> ConfigError:
    return ConfigError(
        f"model {model!r} is an alias of the original design ({', '.join(ALIAS_PREFIXES)}...), "
        "not a litellm model string, and no route is mapped to it. Map it in the llm_config, "
        f"e.g. model_aliases: {{{model!r}: {{model: 'openai/<name>', "
        "api_base: 'http://host:port/v1'}}, "
        f"or in the YAML file named by ${ALIASES_ENV}; or serve it yourself with "
        "llm_call(config, call=...)"
    )


class _Bound:
    """A caller's call function standing in for a route, with the request's keywords bound.

    It forwards ``model`` and the cache hooks (``accept``/``reject``), so the loop treats it
    as it treats the call it wraps.
    """

    def __init__(self, call: Any, kwargs: dict[str, Any]):
        self.call = call
        self.kwargs = kwargs
        self.model = getattr(call, "model", None)

    async def __call__(self, messages: list[dict[str, Any]], **kw: Any) -> Any:
        out = self.call(messages=messages, **{**self.kwargs, **kw})
        return await out if inspect.isawaitable(out) else out

    async def _hook(self, name: str, messages: list[dict[str, Any]], kw: dict[str, Any]) -> None:
        hook = getattr(self.call, name, None)
        if hook is not None:
            out = hook(messages=messages, **{**self.kwargs, **kw})
            if inspect.isawaitable(out):
                await out

    async def accept(self, messages: list[dict[str, Any]], **kw: Any) -> None:
        await self._hook("accept", messages, kw)

    async def reject(self, messages: list[dict[str, Any]], **kw: Any) -> None:
        await self._hook("reject", messages, kw)

    def __repr__(self) -> str:
        return f"_Bound({self.call!r}, {sorted(self.kwargs)})"


class Routes:
    """How a model name from a config becomes a call function.

    Args:
        aliases: the alias map (:func:`load_aliases`).
        override: a call function that serves every model (``ScriptedCall``, your own
            function...), or a mapping from model name to call function (the names it lacks go
            by their route); ``None``: every name goes by its route.
    """

    def __init__(self, aliases: Mapping[str, dict[str, Any]] | None = None,
                 override: Callable[..., Any] | Mapping[str, Callable[..., Any]] | None = None):
        self.aliases = dict(aliases or {})
        self.override = override

    def _replacement(self, model: str) -> Any:
        if isinstance(self.override, Mapping):
            return self.override.get(model)
        return self.override

    def make(self, model: str, low: Mapping[str, Any] | None = None,
             high: Mapping[str, Any] | None = None) -> Any:
        """The call function for ``model``.

        Args:
            model: the name as the config writes it (an alias or a litellm model string).
            low: request keywords that the alias entry may override (built-in defaults).
            high: request keywords that override the alias entry (what the config says).

        Returns:
            A ``ModelCall``, or the caller's call with the request keywords bound (the route
            keys ``model``, ``api_base`` and ``api_key`` are not passed to it).

        Raises:
            ConfigError: an unmapped alias (``max/...``, ``meta-task/...``).
        """
        low, high = dict(low or {}), dict(high or {})
        replacement = self._replacement(model)
        if replacement is not None:
            kwargs = {k: v for k, v in {**low, **high}.items() if k not in _ROUTE_KEYS}
            return _Bound(replacement, kwargs)
        entry = self.aliases.get(model)
        if entry is None and is_alias(model):
            raise _unmapped(model)
        entry = dict(entry or {"model": model})
        target = entry.pop("model")
        kwargs = {**low, **entry, **high}
        kwargs.pop("model", None)
        if target.lower().startswith("vertex_ai/"):
            # As the original: the project and region come from the environment when unset.
            for key, names in _VERTEX_ENV.items():
                value = next((os.environ[n] for n in names if os.environ.get(n)), None)
                if key not in kwargs and value:
                    kwargs[key] = value
        return make_call(target, **kwargs)
