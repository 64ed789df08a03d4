"""RetryConfig: every knob validated once, invalid values named, frozen, and the escalation ladder."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from retrylib import ConfigError, FallbackModel, RetryConfig


def config_error(**kw) -> str:
    """The ConfigError message RetryConfig(**kw) raises (fails the test if it does not raise)."""
    with pytest.raises(ConfigError) as info:
        RetryConfig(**kw)
    return str(info.value)


@pytest.mark.parametrize(
    ("kw", "field", "rule"),
    [
        ({"max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"max_attempts": -3}, "max_attempts", "greater than or equal to 1"),
        ({"initial_delay": -0.1}, "initial_delay", "greater than or equal to 0"),
        ({"max_delay": -1.0}, "max_delay", "greater than or equal to 0"),
        ({"max_retry_after": -5}, "max_retry_after", "greater than or equal to 0"),
        ({"attempt_timeout": 0}, "attempt_timeout", "greater than 0"),
        ({"deadline": -1}, "deadline", "greater than 0"),
        ({"backoff_factor": 0.5}, "backoff_factor", "greater than or equal to 1"),
        ({"jitter": "gaussian"}, "jitter", "'none', 'full', 'equal' or 'decorrelated'"),
        ({"max_attempts_before_human": 0}, "max_attempts_before_human", "greater than or equal to 1"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_invalid_field_value_names_field_and_rule(kw, field, rule):
    """Each invalid value raises ConfigError whose message names the field, the rule and the value."""
    msg = config_error(**kw)
    assert msg.startswith("invalid RetryConfig: ")
    assert f"{field}: " in msg
    assert rule in msg
    assert repr(next(iter(kw.values()))) in msg  # "(got <value>)"


def test_config_error_is_a_value_error():
    """ConfigError is a ValueError too, so generic handlers still catch it."""
    with pytest.raises(ValueError):
        RetryConfig(max_attempts=0)


def test_initial_delay_above_max_delay():
    """initial_delay > max_delay is rejected, naming both values."""
    msg = config_error(initial_delay=5, max_delay=2)
    assert "initial_delay (5.0) must not exceed max_delay (2.0)" in msg
    assert RetryConfig(initial_delay=2, max_delay=2).initial_delay == 2.0  # equal is fine


def test_tool_threshold_after_human_is_rejected():
    """The tool stage must not start after the human stage (tool > human)."""
    msg = config_error(max_attempts=6, max_attempts_before_tool_use=4,
                       max_attempts_before_human=3, debug_tool_name="dbg")
    assert "out of order" in msg
    assert "tool at 4" in msg and "human at 3" in msg
    assert "constrained < fallback < tool <= human" in msg


def test_tool_equal_to_human_is_allowed():
    """tool == human is the original design's semantics and is accepted."""
    c = RetryConfig(max_attempts=5, max_attempts_before_tool_use=3, max_attempts_before_human=3,
                    debug_tool_name="dbg")
    assert c.ladder() == [("normal", 0), ("tool", 3), ("human", 3)]


def test_human_above_max_attempts_is_rejected():
    """A human threshold that max_attempts can never reach is rejected."""
    msg = config_error(max_attempts=3, max_attempts_before_human=5)
    assert "max_attempts_before_human (5) must not exceed max_attempts (3)" in msg


def test_tool_above_max_attempts_is_rejected():
    """The tool threshold is checked against max_attempts under its own field name."""
    msg = config_error(max_attempts=2, max_attempts_before_tool_use=3, debug_tool_name="dbg")
    assert "max_attempts_before_tool_use (3) must not exceed max_attempts (2)" in msg


def test_constrained_equal_to_fallback_is_rejected():
    """Two stages on the same threshold would hide one of them."""
    msg = config_error(max_attempts=5, max_attempts_before_constrained=2,
                       max_attempts_before_fallback=2, fallback_models=["openai/other"])
    assert "overlap" in msg
    assert "constrained at 2" in msg and "fallback at 2" in msg


def test_fallback_after_tool_is_rejected():
    """fallback must come before tool."""
    msg = config_error(max_attempts=6, max_attempts_before_fallback=3, fallback_models=["openai/x"],
                       max_attempts_before_tool_use=2, debug_tool_name="dbg")
    assert "fallback at 3" in msg and "tool at 2" in msg


def test_fallback_without_models_is_rejected():
    """A fallback stage with no fallback_models is a ConfigError naming both fields."""
    msg = config_error(max_attempts=4, max_attempts_before_fallback=2)
    assert "max_attempts_before_fallback is set but fallback_models is empty" in msg


def test_tool_without_debug_tool_name_is_rejected():
    """A tool stage with no tool to suggest is a ConfigError naming both fields."""
    msg = config_error(max_attempts=4, max_attempts_before_tool_use=2)
    assert "max_attempts_before_tool_use is set but debug_tool_name is empty" in msg


def test_several_broken_rules_are_all_listed():
    """Every broken field-level rule is reported in the one message."""
    msg = config_error(max_attempts=0, jitter="bad", initial_delay=-1)
    for field in ("max_attempts: ", "jitter: ", "initial_delay: "):
        assert field in msg


def test_timedelta_accepted_for_times():
    """Times given as timedelta are converted to seconds once."""
    c = RetryConfig(initial_delay=timedelta(milliseconds=250), max_delay=timedelta(minutes=1),
                    attempt_timeout=timedelta(seconds=7.5), deadline=timedelta(minutes=2),
                    max_retry_after=timedelta(seconds=90))
    assert (c.initial_delay, c.max_delay, c.attempt_timeout, c.deadline, c.max_retry_after) == (
        0.25, 60.0, 7.5, 120.0, 90.0)
    assert all(isinstance(v, float) for v in (c.initial_delay, c.max_delay, c.deadline))


def test_negative_timedelta_rejected():
    """A negative timedelta breaks the same rule as a negative number."""
    msg = config_error(initial_delay=timedelta(seconds=-1))
    assert "initial_delay: " in msg and "greater than or equal to 0" in msg


def test_frozen():
    """Assigning to a field fails and leaves the config unchanged."""
    c = RetryConfig(max_attempts=4)
    with pytest.raises(ValidationError, match="frozen"):
        c.max_attempts = 9
    assert c.max_attempts == 4


def test_defaults():
    """The defaults are valid and safe: 3 attempts, full jitter, no escalation."""
    c = RetryConfig()
    assert (c.max_attempts, c.jitter, c.initial_delay, c.max_delay) == (3, "full", 0.5, 30.0)
    assert c.ladder() == [("normal", 0)]
    assert c.stage_for(100) == "normal"


def test_ladder_order():
    """ladder() lists the switched-on stages in order with their starting failure counts."""
    c = RetryConfig(max_attempts=8, max_attempts_before_constrained=1, max_attempts_before_fallback=2,
                    fallback_models=["openai/b"], max_attempts_before_tool_use=4,
                    debug_tool_name="dbg", max_attempts_before_human=6)
    assert c.ladder() == [("normal", 0), ("constrained", 1), ("fallback", 2), ("tool", 4),
                          ("human", 6)]


def test_ladder_skips_unset_stages():
    """Stages whose threshold is unset are absent from the ladder."""
    c = RetryConfig(max_attempts=5, max_attempts_before_tool_use=2, debug_tool_name="dbg",
                    max_attempts_before_human=4)
    assert [s for s, _ in c.ladder()] == ["normal", "tool", "human"]


def test_stage_for():
    """stage_for(failures) picks the highest stage whose threshold is reached; stages accumulate."""
    c = RetryConfig(max_attempts=8, max_attempts_before_constrained=1, max_attempts_before_fallback=2,
                    fallback_models=["openai/b"], max_attempts_before_tool_use=4,
                    debug_tool_name="dbg", max_attempts_before_human=6)
    got = [c.stage_for(f) for f in range(8)]
    assert got == ["normal", "constrained", "fallback", "fallback", "tool", "tool", "human", "human"]


def test_replace_returns_validated_copy():
    """replace() returns a new config with the change; the original is untouched."""
    c = RetryConfig(max_attempts=4, seed=1)
    d = c.replace(max_attempts=6, jitter="none")
    assert (d.max_attempts, d.jitter, d.seed) == (6, "none", 1)
    assert (c.max_attempts, c.jitter) == (4, "full")
    assert d is not c


def test_replace_validates():
    """replace() with an invalid value raises ConfigError."""
    c = RetryConfig(max_attempts=4, max_attempts_before_human=4)
    with pytest.raises(ConfigError, match="max_attempts_before_human"):
        c.replace(max_attempts=2)


def test_replace_keeps_fallback_models():
    """A replace() round trip keeps FallbackModel entries intact."""
    c = RetryConfig(max_attempts=4, max_attempts_before_fallback=2,
                    fallback_models=[{"model": "openai/b", "api_base": "http://127.0.0.1:1/v1"}])
    d = c.replace(seed=3)
    assert d.fallback_models == c.fallback_models
    assert isinstance(d.fallback_models[0], FallbackModel)


def test_fallback_models_from_strings_and_dicts():
    """fallback_models accepts model strings and dicts; call_kwargs() gives the call overrides."""
    c = RetryConfig(max_attempts=4, max_attempts_before_fallback=1, fallback_models=[
        "openai/a", {"model": "proxy/b", "api_base": "http://127.0.0.1:9/v1", "kwargs": {"temperature": 0}}])
    a, b = c.fallback_models
    assert a.call_kwargs() == {"model": "openai/a"}
    assert b.call_kwargs() == {"model": "proxy/b", "temperature": 0, "api_base": "http://127.0.0.1:9/v1"}


def test_fallback_model_rejects_unknown_keys():
    """A typo inside a fallback model entry is a ConfigError, not silently dropped."""
    msg = config_error(max_attempts=3, max_attempts_before_fallback=1,
                       fallback_models=[{"model": "openai/a", "apibase": "x"}])
    assert "apibase" in msg
