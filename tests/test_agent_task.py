"""``agent_task`` and ``ai_contradiction_check``: a real call to the validation model.

In process with ``ScriptedCall`` for the verdicts; over the wire through the fault proxy
(``chaos_free``) to see what litellm puts in the request body; and once against the
embedded SmolLM2, where only the structure is asserted.
"""

from __future__ import annotations

import json
import uuid

import pytest
from loguru import logger

from retrylib import HumanReviewNeededError, RetryConfig, llm_call, retry_with_validation
from retrylib.testing import ScriptedCall, set_testing
from retrylib.validators import ValidationContext
from retrylib.validators.agent import AgentTask, parse_report
from retrylib.validators.contradiction import ContradictionCheck

USER = [{"role": "user", "content": "Write add(a, b)."}]
TASK = "Original: '{ORIGINAL_USER_PROMPT}'. Check {CODE_TO_VALIDATE} / {TEXT_TO_VALIDATE}."


def spec(**params):
    """An agent_task validation spec aimed at max/checker."""
    return {
        "type": "agent_task",
        "params": {
            "task_prompt_to_claude": TASK,
            "validation_model_alias": "max/checker",
            **params,
        },
    }


async def run(config, main, agent):
    """llm_call with one ScriptedCall per model; returns (result or error, main, agent)."""
    m, a = ScriptedCall(main), ScriptedCall(agent)
    with set_testing(True):
        try:
            out = await llm_call(config, call={config["model"]: m, "max/checker": a})
        except HumanReviewNeededError as exc:
            out = exc
    return out, m, a


def report(passed, reasoning="r", details=None):
    return json.dumps(
        {"validation_passed": passed, "reasoning": reasoning, "details": details or {}}
    )


@pytest.mark.parametrize(
    ("config_extra", "original"),
    [
        ({"original_user_prompt": "Write add."}, "Write add."),
        ({}, "Write add(a, b)."),  # the last user message
    ],
)
async def test_placeholders_are_filled(config_extra, original):
    """{CODE_TO_VALIDATE}, {TEXT_TO_VALIDATE}: the answer; {ORIGINAL_USER_PROMPT}: the prompt."""
    config = {"model": "openai/m", "messages": USER, "validation": [spec()], **config_extra}
    result, _, agent = await run(config, ["def add(a, b): ..."], [report(True)])
    assert result.content == "def add(a, b): ..."
    sent = agent.requests[0].messages[1]["content"]
    assert sent == f"Original: '{original}'. Check def add(a, b): ... / def add(a, b): ...."


async def test_no_user_prompt_fills_na():
    """With no user message and no original_user_prompt, {ORIGINAL_USER_PROMPT} is N/A."""
    config = {
        "model": "openai/m",
        "messages": [{"role": "assistant", "content": "x"}],
        "validation": [spec()],
    }
    _, _, agent = await run(config, ["x"], [report(True)])
    assert agent.requests[0].messages[1]["content"].startswith("Original: 'N/A'.")


@pytest.mark.parametrize(
    "reply",
    [
        'Verdict:\n```json\n{"validation_passed": true, "reasoning": "fine"}\n```\nDone.',
        'Sure. {"validation_passed": true, "reasoning": "fine"} Anything else?',
        '{"validation_passed": true}',
    ],
)
async def test_verdict_is_parsed_leniently(reply):
    """Fenced JSON and JSON inside prose are read as the report."""
    result, _, agent = await run(
        {"model": "openai/m", "messages": USER, "validation": [spec()]}, ["x"], [reply]
    )
    assert result.content == "x" and agent.calls == 1
    assert result.metrics["validator_api_calls"] == 1


async def test_unparsable_report_fails_and_reasks_the_main_model():
    """A report that holds no JSON object fails the answer (the agent itself is not re-asked)."""
    out, main, agent = await run(
        {
            "model": "openai/m",
            "messages": USER,
            "validation": [spec()],
            "retry_config": {"max_attempts": 2},
        },
        ["x", "y"],
        ["I think it is fine.", report(True)],
    )
    assert out.content == "y" and (main.calls, agent.calls) == (2, 2)
    assert "could not parse a JSON object" in out.attempts[0].validation_errors[0]


@pytest.mark.parametrize(
    ("criteria", "rep", "ok", "words"),
    [
        ({}, {"validation_passed": False, "reasoning": "bad"}, False, "bad"),
        ({}, {"validation_passed": "true"}, False, "`validation_passed` is not true"),
        ({"agent_must_report_true": "syntax_ok"}, {"syntax_ok": True}, True, ""),
        (
            {"agent_must_report_true": "syntax_ok"},
            {"validation_passed": True},
            False,
            "`syntax_ok`",
        ),
        (
            {"all_true_in_details_keys": ["a", "b"]},
            {"validation_passed": True, "details": {"a": True, "b": False}},
            False,
            "missing: b",
        ),
        (
            {"all_true_in_details_keys": "a"},
            {"validation_passed": True, "details": {"a": True}},
            True,
            "",
        ),
        (
            {"all_true_in_details_keys": ["a"]},
            {"validation_passed": True, "details": "a"},
            False,
            "missing: a",
        ),
        (
            {"must_not_contain_string_in_reasoning": "Incorrect"},
            {"validation_passed": True, "reasoning": "one incorrect date"},
            False,
            "forbidden",
        ),
        (
            {"must_contain_in_details": "PASSED"},
            {"validation_passed": True, "details": "all passed"},
            True,
            "",
        ),
        (
            {"must_contain_in_details": "PASSED"},
            {"validation_passed": True, "details": "2 failed"},
            False,
            "do not contain",
        ),
        (
            {"must_contain_in_details": "PASSED"},
            {"validation_passed": True, "details": {"x": 1}},
            True,
            "",
        ),
    ],
)
async def test_success_criteria(criteria, rep, ok, words):
    """Each success_criteria kind decides as the original's code does."""
    v = AgentTask(
        TASK, "openai/checker", success_criteria=criteria, call=ScriptedCall([json.dumps(rep)])
    )
    context = ValidationContext(messages=USER)
    with set_testing(True):
        r = await v.validate("x", context)
    assert r.valid is ok, r.errors
    assert ok or words in r.errors[0]
    assert len(context.subresults) == 1


async def test_unknown_criterion_is_ignored_with_a_warning():
    """A criterion the original did not know is ignored (validation_passed decides), and logged."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        v = AgentTask(
            TASK,
            "openai/c",
            success_criteria={"field_present_in_details": "date"},
            call=ScriptedCall(['{"date": "2025-05-25"}']),
        )
    finally:
        logger.remove(sink)
    with set_testing(True):
        r = await v.validate("x", ValidationContext())
    assert not r.valid and any("field_present_in_details" in line for line in lines)


async def test_agent_that_never_answers_fails_the_answer():
    """Three empty agent replies (its own retries) are a failed validation, and are counted."""
    out, main, agent = await run(
        {
            "model": "openai/m",
            "messages": USER,
            "validation": [spec()],
            "retry_config": {"max_attempts": 1},
        },
        ["x"],
        ["", "", ""],
    )
    assert isinstance(out, HumanReviewNeededError) and (main.calls, agent.calls) == (1, 3)
    assert "validation agent (max/checker) gave no usable verdict" in out.validation_errors[0]
    assert out.metrics["validator_api_calls"] == 3


async def test_alias_entry_overrides_the_agents_built_in_request_defaults():
    """An alias entry's max_tokens beats the original's 1500 for the validation model."""
    v = AgentTask(TASK, "max/checker")
    made = {}

    def make(model, low):
        made.update(model=model, low=low)
        return ScriptedCall([report(True)])

    v.bind_route(make)
    assert made == {"model": "max/checker", "low": {"temperature": 0.0, "max_tokens": 1500}}
    from retrylib.aliases import Routes

    call = Routes({"max/checker": {"model": "openai/s", "max_tokens": 16}}).make(
        "max/checker", made["low"]
    )
    assert call.defaults == {"temperature": 0.0, "max_tokens": 16}


async def test_agent_task_in_the_python_api():
    """AgentTask works in retry_with_validation with its own call, and respects the depth limit."""
    agent = ScriptedCall([report(False, "no"), report(True)])
    with set_testing(True):
        result = await retry_with_validation(
            ScriptedCall(["a", "b"]),
            USER,
            [AgentTask(TASK, "openai/c", call=agent)],
            RetryConfig(max_attempts=2),
        )
    assert result.content == "b" and agent.calls == 2
    r = await AgentTask(TASK, "openai/c", call=agent).validate("x", ValidationContext(depth=2))
    assert not r.valid and "depth limit" in r.errors[0] and agent.calls == 2


def test_parse_report_finds_the_first_object():
    """parse_report skips arrays and broken braces and returns the first JSON object."""
    assert parse_report('[1] {bad} {"a": {"b": 1}} {"c": 2}') == {"a": {"b": 1}}
    assert parse_report("no json here") is None


# -- ai_contradiction_check --------------------------------------------------------------------


async def test_contradiction_check_empty_text_passes_without_a_call():
    """An empty text_to_check passes and calls nothing, as in the original."""
    agent = ScriptedCall([])
    r = await ContradictionCheck("  ", "topic", call=agent).validate("x", ValidationContext())
    assert r.valid and agent.calls == 0


async def test_contradiction_found_fails_with_the_summary(monkeypatch):
    """contradictions_found: true fails, quoting the summary; tool keys come from the env."""
    monkeypatch.setenv("PERPLEXITY_API_KEY", "pk-test")
    agent = ScriptedCall(
        [json.dumps({"contradictions_found": True, "summary_of_findings": "A and not A"})]
    )
    v = ContradictionCheck(
        "A. Not A.", "logic", required_mcp_tools=["perplexity-ask", "unknown-tool"], call=agent
    )
    with set_testing(True):
        r = await v.validate("ignored", ValidationContext())
    assert not r.valid and r.errors[0] == "AI found contradictions: A and not A"
    kw = agent.requests[0].kwargs
    assert kw["mcp_config"] == {
        "mcpServers": {
            "perplexity-ask": {
                "command": "npx",
                "args": ["-y", "server-perplexity-ask"],
                "env": {"PERPLEXITY_API_KEY": "pk-test"},
            }
        }
    }
    assert "A. Not A." in agent.requests[0].messages[1]["content"]


async def test_contradiction_tools_from_mcp_config_and_none():
    """Tools defined in mcp_config are used; with no known tool no mcp_config is sent."""
    agent = ScriptedCall([json.dumps({"contradictions_found": False})] * 2)
    given = {"mcpServers": {"llm_call_tool": {"command": "python"}}}
    v = ContradictionCheck(
        "t", "c", required_mcp_tools=["llm_call_tool", "file_reader"], mcp_config=given, call=agent
    )
    with set_testing(True):
        assert (await v.validate("x", ValidationContext())).valid
        await ContradictionCheck("t", "c", required_mcp_tools=[], call=agent).validate(
            "x", ValidationContext()
        )
    assert agent.requests[0].kwargs["mcp_config"] == given
    assert "mcp_config" not in agent.requests[1].kwargs


# -- over the wire -------------------------------------------------------------------------


async def test_mcp_config_and_the_filled_prompt_reach_the_request_body(chaos_free):
    """Through litellm, the validation model's request body carries mcp_config and the prompt."""
    key = uuid.uuid4().hex
    chaos_free.set_plan(["reply:" + report(True)], key=key)
    mcp = {"mcpServers": {"python_executor": {"command": "python_tool_placeholder"}}}
    config = {
        "model": "openai/m",
        "messages": USER,
        "validation": [spec(mcp_config=mcp)],
        "model_aliases": {
            "max/checker": {
                "model": "openai/checker",
                "api_base": chaos_free.url,
                "api_key": "sk-local",
                "extra_headers": {"X-Chaos-Key": key},
            }
        },
    }
    main = ScriptedCall(["def add(a, b): return a + b"])
    with set_testing(True):
        result = await llm_call(config, call={"openai/m": main})
    assert result.content == "def add(a, b): return a + b"
    (entry,) = chaos_free.journal(key)
    body = entry["body"]
    assert body["mcp_config"] == mcp and body["model"] == "checker"
    assert body["response_format"] == {"type": "json_object"}
    assert (body["temperature"], body["max_tokens"]) == (0.0, 1500)
    assert "Check def add(a, b): return a + b" in body["messages"][1]["content"]


async def test_agent_task_against_the_real_model(chaos, local_model):
    """SmolLM2 as the validation model: the filled prompt reaches it and a verdict or a failure
    is recorded for the answer (the model's judgement itself is not asserted)."""
    config = {
        "model": "openai/m",
        "messages": USER,
        "retry_config": {"max_attempts": 1},
        "validation": [spec(success_criteria={"agent_must_report_true": "validation_passed"})],
        "model_aliases": {
            "max/checker": {
                "model": local_model.litellm_model,
                "api_base": chaos.url,
                # JSON mode is a grammar on llama.cpp: each token costs ~2 s on 2 busy cores.
                "max_tokens": 8,
            }
        },
    }
    main = ScriptedCall(["def add(a, b): return a + b"])
    with set_testing(True):
        try:
            out = await llm_call(config, call={"openai/m": main})
            (attempt,) = out.attempts
            assert attempt.outcome == "ok"
        except HumanReviewNeededError as exc:
            (attempt,) = exc.attempts
            assert attempt.outcome == "validation_failed"
            assert "validation agent" in attempt.validation_errors[0]
            out = exc
    bodies = [e["body"] for e in chaos.journal()]
    assert 1 <= len(bodies) <= 3 and out.metrics["validator_api_calls"] == len(bodies)
    assert all(b["max_tokens"] == 8 and b["temperature"] == 0.0 for b in bodies)
    assert "Check def add(a, b): return a + b" in bodies[0]["messages"][1]["content"]


async def test_an_agent_task_with_its_own_call_keeps_it_in_llm_call():
    """A built AgentTask given in a config keeps the call it was given (no rebinding)."""
    own = ScriptedCall([report(True)])
    config = {
        "model": "openai/m",
        "messages": USER,
        "validation": [AgentTask(TASK, "max/x", call=own)],
    }
    main = ScriptedCall(["x"])
    with set_testing(True):
        result = await llm_call(config, call={"openai/m": main})
    assert result.content == "x" and own.calls == 1


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"validation_model_alias": "max/x"}, "task_prompt_to_claude"),
        ({"task_prompt_to_claude": "t", "model": "openai/m"}, "unknown params ['model']"),
        ({"model": "openai/m", "rubric": "r", "mcp_config": {}}, "['mcp_config'] go with"),
    ],
)
def test_agent_task_params_of_the_two_forms_do_not_mix(params, words):
    """agent_task is the original's form or an LLM judge; mixing them is a ConfigError."""
    from retrylib import ConfigError
    from retrylib.validators import build_validator

    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        build_validator({"type": "agent_task", "params": params})
