"""Each key, validator type and param of the original design's ``llm_config``, one at a time.

Every test runs ``llm_call`` in process with ``ScriptedCall`` standing in for the models
(``call=``), and states the original's rule it checks. Where the Python API keeps
retrylib's own behaviour, a test says so next to the declarative one.
"""

from __future__ import annotations

import base64
import io
import pickle
import time

import pytest

from retrylib import (
    ConfigError,
    HumanReviewNeededError,
    RetryConfig,
    RetryExhaustedError,
    llm_call,
    retry_with_validation,
)
from retrylib import validators as V
from retrylib.client import ModelCall
from retrylib.declarative import plan
from retrylib.testing import ScriptedCall, connection_refused, set_testing
from retrylib.validators.original import FieldPresent, JsonString

JSON_LINE = (
    "You MUST respond with a valid JSON object. Do not include any text outside of the "
    "JSON structure."
)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgaPgPAAIFAYHVb6q0AAAAAElFTkSuQmCC"
)
USER = [{"role": "user", "content": "Give me a JSON object."}]


def cfg(**extra):
    """A small original-style config on a plain litellm model string."""
    return {"model": "openai/m", "messages": USER, **extra}


async def run(config, replies, **kw):
    """llm_call with ScriptedCall serving every model; returns (result or error, call)."""
    call = ScriptedCall(replies)
    with set_testing(True):
        try:
            return await llm_call(config, call=call, **kw), call
        except (HumanReviewNeededError, RetryExhaustedError, ConfigError) as exc:
            return exc, call


# -- config forms --------------------------------------------------------------------------


async def test_question_becomes_one_user_message():
    """`question` instead of `messages` is sent as one user message, and is not a keyword."""
    result, call = await run({"model": "openai/m", "question": "What is 2+2?"}, ["4"])
    assert result.content == "4"
    assert call.requests[0].messages == [{"role": "user", "content": "What is 2+2?"}]
    assert "question" not in call.requests[0].kwargs


def test_question_next_to_messages_is_dropped():
    """With messages given, the question is ignored and never sent as a keyword."""
    main, messages, *_ = plan(cfg(question="ignored"))
    assert messages == USER and "question" not in main.defaults


async def test_validation_as_a_single_dict():
    """`validation` given as one dict is one validator (the original wrapped it in a list)."""
    result, call = await run(cfg(validation={"type": "json_string"}), ["nope", "[1, 2]"])
    assert result.parsed == [1, 2] and call.calls == 2
    _, _, validators, _, _ = plan(cfg(validation={}))  # falsy: none, then the default
    assert [type(v) for v in validators] == [V.ResponseNotEmpty]


def test_top_level_debug_mode_reaches_retry_config():
    """A top-level debug_mode is the retry config's (as the original read it), not a keyword."""
    main, _, _, rc, _ = plan(cfg(debug_mode=True))
    assert rc.debug_mode is True and "debug_mode" not in main.defaults


# -- json_string and field_present ---------------------------------------------------------


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2]", '"word"', "42", "null", "true"])
async def test_json_string_accepts_any_json_value(text):
    """json_string passes every JSON value, as the original's json.loads did."""
    r = await JsonString().validate(text, V.ValidationContext())
    assert r.valid, r.errors


async def test_json_string_rejects_invalid_json_and_json_object_stays_strict():
    """Broken JSON fails json_string; retrylib's json_object still refuses an array."""
    bad = await JsonString().validate('{"a": 1,}', V.ValidationContext())
    assert not bad.valid and "invalid JSON" in bad.errors[0]
    arr = await V.JsonObject().validate("[1]", V.ValidationContext())
    assert not arr.valid and "got a JSON array" in arr.errors[0]


async def test_field_name_present_null_counts_missing_fails():
    """field_name: the key must be there (a null value counts); the error names it."""
    v = V.build_validator({"type": "field_present", "params": {"field_name": "age"}})
    assert isinstance(v, FieldPresent)
    assert (await v.validate('{"age": null}', V.ValidationContext())).valid
    r = await v.validate('{"name": "A"}', V.ValidationContext())
    assert not r.valid and "`age` is missing" in r.errors[0] and "name" in r.errors[0]
    r = await v.validate("[1]", V.ValidationContext())
    assert not r.valid and "JSON object" in r.errors[0]


async def test_field_present_false_requires_absence():
    """present: false passes when the key is absent and fails when it is there."""
    v = V.build_validator(
        {"type": "field_present", "params": {"field_name": "password", "present": False}}
    )
    assert (await v.validate('{"name": "A"}', V.ValidationContext())).valid
    r = await v.validate('{"password": "x"}', V.ValidationContext())
    assert not r.valid and "must be absent" in r.errors[0]


async def test_field_present_expected_value():
    """expected_value: the key must hold exactly that value."""
    v = V.build_validator(
        {"type": "field_present", "params": {"field_name": "status", "expected_value": "active"}}
    )
    assert (await v.validate('{"status": "active"}', V.ValidationContext())).valid
    r = await v.validate('{"status": "idle"}', V.ValidationContext())
    assert not r.valid and '"idle"' in r.errors[0] and '"active"' in r.errors[0]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"field_name": "a", "field": "b"}, "not both"),
        ({"field": "a", "present": False}, "go with 'field_name'"),
        ({}, "field_name"),
        ({"field_name": "a", "present": False, "expected_value": 1}, "means nothing"),
    ],
)
def test_field_present_bad_params(params, words):
    """Mixed or contradictory field_present params are a ConfigError saying what to give."""
    with pytest.raises(ConfigError, match=words):
        V.build_validator({"type": "field_present", "params": params})


# -- the retry loop ------------------------------------------------------------------------


async def test_tool_threshold_without_tool_name_does_nothing():
    """max_attempts_before_tool_use without debug_tool_name is no error and sends no mcp_config."""
    _, _, _, rc, _ = plan(cfg(max_attempts_before_tool_use=1))
    assert rc.max_attempts_before_tool_use is None
    result, call = await run(
        cfg(max_attempts_before_tool_use=1, validation=["json_string"]), ["x", "{}"]
    )
    assert result.parsed == {} and all("mcp_config" not in r.kwargs for r in call.requests)
    with pytest.raises(ConfigError, match="needs debug_tool_name"):
        plan(cfg(max_attempts_before_tool_use=1, debug_tool_mcp_config={"mcpServers": {}}))
    with pytest.raises(ConfigError, match="debug_tool_name"):  # the Python API stays strict
        RetryConfig(max_attempts_before_tool_use=1)


async def test_running_out_of_attempts_means_human_review():
    """Without max_attempts_before_human, the max_attempts-th failure is human review."""
    exc, call = await run(
        cfg(validation=["json_string"], retry_config={"max_attempts": 2}), ["a", "b"]
    )
    assert isinstance(exc, HumanReviewNeededError) and call.calls == 2
    assert exc.context["attempt"] == 1  # the original: max_attempts - 1 when they ran out
    assert exc.context["last_response"]["choices"][0]["message"]["content"] == "b"


async def test_human_threshold_before_the_end_and_explicit_null():
    """M < max_attempts: attempt is M (the attempt not made); M: null means no human review."""
    exc, _ = await run(
        cfg(
            validation=["json_string"],
            max_attempts_before_human=2,
            retry_config={"max_attempts": 4},
        ),
        ["a", "b"],
    )
    assert isinstance(exc, HumanReviewNeededError) and exc.context["attempt"] == 2
    exc, _ = await run(
        cfg(
            validation=["json_string"],
            max_attempts_before_human=None,
            retry_config={"max_attempts": 2},
        ),
        ["a", "b"],
    )
    assert type(exc) is RetryExhaustedError


async def test_transport_errors_running_out_mean_human_review_too():
    """Attempts lost to transport errors end in human review, with the error in context."""
    exc, call = await run(
        cfg(validation=["json_string"], retry_config={"max_attempts": 3}),
        ["not json", connection_refused(), connection_refused()],
    )
    assert isinstance(exc, HumanReviewNeededError) and call.calls == 3
    assert "Connection error" in str(exc.__cause__)  # the last attempt's own error
    assert exc.context["attempt"] == 2 and "Connection" in exc.context["error"]
    assert exc.last_text == "not json" and exc.validation_errors
    assert exc.context["last_response"]["choices"][0]["message"]["content"] == "not json"
    assert exc.metrics["stage_reached"] == "human"
    assert pickle.loads(pickle.dumps(exc)).context == exc.context


async def test_transport_exhaustion_is_queued_for_review_like_any_human_case(tmp_path):
    """The human hand-over after attempts lost to transport errors goes into the review store,
    with the original llm_config, as a human case reached by failed validations does."""
    from retrylib.review import SQLiteReviewStore

    path = str(tmp_path / "review.db")
    exc, _ = await run(
        cfg(validation=["json_string"], retry_config={"max_attempts": 3, "review_store": path}),
        ["not json", connection_refused(), connection_refused()],
    )
    assert isinstance(exc, HumanReviewNeededError) and exc.case_id is not None
    case = SQLiteReviewStore(path).get(exc.case_id)
    assert case.status == "open" and case.llm_config["validation"] == ["json_string"]
    assert len(case.attempts) == 3 and exc.review_error is None


async def test_python_api_keeps_retry_exhausted_and_an_empty_context():
    """retry_with_validation with a default RetryConfig still raises RetryExhaustedError;
    its HumanReviewNeededError has an empty context, and pickles."""
    with set_testing(True), pytest.raises(RetryExhaustedError):
        await retry_with_validation(ScriptedCall(["a", "b", "c"]), USER, [JsonString()])
    with set_testing(True), pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(
            ScriptedCall(["a"]),
            USER,
            [JsonString()],
            RetryConfig(max_attempts=2, max_attempts_before_human=1),
        )
    assert info.value.context == {} and pickle.loads(pickle.dumps(info.value)).context == {}


async def test_original_llm_config_in_context_is_the_config_given():
    """context.original_llm_config is the config as given (a question as its messages)."""
    config = {
        "model": "openai/m",
        "question": "Q?",
        "validation": ["json_string"],
        "retry_config": {"max_attempts": 1},
        "temperature": 0.3,
    }
    exc, _ = await run(config, ["x"])
    assert exc.context["original_llm_config"] == {
        "model": "openai/m",
        "messages": [{"role": "user", "content": "Q?"}],
        "validation": ["json_string"],
        "retry_config": {"max_attempts": 1},
        "temperature": 0.3,
    }


async def test_user_delays_wait_before_every_retry():
    """initial_delay/backoff_factor set by the user: each re-ask waits d * f**n, unjittered."""
    config = cfg(
        validation=["json_string"],
        retry_config={"max_attempts": 3, "initial_delay": 0.05, "backoff_factor": 2.0},
    )
    call = ScriptedCall(["a", "b", "{}"])
    t0 = time.monotonic()
    result = await llm_call(config, call=call)
    assert [a.scheduled_delay for a in result.attempts] == [0.0, 0.05, 0.1]
    assert [a.slept >= 0.04 for a in result.attempts[1:]] == [True, True]
    assert call.requests[2].at - call.requests[1].at >= 0.09 and time.monotonic() - t0 >= 0.14


async def test_no_user_delays_means_immediate_reasks():
    """Without user delays a re-ask is immediate; the Python API default is immediate too."""
    result, _ = await run(cfg(validation=["json_string"]), ["a", "{}"])
    assert result.attempts[1].scheduled_delay == 0.0
    _, _, _, rc, _ = plan(cfg())
    assert (rc.initial_delay, rc.jitter, rc.max_delay) == (1.0, "none", 60.0)  # the original's
    assert (RetryConfig().jitter, RetryConfig().delay_validation_retries) == ("full", False)


# -- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "first"),
    [
        (USER, {"role": "system", "content": JSON_LINE}),
        (
            [{"role": "system", "content": "Be brief."}, *USER],
            {"role": "system", "content": f"{JSON_LINE} Be brief."},
        ),
        (
            [{"role": "system", "content": "Reply with a JSON object."}, *USER],
            {"role": "system", "content": "Reply with a JSON object."},
        ),
    ],
)
async def test_json_object_format_adds_the_system_line(messages, first):
    """response_format json_object: the original's JSON line, unless the system asks already."""
    result, call = await run(
        {"model": "openai/m", "messages": messages, "response_format": {"type": "json_object"}},
        ["{}"],
    )
    sent = call.requests[0]
    assert result.content == "{}" and sent.messages[0] == first and sent.messages[-1] == USER[0]
    assert sent.kwargs["response_format"] == {"type": "json_object"}


async def test_no_system_line_without_json_object_or_in_the_python_api():
    """Other formats get no line, and retry_with_validation never adds one."""
    _, messages, *_ = plan(cfg(response_format={"type": "json_schema", "json_schema": {}}))
    assert messages == USER
    call = ScriptedCall(["{}"])
    await retry_with_validation(call, USER, [], response_format={"type": "json_object"})
    assert call.requests[0].messages == USER


def _image_message(url):
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


async def test_local_image_becomes_a_data_uri(tmp_path):
    """A path relative to image_directory is sent as base64; the directory is not a keyword."""
    (tmp_path / "dot.png").write_bytes(PNG)
    result, call = await run(
        {
            "model": "openai/m",
            "messages": _image_message("dot.png"),
            "image_directory": str(tmp_path),
            "max_image_size_kb": 100,
        },
        ["a dot"],
    )
    part = call.requests[0].messages[0]["content"][1]
    assert result.content == "a dot"
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert not {"image_directory", "max_image_size_kb"} & set(call.requests[0].kwargs)


@pytest.mark.parametrize("url", ["https://example.com/a.png", "data:image/png;base64,AAAA"])
def test_remote_and_inline_images_are_kept(url):
    """http(s) URLs and small data: URIs are sent unchanged."""
    _, messages, *_ = plan({"model": "openai/m", "messages": _image_message(url)})
    assert messages[0]["content"][1]["image_url"]["url"] == url


def test_missing_image_is_a_config_error(tmp_path):
    """A local image that is not there is a ConfigError naming where it was looked for."""
    with pytest.raises(ConfigError, match="not found") as info:
        plan(
            {
                "model": "openai/m",
                "messages": _image_message("nope.png"),
                "image_directory": str(tmp_path),
            }
        )
    assert str(tmp_path / "nope.png") in str(info.value)


def test_large_image_is_shrunk_to_a_jpeg(tmp_path):
    """An image over max_image_size_kb is re-encoded as a smaller JPEG (with Pillow)."""
    image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    image.effect_noise((300, 300), 90).convert("RGB").save(buf, "PNG")
    (tmp_path / "big.png").write_bytes(buf.getvalue())
    assert len(buf.getvalue()) > 60 * 1024
    _, messages, *_ = plan(
        {
            "model": "openai/m",
            "messages": _image_message(str(tmp_path / "big.png")),
            "max_image_size_kb": 60,
        }
    )
    url = messages[0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert len(base64.b64decode(url.split(",", 1)[1])) <= 60 * 1024


async def test_max_route_refuses_images_without_a_call():
    """The original's max/ route took no images: a ConfigError, and nothing is sent."""
    exc, call = await run(
        {"model": "max/vision", "messages": _image_message("https://x/y.png")}, ["?"]
    )
    assert isinstance(exc, ConfigError) and "takes no image inputs" in str(exc) and call.calls == 0


# -- model aliases and the call= seam ------------------------------------------------------


def test_alias_maps_to_a_route_and_config_keys_win():
    """model_aliases serves an alias; its kwargs beat max/'s defaults, the config's beat both."""
    main, *_ = plan(
        {
            "model": "max/opus",
            "messages": USER,
            "temperature": 0.7,
            "model_aliases": {
                "max/opus": {
                    "model": "openai/smollm2",
                    "api_base": "http://127.0.0.1:9/v1",
                    "temperature": 0.0,
                    "max_tokens": 32,
                }
            },
        }
    )
    assert isinstance(main, ModelCall) and main.model == "openai/smollm2"
    assert main.defaults == {
        "api_base": "http://127.0.0.1:9/v1",
        "temperature": 0.7,
        "max_tokens": 32,
    }
    short, *_ = plan(
        {"model": "meta-task/x", "messages": USER, "model_aliases": {"meta-task/x": "openai/other"}}
    )
    assert short.model == "openai/other" and short.defaults == {}


def test_alias_file_from_the_environment(tmp_path, monkeypatch):
    """$RETRYLIB_MODEL_ALIASES names a YAML file of aliases; the config's entries win."""
    f = tmp_path / "aliases.yaml"
    f.write_text(
        "model_aliases:\n  max/a: {model: openai/from-file, api_base: 'http://h/v1'}\n"
        "  max/b: openai/b-from-file\n"
    )
    monkeypatch.setenv("RETRYLIB_MODEL_ALIASES", str(f))
    a, *_ = plan({"model": "max/a", "messages": USER})
    assert (a.model, a.defaults["api_base"]) == ("openai/from-file", "http://h/v1")
    b, *_ = plan(
        {"model": "max/b", "messages": USER, "model_aliases": {"max/b": "openai/b-config"}}
    )
    assert b.model == "openai/b-config"
    monkeypatch.setenv("RETRYLIB_MODEL_ALIASES", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not a file"):
        plan({"model": "max/a", "messages": USER})


@pytest.mark.parametrize("model", ["max/unmapped", "meta-task/validate-python-code"])
def test_unmapped_alias_is_a_config_error_that_says_how_to_map_it(model):
    """An unmapped alias names itself, model_aliases and $RETRYLIB_MODEL_ALIASES."""
    with pytest.raises(ConfigError) as info:
        plan({"model": model, "messages": USER})
    msg = str(info.value)
    assert repr(model) in msg and "model_aliases" in msg and "RETRYLIB_MODEL_ALIASES" in msg


def test_unmapped_validation_alias_fails_before_any_call():
    """An agent_task's unmapped validation_model_alias is a ConfigError at plan time."""
    spec = {
        "type": "agent_task",
        "params": {
            "task_prompt_to_claude": "Check {TEXT_TO_VALIDATE}",
            "validation_model_alias": "max/checker",
        },
    }
    with pytest.raises(ConfigError, match="'max/checker'"):
        plan(cfg(validation=[spec]))


def test_plain_model_strings_and_vertex_environment(monkeypatch):
    """Plain litellm strings go through unchanged; vertex_ai/ gets project/region from the env."""
    main, *_ = plan(cfg(api_base="http://127.0.0.1:9/v1"))
    assert (main.model, main.defaults) == ("openai/m", {"api_base": "http://127.0.0.1:9/v1"})
    monkeypatch.setenv("LITELLM_VERTEX_PROJECT", "proj")
    monkeypatch.setenv("GOOGLE_CLOUD_REGION", "europe-west4")
    v, *_ = plan({"model": "vertex_ai/gemini-1.5-flash-001", "messages": USER})
    assert v.defaults == {"vertex_project": "proj", "vertex_location": "europe-west4"}
    v2, *_ = plan({"model": "vertex_ai/g", "messages": USER, "vertex_project": "mine"})
    assert v2.defaults["vertex_project"] == "mine"


def test_bad_alias_entry_is_a_config_error():
    """An alias entry without a model string is a ConfigError naming the alias."""
    with pytest.raises(ConfigError, match="'max/x'"):
        plan({"model": "max/x", "messages": USER, "model_aliases": {"max/x": {"api_base": "h"}}})


async def test_call_gets_request_keywords_but_no_route_keys():
    """call= replaces the route: it gets temperature, mcp_config..., not model/api_base/api_key."""
    _, call = await run(
        {
            "model": "max/x",
            "messages": USER,
            "api_base": "http://h/v1",
            "api_key": "k",
            "mcp_config": {"mcpServers": {}},
            "top_p": 0.5,
        },
        ["ok"],
    )
    assert call.requests[0].kwargs == {
        "temperature": 0.1,
        "max_tokens": 250,
        "top_p": 0.5,
        "mcp_config": {"mcpServers": {}},
    }


async def test_call_mapping_serves_the_models_it_names():
    """A dict call= serves the models it names; the others go by their route (an error here)."""
    main = ScriptedCall(["ok"])
    with set_testing(True):
        result = await llm_call({"model": "max/x", "messages": USER}, call={"max/x": main})
    assert result.content == "ok" and main.calls == 1
    with pytest.raises(ConfigError, match="'max/y'"):
        await llm_call({"model": "max/y", "messages": USER}, call={"max/x": main})


def test_validation_null_means_none_given():
    """validation: null is no validators (then the default response_not_empty), as the original."""
    _, _, validators, _, _ = plan(cfg(validation=None))
    assert [type(v) for v in validators] == [V.ResponseNotEmpty]
