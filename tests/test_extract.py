"""extract: text and usage out of every response shape, and clear errors for the rest.

The litellm ``ModelResponse`` and the proxy-route dict come from real calls to the
embedded model; the Anthropic and legacy shapes are written out as their APIs send them.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network on import

import litellm
import pytest

from retrylib import ExtractionError, extract_text
from retrylib.client import acompletion
from retrylib.extract import (
    extract_finish_reason,
    extract_model,
    extract_usage,
    is_cache_hit,
    response_cost,
)

MESSAGES = [{"role": "user", "content": "Say hello."}]

OPENAI = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "hello there"}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
}
ANTHROPIC = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": "Hello, "},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                {"type": "text", "text": "world"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 21, "output_tokens": 5},
}


async def test_real_litellm_model_response(local_model):
    """A real ModelResponse: the text, usage and model come out and match its own fields."""
    resp = await acompletion(MESSAGES, model=local_model.litellm_model,
                             api_base=local_model.api_base, max_tokens=16, temperature=0)
    assert isinstance(resp, litellm.ModelResponse)
    text = extract_text(resp)
    assert isinstance(text, str) and text.strip()
    assert text == resp.choices[0].message.content
    tin, tout = extract_usage(resp)
    assert (tin, tout) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert tin > 0 and 0 < tout <= 16
    assert extract_model(resp) and "smollm2" in extract_model(resp)
    assert is_cache_hit(resp) is False  # no cache installed
    assert response_cost(resp) == 0.0  # a local model has no price


async def test_real_proxy_route_dict(local_model):
    """The proxy route's plain dict from the real server extracts like an OpenAI dict."""
    resp = await acompletion(MESSAGES, model=f"proxy/{local_model.model}",
                             api_base=local_model.api_base, max_tokens=16, temperature=0)
    assert isinstance(resp, dict)
    assert extract_text(resp) == resp["choices"][0]["message"]["content"]
    assert extract_usage(resp) == (resp["usage"]["prompt_tokens"], resp["usage"]["completion_tokens"])


def test_openai_dict():
    """An OpenAI chat completion dict gives its first choice's content, usage and model."""
    assert extract_text(OPENAI) == "hello there"
    assert extract_usage(OPENAI) == (11, 2)
    assert extract_model(OPENAI) == "gpt-x"


def test_anthropic_dict_joins_text_blocks():
    """An Anthropic message joins its text blocks, skipping tool_use blocks."""
    assert extract_text(ANTHROPIC) == "Hello, world"
    assert extract_usage(ANTHROPIC) == (21, 5)
    assert extract_model(ANTHROPIC) == "claude-x"


def test_anthropic_without_type_field():
    """An Anthropic-like dict (role assistant, content list) without "type" still extracts."""
    resp = {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}
    assert extract_text(resp) == "ok"


def test_plain_string():
    """A str is its own text, empty included (judging emptiness is the validators' job)."""
    assert extract_text("just text") == "just text"
    assert extract_text("") == ""
    assert extract_usage("just text") == (0, 0)
    assert extract_model("just text") is None


def test_content_as_list_of_parts():
    """Content given as parts (dicts with text, output_text, or plain strings) is joined."""
    resp = {"choices": [{"message": {"role": "assistant", "content": [
        {"type": "text", "text": "a"}, "b", {"type": "output_text", "text": "c"},
        {"type": "image_url", "image_url": {"url": "x"}}]}}]}
    assert extract_text(resp) == "abc"


def test_parts_without_text_is_an_error():
    """Parts that hold no text raise ExtractionError listing what they were."""
    resp = {"choices": [{"message": {"content": [{"type": "image_url", "image_url": {}}]}}]}
    with pytest.raises(ExtractionError, match=r"content parts hold no text \(found: image_url\)"):
        extract_text(resp)


def test_empty_parts_list_is_an_error():
    """An empty parts list raises ExtractionError (found: nothing)."""
    with pytest.raises(ExtractionError, match="found: nothing"):
        extract_text({"choices": [{"message": {"content": []}}]})


def test_legacy_text_completion():
    """A legacy text completion ({"choices": [{"text": ...}]}) gives its text."""
    resp = {"object": "text_completion", "choices": [{"index": 0, "text": "legacy!"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    assert extract_text(resp) == "legacy!"
    assert extract_usage(resp) == (3, 1)


def test_empty_string_content_is_returned():
    """Content "" is returned as "" (not an error)."""
    assert extract_text({"choices": [{"message": {"content": ""}}]}) == ""


@pytest.mark.parametrize(
    ("resp", "message"),
    [
        ({"choices": []}, "response has no choices"),
        ({"choices": [{"message": {"role": "assistant", "content": None}}]},
         "choices[0].message.content is None (the model returned no text)"),
        ({"choices": [{"finish_reason": "stop"}]}, "choices[0] has neither a message nor text"),
        ({"choices": [{"message": {"content": 42}}]},
         "choices[0].message.content has unexpected type int"),
        ({"result": "no choices here", "status": "ok"},
         "unknown response shape: a dict with keys result, status"),
        ({}, "unknown response shape: a dict with keys no keys"),
        (None, "response is None"),
        (12345, "unknown response shape: int"),
        ({"type": "message", "content": None}, "content is None"),
    ],
)
def test_bad_shapes_raise_clear_errors(resp, message):
    """No choices, None content and unknown shapes raise ExtractionError saying what was found."""
    with pytest.raises(ExtractionError) as info:
        extract_text(resp)
    assert message in str(info.value)


def test_extraction_error_is_value_error():
    """ExtractionError is also a ValueError."""
    with pytest.raises(ValueError):
        extract_text({"choices": []})


def test_real_response_with_none_content_raises():
    """A real litellm ModelResponse whose content is None raises ExtractionError."""
    resp = litellm.ModelResponse(choices=[{"message": {"role": "assistant", "content": None}}])
    assert resp.choices[0].message.content is None
    with pytest.raises(ExtractionError, match="is None"):
        extract_text(resp)


def test_usage_missing_is_zero():
    """A response without usage reports (0, 0)."""
    assert extract_usage({"choices": [{"message": {"content": "x"}}]}) == (0, 0)
    assert extract_usage({"usage": None}) == (0, 0)


def test_usage_prefers_openai_keys_and_tolerates_nulls():
    """OpenAI keys win; null counts become 0."""
    assert extract_usage({"usage": {"prompt_tokens": 4, "completion_tokens": None}}) == (4, 0)
    assert extract_usage({"usage": {"input_tokens": 7, "output_tokens": 9}}) == (7, 9)


def test_cache_hit_and_cost_default_false_for_dicts():
    """Plain dicts carry no hidden params: not a cache hit, zero cost."""
    assert is_cache_hit(OPENAI) is False
    assert response_cost(OPENAI) == 0.0


@pytest.mark.parametrize(("response", "reason"), [
    ({"choices": [{"message": {"content": "x"}, "finish_reason": "length"}]}, "length"),
    ({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}, "stop"),
    ({"choices": [{"message": {"content": "x"}}]}, None),
    ({"type": "message", "role": "assistant", "content": [], "stop_reason": "max_tokens"}, "length"),
    ({"type": "message", "role": "assistant", "content": [], "stop_reason": "end_turn"}, "stop"),
    ({"type": "message", "role": "assistant", "content": [], "stop_reason": "tool_use"}, "tool_calls"),
    ({"type": "message", "role": "assistant", "content": [], "stop_reason": "refusal"}, "refusal"),
    ("plain text", None), (None, None), ({"choices": []}, None),
])
def test_finish_reason_of_every_shape(response, reason):
    assert extract_finish_reason(response) == reason


def test_finish_reason_of_a_model_response():
    resp = litellm.ModelResponse(choices=[{"message": {"role": "assistant", "content": "x"},
                                           "finish_reason": "length"}])
    assert extract_finish_reason(resp) == "length"
