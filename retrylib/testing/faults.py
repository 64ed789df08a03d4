"""The fault plan of the chaos proxy: which fault each request gets, parsed and checked.

Fault catalogue (one token per request)::

    pass                   forward to the upstream unchanged
    400 401 403 404 408    reply that status with an OpenAI-style JSON error body
    409 422 429 500 502
    503 504
    <status>:<options>     the same, with headers; options are ``;``-separated:
                             retry-after=2         Retry-After: 2
                             retry-after-date=2    Retry-After: <HTTP date 2 s ahead>
                             retry-after-ms=1500   retry-after-ms: 1500
                             x-should-retry=false  x-should-retry: false
    hang / hang:5          hold the request unanswered until the client leaves or N s pass
                           (default ``hang_seconds``), then close the connection
    latency:0.5            sleep 0.5 s, then forward
    reset                  send the status line, headers and part of a body, then abort TCP
    malformed              200, Content-Type application/json, a body that is not JSON
    empty                  200, a valid chat.completion whose content is ""
    truncated              200, the first half of a valid completion JSON (a complete HTTP
                           response whose JSON body is cut)
    wrong_shape            200, valid JSON of the wrong shape (no ``choices``)
    reply:<content>        200, a well-formed chat.completion whose content is <content>
    tool_call:<name>:<arguments>
                           200, a completion whose message calls tool <name> with the
                           arguments string <arguments>, verbatim (invalid JSON too), content
                           ``None`` and ``finish_reason`` ``tool_calls``, as llama.cpp sends
                           (bare ``tool_call``: tool ``tool``, arguments ``{}``)

Selecting the fault for a request:

1. a request header ``X-Chaos-Fault: <token>`` wins (the whole header is one token, so
   ``reply:`` content may hold commas there);
2. otherwise ``X-Chaos-Key: <key>`` picks that key's scripted sequence (no header: the
   default key ``""``) and its next token is popped;
3. once a sequence is exhausted, requests ``pass``.

Keys let concurrent tests share one proxy without taking each other's faults.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retrylib.errors import ConfigError

__all__ = ["ERROR_TYPES", "FAULTS", "Fault", "completion", "parse_fault", "parse_plan"]

#: Every fault name the plan grammar knows, with what it does.
FAULTS: dict[str, str] = {
    "pass": "forward to the upstream unchanged",
    **{str(s): f"reply HTTP {s} with an OpenAI-style JSON error" for s in
       (400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504)},
    "hang": "hold the request unanswered until the client leaves or N seconds pass",
    "latency": "sleep N seconds, then forward",
    "reset": "send headers and part of a body, then abort the TCP connection",
    "malformed": "200 with a body that is not JSON",
    "empty": "200 with a completion whose content is empty",
    "truncated": "200 with the first half of a completion's JSON",
    "wrong_shape": "200 with JSON that has no choices",
    "reply": "200 with a completion whose content is the text after 'reply:'",
    "tool_call": "200 with a completion that calls a tool: 'tool_call:<name>:<arguments>'",
}

_STATUS_OPTIONS = ("retry-after", "retry-after-date", "retry-after-ms", "x-should-retry")
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 408: "timeout", 409: "conflict", 422: "invalid_request_error",
    429: "rate_limit_exceeded", 500: "server_error", 502: "bad_gateway",
    503: "service_unavailable", 504: "timeout",
}
@dataclass(frozen=True, slots=True)
class Fault:
    """One parsed plan token.

    Attributes:
        token: the token as written, recorded in the journal.
        name: a key of :data:`FAULTS`.
        status: the HTTP status for status faults, else ``None``.
        options: header options of a status fault, as ``(name, value)`` pairs.
        seconds: the duration of ``hang`` / ``latency`` (``None``: the default).
        content: the text of a ``reply:`` fault.
    """

    token: str
    name: str
    status: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    seconds: float | None = None
    content: str | None = None


def parse_fault(token: str | Fault) -> Fault:
    """Parse one plan token.

    Args:
        token: e.g. ``"429:retry-after=2"``, ``"hang:5"``, ``"reply:hello"``.

    Returns:
        The :class:`Fault`.

    Raises:
        ConfigError: the token or one of its options is unknown or malformed.
    """
    if isinstance(token, Fault):
        return token
    raw = str(token).strip()
    name, sep, arg = raw.partition(":")
    name = name.strip().lower()
    if name == "reply":
        if not sep:  # "reply" alone is a typo for "reply:" (an empty reply is "empty")
            raise ConfigError(f"chaos fault {raw!r}: reply needs its content after a colon, "
                              "as in 'reply:hello' (an empty completion is the fault 'empty')")
        # The content is verbatim: stripping it would change what tests assert on.
        return Fault(raw, "reply", content=str(token).lstrip().partition(":")[2])
    if name == "tool_call":
        if not sep:  # bare: a call of a tool named "tool" with no arguments
            return Fault(raw, "tool_call", options=(("name", "tool"),), content="{}")
        tool, colon, arguments = str(token).lstrip().partition(":")[2].partition(":")
        if not colon or not tool.strip():
            raise ConfigError(f"chaos fault {raw!r}: tool_call needs a name and arguments, as in "
                              "'tool_call:run_python:{\"code\": \"1+1\"}'")
        # The arguments are verbatim: a test of unparseable arguments needs them as written.
        return Fault(raw, "tool_call", options=(("name", tool.strip()),), content=arguments)
    known = ", ".join(FAULTS)
    if name not in FAULTS:
        raise ConfigError(f"unknown chaos fault {raw!r}; known faults: {known}")
    if name.isdigit():
        return Fault(raw, name, status=int(name), options=_parse_options(raw, arg) if sep else ())
    if name in ("hang", "latency"):
        seconds = None
        with contextlib.suppress(ValueError):
            seconds = float(arg) if sep else None
        if sep and (seconds is None or not math.isfinite(seconds) or seconds < 0):
            raise ConfigError(f"chaos fault {raw!r}: {arg!r} is not a finite number of seconds >= 0")
        return Fault(raw, name, seconds=seconds)
    if sep:
        raise ConfigError(f"chaos fault {raw!r}: {name!r} takes no options; known faults: {known}")
    return Fault(raw, name)


def _parse_options(raw: str, arg: str) -> tuple[tuple[str, str], ...]:
    options = []
    for part in filter(None, (p.strip() for p in arg.split(";"))):
        key, eq, value = (s.strip() for s in part.partition("="))
        key = key.lower()
        if key not in _STATUS_OPTIONS or not eq or not value:
            raise ConfigError(f"chaos fault {raw!r}: bad option {part!r}; "
                              f"known options: {', '.join(_STATUS_OPTIONS)} (as name=value)")
        if key == "x-should-retry":
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"chaos fault {raw!r}: x-should-retry is true or false, "
                                  f"got {value!r}")
        else:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number < 0:
                raise ConfigError(f"chaos fault {raw!r}: {key} needs a finite number >= 0, "
                                  f"got {value!r}")
        options.append((key, value))
    return tuple(options)


def parse_plan(plan: str | Sequence[str | Fault] | None) -> list[Fault]:
    """Parse a plan into faults, one per request.

    Args:
        plan: ``"503, 503, pass"`` (commas split tokens), or a list of tokens (each item is
            one token, so ``reply:`` content may hold commas), or ``None`` (empty plan).

    Returns:
        The list of :class:`Fault`.

    Raises:
        ConfigError: a token is unknown; the message lists the known faults.
    """
    if plan is None:
        return []
    if isinstance(plan, str):
        tokens: list[str | Fault] = [t for t in (p.strip() for p in plan.split(",")) if t]
    else:
        tokens = [t for t in plan if isinstance(t, Fault) or str(t).strip()]
    return [parse_fault(t) for t in tokens]


def completion(content: str, body: Any, fingerprint: str = "chaos-injected") -> dict[str, Any]:
    """A well-formed chat.completion; prompt tokens are counted as words, for plausibility."""
    messages = body.get("messages", []) if isinstance(body, dict) else []
    words = sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))
    out = len(content.split())
    return {
        "id": f"chatcmpl-chaos-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
        "created": int(time.time()),
        "model": (body.get("model") if isinstance(body, dict) else None) or "chaos",
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": words, "completion_tokens": out, "total_tokens": words + out},
    }
