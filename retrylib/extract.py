"""Text, tokens and cache facts out of any response shape.

Shapes understood:

- OpenAI chat completion dicts: ``{"choices": [{"message": {"content": ...}}], "usage": ...}``,
  and legacy text completions ``{"choices": [{"text": ...}]}``;
- Anthropic message dicts: ``{"content": [{"type": "text", "text": ...}, ...], "usage":
  {"input_tokens", "output_tokens"}}``;
- litellm ``ModelResponse`` objects (and anything with ``.choices[0].message.content``);
- ``str``;
- content given as a list of parts (``[{"type": "text", "text": ...}]`` or plain strings).

A response with no choices, ``None`` content, or an unknown shape raises
:class:`~retrylib.errors.ExtractionError`, naming what was found instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retrylib.errors import ExtractionError


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _join_parts(parts: list[Any]) -> str:
    texts: list[str] = []
    for p in parts:
        if isinstance(p, str):
            texts.append(p)
        elif _get(p, "type", "text") in ("text", "output_text") and isinstance(_get(p, "text"), str):
            texts.append(_get(p, "text"))
    if not texts:
        kinds = sorted({str(_get(p, "type", type(p).__name__)) for p in parts}) or ["nothing"]
        raise ExtractionError(f"content parts hold no text (found: {', '.join(kinds)})")
    return "".join(texts)


def _content_text(content: Any, where: str) -> str:
    if content is None:
        raise ExtractionError(f"{where} is None (the model returned no text)")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _join_parts(content)
    raise ExtractionError(f"{where} has unexpected type {type(content).__name__}")


def extract_text(response: Any) -> str:
    """The text of a model response.

    Args:
        response: an OpenAI or Anthropic dict, a litellm ``ModelResponse``, or a ``str``.

    Returns:
        The text. An empty string is returned as such; judging it is the validators' job.

    Raises:
        ExtractionError: no choices, ``None`` content, or a shape it does not know.
    """
    if isinstance(response, str):
        return response
    if response is None:
        raise ExtractionError("response is None")
    choices = _get(response, "choices")
    if choices is not None:
        if not choices:
            raise ExtractionError("response has no choices")
        first = choices[0]
        message = _get(first, "message")
        if message is not None:
            return _content_text(_get(message, "content"), "choices[0].message.content")
        if _get(first, "text") is not None:
            return _content_text(_get(first, "text"), "choices[0].text")
        raise ExtractionError("choices[0] has neither a message nor text")
    if _get(response, "type") == "message" or (
        isinstance(_get(response, "content"), list) and _get(response, "role") == "assistant"
    ):
        return _content_text(_get(response, "content"), "content")
    if isinstance(response, Mapping):
        keys = ", ".join(sorted(map(str, response.keys()))[:8]) or "no keys"
        raise ExtractionError(f"unknown response shape: a dict with keys {keys}")
    raise ExtractionError(f"unknown response shape: {type(response).__name__}")


def extract_usage(response: Any) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)``, zeros when the response carries no usage."""
    usage = _get(response, "usage") if not isinstance(response, str) else None
    if usage is None:
        return 0, 0
    tin = _get(usage, "prompt_tokens", None)
    if tin is None:
        tin = _get(usage, "input_tokens", 0)
    tout = _get(usage, "completion_tokens", None)
    if tout is None:
        tout = _get(usage, "output_tokens", 0)
    return int(tin or 0), int(tout or 0)


def extract_finish_reason(response: Any) -> str | None:
    """Why the model stopped: ``stop``, ``length`` (cut at ``max_tokens``), ``tool_calls``...

    Anthropic's ``stop_reason`` is mapped to the OpenAI words (``max_tokens`` -> ``length``,
    ``end_turn``/``stop_sequence`` -> ``stop``, ``tool_use`` -> ``tool_calls``). ``None``
    when the response does not say.
    """
    if isinstance(response, str) or response is None:
        return None
    choices = _get(response, "choices")
    if choices:
        reason = _get(choices[0], "finish_reason")
        return reason if isinstance(reason, str) else None
    reason = _get(response, "stop_reason")
    if isinstance(reason, str):
        return {"max_tokens": "length", "end_turn": "stop", "stop_sequence": "stop",
                "tool_use": "tool_calls"}.get(reason, reason)
    return None


def extract_model(response: Any) -> str | None:
    """The model name the response reports, if any."""
    if isinstance(response, str) or response is None:
        return None
    m = _get(response, "model")
    return m if isinstance(m, str) else None


def is_cache_hit(response: Any) -> bool:
    """Whether litellm served this response from its cache."""
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, Mapping):
        return bool(hidden.get("cache_hit"))
    return False


def response_cost(response: Any) -> float:
    """litellm's cost estimate for the response; 0.0 when it has none (local models)."""
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, Mapping):
        cost = hidden.get("response_cost")
        if isinstance(cost, int | float):
            return float(cost)
    return 0.0
