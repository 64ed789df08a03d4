"""llm_call(config): the declarative form, from a dict, a YAML file or a YAML string.

Calls go through the chaos proxy with scripted ``reply:`` faults (so verdicts are
deterministic and the journal shows what reached the wire) and once to the real model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retrylib import ConfigError, RetryResult, llm_call, llm_call_sync, load_llm_config
from retrylib.declarative import LLMCallConfig, plan
from retrylib.messages import JSON_INSTRUCTION
from retrylib.validators import JsonObject, RegexMatch, ResponseNotEmpty

MESSAGES = [{"role": "user", "content": "Reply with the word good."}]


def config(url: str, **extra) -> dict:
    """A minimal declarative config pointing at ``url``."""
    return {"model": "openai/smollm2", "api_base": url, "messages": MESSAGES,
            "retry_config": {"max_attempts": 3, "initial_delay": 0, "seed": 1}, **extra}


async def test_dict_against_the_real_model(local_model):
    """llm_call(dict) runs against the embedded model and returns a RetryResult."""
    result = await llm_call({"model": local_model.litellm_model, "api_base": local_model.api_base,
                             "messages": [{"role": "user", "content": "Say hello in one word."}],
                             "max_tokens": 16, "temperature": 0,
                             "retry_config": {"max_attempts": 2, "initial_delay": 0, "seed": 1}})
    assert isinstance(result, RetryResult)
    assert result.content.strip()
    assert result.attempts[-1].outcome == "ok"
    assert result.metrics["api_calls"] == len(result.attempts) <= 2
    assert result.metrics["tokens_out"] > 0


async def test_yaml_file_path_str_and_path(chaos, tmp_path):
    """A YAML file given as a str path or a Path runs the same config."""
    chaos.set_plan(["reply:from file", "reply:from path"])
    cfg = tmp_path / "call.yaml"
    cfg.write_text(yaml.safe_dump(config(chaos.url)))
    r1 = await llm_call(str(cfg))
    r2 = await llm_call(Path(cfg))
    assert (r1.content, r2.content) == ("from file", "from path")
    assert len(chaos.journal()) == 2


async def test_yaml_string(chaos):
    """A YAML document given as a string runs too."""
    chaos.set_plan(["reply:from yaml"])
    text = yaml.safe_dump(config(chaos.url))
    assert "\n" in text
    result = await llm_call(text)
    assert result.content == "from yaml"


def test_three_sources_load_the_same_config(tmp_path):
    """A dict, a YAML file and a YAML string load to equal configs."""
    d = config("http://127.0.0.1:9/v1", temperature=0.2)
    f = tmp_path / "c.yml"
    f.write_text(yaml.safe_dump(d))
    loaded = [load_llm_config(d), load_llm_config(str(f)), load_llm_config(yaml.safe_dump(d))]
    assert all(isinstance(c, LLMCallConfig) for c in loaded)
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0].model_extra == {"api_base": "http://127.0.0.1:9/v1", "temperature": 0.2}


def test_sync_wrapper(chaos):
    """llm_call_sync works from plain sync code."""
    chaos.set_plan(["reply:sync ok"])
    assert llm_call_sync(config(chaos.url)).content == "sync ok"


# -- lifted keys -----------------------------------------------------------------------------

LIFTED = {"max_attempts_before_tool_use": 2, "max_attempts_before_human": 3,
          "debug_tool_name": "pdb-mcp", "debug_tool_mcp_config": {"command": "mcp-debugger", "args": ["-v"]},
          "original_user_prompt": "ORIGINAL: reply with the word good."}


@pytest.mark.parametrize("where", ["top level", "inside retry_config"])
def test_lifted_keys_reach_retry_config(where):
    """Escalation keys reach RetryConfig whether at the top level or inside retry_config."""
    cfg = config("http://127.0.0.1:9/v1")
    if where == "top level":
        cfg.update(LIFTED)
    else:
        cfg["retry_config"].update(LIFTED)
    call, messages, _validators, rc, response_format = plan(cfg)
    for key, value in LIFTED.items():
        assert getattr(rc, key) == value, key
    assert rc.max_attempts == 3 and rc.seed == 1
    assert messages == MESSAGES and response_format is None
    for key in LIFTED:  # lifted keys are not sent to the model as litellm keywords
        assert key not in call.defaults
    assert call.defaults == {"api_base": "http://127.0.0.1:9/v1"}


def test_fallback_keys_are_lifted():
    """max_attempts_before_fallback and fallback_models are lifted as well."""
    _, _, _, rc, _ = plan(config("http://127.0.0.1:9/v1", max_attempts_before_fallback=1,
                                 fallback_models=["openai/other"]))
    assert rc.max_attempts_before_fallback == 1
    assert [f.model for f in rc.fallback_models] == ["openai/other"]


async def test_lifted_keys_drive_the_escalation(chaos):
    """Lifted keys act: the tool stage sends mcp_config, names the tool and repeats the original prompt."""
    chaos.set_plan(["reply:bad", "reply:bad again", "reply:good"])
    result = await llm_call(config(chaos.url, validation=[{"type": "regex", "params": {"pattern": "good"}}],
                                   **LIFTED))
    assert result.content == "good"
    assert [a.stage for a in result.attempts] == ["normal", "normal", "tool"]
    bodies = [e["body"] for e in chaos.journal()]
    assert [("mcp_config" in b) for b in bodies] == [False, False, True]
    assert bodies[2]["mcp_config"] == LIFTED["debug_tool_mcp_config"]
    last = bodies[2]["messages"][-1]["content"]
    assert "`pdb-mcp`" in last and LIFTED["original_user_prompt"] in last
    assert LIFTED["original_user_prompt"] in bodies[1]["messages"][-1]["content"]
    assert "pdb-mcp" not in bodies[1]["messages"][-1]["content"]  # not before the tool stage


# -- validators ---------------------------------------------------------------------------------


def test_default_validate_adds_response_not_empty():
    """With no validation list, default_validate (on by default) adds response_not_empty."""
    _, _, validators, _, _ = plan(config("http://127.0.0.1:9/v1"))
    assert len(validators) == 1 and isinstance(validators[0], ResponseNotEmpty)


def test_default_validate_off_or_overridden():
    """default_validate: false gives no validators; an explicit list replaces the default."""
    _, _, none, _, _ = plan(config("http://127.0.0.1:9/v1", default_validate=False))
    assert none == []
    _, _, given, _, _ = plan(config("http://127.0.0.1:9/v1", validation=["json_object"]))
    assert len(given) == 1 and isinstance(given[0], JsonObject)


async def test_default_validation_rejects_an_empty_answer(chaos):
    """The default response_not_empty really rejects an empty reply, and the call retries."""
    chaos.set_plan(["empty", "reply:something"])
    result = await llm_call(config(chaos.url))
    assert result.content == "something"
    assert [a.outcome for a in result.attempts] == ["validation_failed", "ok"]


def test_validator_specs_are_built():
    """Validator specs (names and dicts with params) become validators in order."""
    _, _, validators, _, _ = plan(config("http://127.0.0.1:9/v1", validation=[
        "json_string", {"type": "regex", "params": {"pattern": "^a", "mode": "search"}}]))
    assert isinstance(validators[0], JsonObject) and isinstance(validators[1], RegexMatch)


def test_unknown_validator_type_lists_known_types():
    """An unknown validator type is a ConfigError listing the known types."""
    with pytest.raises(ConfigError) as info:
        plan(config("http://127.0.0.1:9/v1", validation=[{"type": "telepathy"}]))
    msg = str(info.value)
    assert "unknown validator type 'telepathy'; known types:" in msg
    for known in ("json_object", "regex", "response_not_empty", "field_present"):
        assert known in msg


# -- invalid configs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"messages": MESSAGES}, "model: Field required"),
        ({"model": "openai/x"}, "messages: Field required"),
        ({"model": "", "messages": MESSAGES}, "model: String should have at least 1 character"),
        ({"model": "openai/x", "messages": []}, "messages: List should have at least 1 item"),
        ({"model": "openai/x", "messages": MESSAGES, "default_validate": "maybe"}, "default_validate: "),
    ],
)
def test_missing_or_bad_fields_name_the_field(cfg, message):
    """Missing model/messages (and other bad fields) raise ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        load_llm_config(cfg)
    assert str(info.value).startswith("invalid llm_call config: ")
    assert message in str(info.value)


async def test_invalid_retry_config_is_config_error_before_any_call(chaos):
    """A bad retry_config is a ConfigError raised before anything is sent."""
    cfg = config(chaos.url)
    cfg["retry_config"] = {"max_attempts": 2, "max_attempts_before_human": 5}
    with pytest.raises(ConfigError, match="max_attempts_before_human"):
        await llm_call(cfg)
    assert chaos.journal() == []


def test_bad_sources():
    """Invalid YAML, a non-mapping and a missing file are ConfigErrors saying so."""
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_llm_config("model: [unclosed\nmessages: x\n")
    with pytest.raises(ConfigError, match="must be a mapping, got list"):
        load_llm_config("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"config file not found: /nonexistent/call\.yaml"):
        load_llm_config("/nonexistent/call.yaml")


# -- pass-through -------------------------------------------------------------------------------


async def test_litellm_keywords_pass_through(chaos):
    """Unknown keys (temperature, max_tokens, top_p, seed, extra_headers, response_format) reach the wire."""
    chaos.set_plan(['reply:{"a": 1}'])
    result = await llm_call(config(
        chaos.url, temperature=0.25, max_tokens=33, top_p=0.9, seed=5,
        extra_headers={"X-Caller": "declarative"}, response_format={"type": "json_object"},
        validation=["json_object"]))
    assert result.parsed == {"a": 1}
    (entry,) = chaos.journal()
    body = entry["body"]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["seed"]) == (0.25, 33, 0.9, 5)
    assert body["response_format"] == {"type": "json_object"}
    # The original design adds its JSON system line for response_format json_object.
    assert body["messages"] == [{"role": "system", "content": JSON_INSTRUCTION}, *MESSAGES]
    assert entry["headers"]["x-caller"] == "declarative"
    for key in ("retry_config", "validation", "default_validate"):  # retrylib's own keys stay home
        assert key not in body


async def test_proxy_route_from_config(chaos):
    """model: proxy/<name> in a config takes the plain-HTTP route."""
    chaos.set_plan(["reply:via proxy"])
    cfg = config(chaos.url)
    cfg["model"] = "proxy/smollm2"
    result = await llm_call(cfg)
    assert result.content == "via proxy"
    assert chaos.journal()[0]["headers"]["user-agent"].startswith("python-httpx")
