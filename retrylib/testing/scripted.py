"""``ScriptedCall``: a call function that serves a script, in the spirit of httpx's ``MockTransport``.

It is real code, not a mock: it is called exactly as a route is (``await call(messages=...,
**kw)``), serves the next item of its script, and records every request it received, so a
test reads the whole transcript the loop sent (the re-ask messages, the constrained
``response_format``, the fallback ``model``) instead of counting calls::

    from retrylib.testing import Delay, ScriptedCall, http_error, reply

    call = ScriptedCall([
        http_error(429, headers={"retry-after": "1"}),     # a genuine litellm.RateLimitError
        "not json",                                        # an OpenAI-shaped reply
        reply('{"name": "Ann"}', finish_reason="stop", tokens=(12, 6)),
    ])
    result = await retry_with_validation(call, messages, [V.JsonObject()], config)
    call.requests[2].messages[-1]["content"]               # the re-ask the model got

Script items:

- ``str``: an OpenAI chat-completion dict with that content (see :func:`reply`);
- :class:`Text`: the bare string, as a plain-text route returns it (``reply(t, shape="text")``);
- a ``dict`` or any other object: returned as is (an Anthropic dict, a litellm
  ``ModelResponse``...);
- an exception instance: raised (build genuine ones with :mod:`retrylib.testing.exceptions`);
- :class:`Delay`: wait, then serve its item; a delay beyond the request's ``timeout`` raises
  the route's timeout error at the timeout, as a real client does;
- a callable ``item(messages, **kw)`` (sync or async): its return value is served as an item.

When the script runs out, the call raises :class:`ScriptExhausted` (not retryable), unless
``then=`` gives an item to serve from there on.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from retrylib.testing.exceptions import Route, timeout_error

Shape = Literal["openai", "anthropic", "text"]


class ScriptExhausted(AssertionError):
    """The call got more requests than its script has items (a test's expectation failed)."""


@dataclass(frozen=True, slots=True)
class Text:
    """A reply served as the bare string ``text`` (a plain-text route), not as an OpenAI dict."""

    text: str


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``seconds`` (``float('inf')``: hang until the timeout or a cancel), then serve ``item``."""

    seconds: float
    item: Any = "OK"


@dataclass(frozen=True, slots=True)
class Request:
    """One request the call received: deep copies of what the loop sent.

    Attributes:
        number: 1 for the first request.
        messages: the conversation sent.
        kwargs: every other argument (``model``, ``response_format``, ``timeout``, ...).
        at: ``time.monotonic()`` when it arrived.
    """

    number: int
    messages: list[dict[str, Any]]
    kwargs: dict[str, Any]
    at: float

    @property
    def last(self) -> str:
        """The content of the last message (the re-ask, on a retry)."""
        return str(self.messages[-1].get("content", "")) if self.messages else ""


def reply(content: str | None, *, shape: Shape = "openai", finish_reason: str = "stop",
          tokens: tuple[int, int] | None = None, model: str = "scripted",
          tool_calls: list[dict[str, Any]] | None = None) -> Any:
    """A response in ``shape`` whose text is ``content``.

    Args:
        content: the text (``None``: a message without content, which the loop calls empty).
        shape: ``openai`` (a chat-completion dict), ``anthropic`` (a messages dict) or
            ``text`` (a :class:`Text`: the bare string, as a plain-text route returns).
        finish_reason: ``stop``, or ``length`` for an answer cut at ``max_tokens``.
        tokens: (prompt, completion) token counts; by default a word count.
        model: the model the response names.
        tool_calls: OpenAI ``tool_calls`` for the message.
    """
    if shape == "text":
        return Text(content or "")
    tin, tout = tokens if tokens is not None else (8, len((content or "").split()))
    if shape == "anthropic":
        return {"id": "msg_scripted", "type": "message", "role": "assistant", "model": model,
                "content": [] if content is None else [{"type": "text", "text": content}],
                "stop_reason": "max_tokens" if finish_reason == "length" else "end_turn",
                "usage": {"input_tokens": tin, "output_tokens": tout}}
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}}


@dataclass
class ScriptedCall:
    """A call function serving ``script``, one item per request.

    Args:
        script: the items, in order (see the module docstring).
        then: served once the script is used up (default: raise :class:`ScriptExhausted`).
        model: the call's ``model`` attribute (the loop records it on each attempt).
        route: which route's timeout error a :class:`Delay` past the timeout raises.

    Attributes:
        requests: every :class:`Request` received, in order.
        verdicts: ``("accept" | "reject", request number)`` for each verdict the loop gave.
    """

    script: Iterable[Any] = ()
    then: Any = field(default=ScriptExhausted)
    model: str | None = "scripted"
    route: Route = "proxy"
    requests: list[Request] = field(default_factory=list, init=False)
    verdicts: list[tuple[str, int]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._items = list(self.script)
        self._next = 0
        self._by_messages: dict[int, int] = {}

    @property
    def calls(self) -> int:
        """How many requests were received."""
        return len(self.requests)

    @property
    def remaining(self) -> int:
        """How many script items were not served yet."""
        return len(self._items) - self._next

    async def __call__(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        req = Request(len(self.requests) + 1, copy.deepcopy(list(messages)), copy.deepcopy(kwargs),
                      time.monotonic())
        self.requests.append(req)
        self._by_messages[id(messages)] = req.number
        if self._next < len(self._items):
            item = self._items[self._next]
            self._next += 1
        elif self.then is ScriptExhausted:
            raise ScriptExhausted(f"ScriptedCall: the script has {len(self._items)} item(s), "
                                  f"but request {req.number} came")
        else:
            item = self.then
        return await self._serve(item, messages, kwargs)

    async def _serve(self, item: Any, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> Any:
        while True:
            if isinstance(item, Delay):
                timeout = kwargs.get("timeout")
                if timeout is not None and item.seconds > timeout:
                    await asyncio.sleep(timeout)
                    raise timeout_error(self.route)
                await asyncio.sleep(item.seconds)
                item = item.item
            elif isinstance(item, BaseException):
                raise item
            elif isinstance(item, type) and issubclass(item, BaseException):
                raise item()
            elif callable(item):
                item = item(messages, **kwargs)
                if inspect.isawaitable(item):
                    item = await item
            elif isinstance(item, Text):
                return item.text
            elif isinstance(item, str):
                return reply(item, model=kwargs.get("model") or self.model or "scripted")
            else:
                return copy.deepcopy(item)

    def accept(self, messages: list[dict[str, Any]], **kwargs: Any) -> None:
        """The loop accepted the answer to ``messages`` (recorded in ``verdicts``)."""
        self.verdicts.append(("accept", self._by_messages.get(id(messages), 0)))

    def reject(self, messages: list[dict[str, Any]], **kwargs: Any) -> None:
        """The loop rejected the answer to ``messages`` (recorded in ``verdicts``)."""
        self.verdicts.append(("reject", self._by_messages.get(id(messages), 0)))


def scripted(*items: Any, then: Any = ScriptExhausted, **options: Any) -> ScriptedCall:
    """``ScriptedCall([*items], then=then, **options)``, for short scripts."""
    return ScriptedCall(list(items), then=then, **options)

