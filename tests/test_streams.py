"""``stream=True``: the stream is read to its end and the answer validated whole.

- :func:`~retrylib.streams.assemble_sse` as a table: deltas joined, tool calls merged by
  index, usage and finish reason kept, and a stream cut short, a chunk that is not JSON or
  an error chunk named;
- a real SSE server on 127.0.0.1 (asyncio) that breaks its first stream off: the proxy
  route retries it as a transport failure and validates the second, whole one;
- the embedded SmolLM2 streaming on both routes, through the loop, under a schema too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from retrylib import RetryConfig, make_call, retry_with_validation
from retrylib import validators as V
from retrylib.classify import classify
from retrylib.errors import MalformedResponseError
from retrylib.streams import assemble_sse


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    d = {k: v for k, v in {"content": content, **delta}.items() if v is not None}
    return {"id": "c1", "model": "m", "created": 1, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def sse(*chunks: Any, done: bool = True) -> bytes:
    lines = [": keep-alive", ""] + [f"data: {json.dumps(c)}\n" for c in chunks]
    return ("\n".join(lines) + ("\ndata: [DONE]\n\n" if done else "")).encode()


# -- assemble_sse, as a table ----------------------------------------------------------------------

def test_deltas_are_joined_into_one_completion_with_its_finish_reason_and_usage():
    body = sse(chunk(role="assistant"), chunk('{"name": '), chunk('"Ann"}'),
               chunk(finish="stop"), {"id": "c1", "choices": [], "usage": {
                   "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
    out = assemble_sse(body)
    assert out["choices"] == [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": '{"name": "Ann"}'}}]
    assert out["usage"]["completion_tokens"] == 3 and out["model"] == "m"


def test_tool_call_deltas_are_merged_by_index():
    body = sse(chunk(tool_calls=[{"index": 0, "id": "t0", "function": {"name": "run_",
                                                                       "arguments": '{"co'}}]),
               chunk(tool_calls=[{"index": 0, "function": {"name": "python", "arguments": 'de": 1}'}},
                                 {"index": 1, "id": "t1", "function": {"name": "other",
                                                                       "arguments": "{}"}}]),
               chunk(finish="tool_calls"))
    msg = assemble_sse(body)["choices"][0]["message"]
    assert msg["content"] == "" and [c["id"] for c in msg["tool_calls"]] == ["t0", "t1"]
    assert msg["tool_calls"][0]["function"] == {"name": "run_python", "arguments": '{"code": 1}'}


def test_a_stream_cut_short_is_a_retryable_transport_failure_and_bad_chunks_are_named():
    with pytest.raises(httpx.RemoteProtocolError, match="ended before") as info:
        assemble_sse(sse(chunk("Hel"), chunk("lo"), done=False))
    assert classify(info.value).retryable
    assert assemble_sse(sse(chunk("ok", finish="stop"), done=False))["choices"][0][
        "message"]["content"] == "ok"  # finished, only [DONE] missing
    for body, why in ((b"data: {not json\n\n", "not JSON"),
                      (b'data: {"error": {"message": "boom"}}\n\n', "sent an error"),
                      (b"data: [DONE]\n\n", "no chunks")):
        with pytest.raises(MalformedResponseError, match=why):
            assemble_sse(body)


# -- a real SSE server that breaks off ----------------------------------------------------------

async def test_the_proxy_route_retries_a_stream_that_breaks_off_and_validates_the_whole_one():
    """The first stream closes after two chunks (no finish, no [DONE]); the second is whole."""
    served: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length")))
        served.append(json.loads(await reader.readexactly(length)))
        whole = len(served) > 1
        body = sse(chunk('{"name": '), chunk('"Ann"}', finish="stop" if whole else None),
                   done=whole)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        call = make_call("proxy/m", api_base=f"http://127.0.0.1:{port}/v1", stream=True)
        result = await retry_with_validation(
            call, [{"role": "user", "content": "A name as JSON."}], [V.JsonObject()],
            RetryConfig(max_attempts=3, initial_delay=0, jitter="none"))
    finally:
        server.close()
        await server.wait_closed()
    assert [a.outcome for a in result.attempts] == ["transport_error", "ok"]
    assert "ended before" in result.attempts[0].error_message and result.attempts[0].retryable
    assert result.parsed == {"name": "Ann"} and all(b["stream"] is True for b in served)


# -- the real model ----------------------------------------------------------------------------

class Colour(BaseModel):
    name: str
    hex: str


@pytest.mark.parametrize("route", ["openai", "proxy"])
async def test_the_embedded_model_streams_on_both_routes_and_the_answer_is_validated(local_model, route):
    """Streamed from llama.cpp's server and read whole: the text, the finish reason (the
    token limit), and under a schema from the first attempt an answer that parses."""
    call = make_call(f"{route}/{local_model.model}", api_base=local_model.api_base,
                     max_tokens=12, temperature=0, stream=True)
    plain = await retry_with_validation(call, [{"role": "user", "content": "Name three colours."}],
                                        [V.ResponseNotEmpty()], RetryConfig(max_attempts=1))
    assert plain.content.strip() and plain.attempts[0].finish_reason == "length"
    call = make_call(f"{route}/{local_model.model}", api_base=local_model.api_base,
                     max_tokens=60, temperature=0, stream=True)
    shaped = await retry_with_validation(
        call, [{"role": "user", "content": "A colour and its hex code, as JSON."}],
        [V.PydanticSchema(Colour)], RetryConfig(max_attempts=2, max_attempts_before_constrained=0,
                                                initial_delay=0))
    assert shaped.attempts[0].constrained and isinstance(shaped.parsed, Colour)
    assert local_model.alive()
