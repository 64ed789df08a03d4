"""A streamed answer (``stream=True``), read to its end and assembled into one response.

An answer must be whole before it can be validated, so a route asked to stream reads the
stream to its last chunk and returns what a non-streamed request would have returned:

- the proxy route gets server-sent events (``data: {chunk}`` lines, then ``data: [DONE]``):
  :func:`assemble_sse` joins the chunks' deltas into an OpenAI chat completion dict (content,
  tool calls, finish reason, usage when the server sent it, model, id);
- the litellm route gets a ``CustomStreamWrapper``: :func:`read_litellm_stream` iterates it
  and builds a ``ModelResponse`` with litellm's own ``stream_chunk_builder``.

A stream that ends before its end (no ``[DONE]`` and no finish reason) is a transport
failure that retrying can fix (``httpx.RemoteProtocolError``, as a body cut short is on the
proxy route); a chunk that is not JSON is a :class:`~retrylib.errors.MalformedResponseError`.
Both are retried or reported like any other answer, and the whole read stays inside the
request's timeout.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from retrylib.errors import MalformedResponseError

__all__ = ["assemble_sse", "is_event_stream", "read_litellm_stream"]


def is_event_stream(headers: dict[str, str], body: bytes) -> bool:
    """Is this reply server-sent events (its content type, or a body of ``data:`` lines)?"""
    return "text/event-stream" in headers.get("content-type", "") or body.lstrip().startswith(b"data:")


def assemble_sse(body: bytes, status: int = 200) -> dict[str, Any]:
    """The chat completion a stream of server-sent events adds up to.

    Raises:
        MalformedResponseError: a ``data:`` line that is not JSON, or no chunk at all.
        httpx.RemoteProtocolError: the stream stopped before ``[DONE]`` and before any
            choice said why it finished (cut short: retryable).
    """
    chunks: list[dict[str, Any]] = []
    done = False
    for raw in body.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line.startswith("data:"):
            continue  # comments (": keep-alive"), event names, blank lines
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise MalformedResponseError(status, f"a stream chunk that is not JSON: {data}") from exc
        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
            raise MalformedResponseError(status, f"the stream sent an error: {data}")
        if isinstance(chunk, dict):
            chunks.append(chunk)
    if not chunks:
        raise MalformedResponseError(status, "a stream with no chunks: " + body[:200].decode(
            "utf-8", "replace"))
    out = _join(chunks)
    if not done and out["choices"][0]["finish_reason"] is None:
        raise httpx.RemoteProtocolError("the stream ended before its last chunk ([DONE] and a "
                                        f"finish reason missing; {len(chunks)} chunks read)")
    return out


def _join(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One completion dict from the chunks of choice 0 (the others are not kept)."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    role, finish, usage = "assistant", None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            role = delta.get("role") or role
            piece = delta.get("content") if "delta" in choice else choice.get("text")
            if isinstance(piece, str):
                text.append(piece)
            for tc in delta.get("tool_calls") or ():
                slot = calls.setdefault(int(tc.get("index", len(calls))), {
                    "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": role, "content": "".join(text)}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    first = chunks[0]
    out: dict[str, Any] = {"id": first.get("id"), "object": "chat.completion",
                           "created": first.get("created"), "model": first.get("model"),
                           "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage:
        out["usage"] = usage
    return out


async def read_litellm_stream(stream: Any, messages: list[dict[str, Any]]) -> Any:
    """A litellm ``CustomStreamWrapper`` read to its end, as one ``ModelResponse``.

    Raises:
        MalformedResponseError: the stream gave no chunk.
    """
    import litellm

    chunks = [chunk async for chunk in stream]
    built = litellm.stream_chunk_builder(chunks, messages=messages) if chunks else None
    if built is None:
        raise MalformedResponseError(200, "a stream with no chunks (litellm route)")
    return built
