"""The original design's 42 ``llm_config`` dicts, run unchanged through ``llm_call``.

``fixtures/original_configs/configs.json`` holds them as data: every config of
grahama1970/llm_call's ``src/llm_call/proof_of_concept/`` (commit 1dd6c44) — the test-prompt
set ``tests/fixtures/user_prompts.jsonl`` (31), ``test_v4_implementation.py`` (6),
``litellm_client_poc.py``'s runner (4) and ``v4_claude_validator/README.md`` (1).

Each case scripts the replies of the main model and of the validation model
(``ScriptedCall``, given through ``llm_call(config, call={model: call})``) and states what
the original's code (``litellm_client_poc.llm_call`` → ``poc_retry_manager`` → the
validation strategies) does on those replies: whether the answer is accepted or a human is
needed, after how many calls of each model, and what the requests carried. The original's
rules each check relies on are written next to it.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from retrylib import ConfigError, HumanReviewNeededError, llm_call
from retrylib.testing import ScriptedCall, reply, set_testing

CONFIGS = {
    c["id"]: c["llm_config"]
    for c in json.loads(
        (Path(__file__).parent / "fixtures" / "original_configs" / "configs.json").read_text()
    )["configs"]
}
# The original's words (litellm_client_poc.determine_llm_route_and_params).
JSON_LINE = (
    "You MUST respond with a valid JSON object. Do not include any text outside of the "
    "JSON structure."
)
AGENT_SYSTEM = (
    JSON_LINE + " You are a task execution and validation agent. Follow instructions "
    "precisely. Use available tools if needed. Respond ONLY with JSON: "
    '{"validation_passed": boolean, "reasoning": "string", "details": "(string or dict '
    'of tool outputs/test results)"}.'
)
# Keys the original popped before the call (they orchestrate, they are not litellm keywords).
ORCHESTRATION = {
    "validation",
    "retry_config",
    "default_validate",
    "max_attempts_before_tool_use",
    "max_attempts_before_human",
    "debug_tool_name",
    "debug_tool_mcp_config",
    "original_user_prompt",
    "image_directory",
    "max_image_size_kb",
    "question",
}
PNG = base64.b64decode(  # a 1x1 PNG, what test_images_poc/dummy_image.png stands for here
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgaPgPAAIFAYHVb6q0AAAAAElFTkSuQmCC"
)


def verdict(passed: bool, reasoning: str = "checked", details: Any = None) -> str:
    """An agent report in the JSON the original's agent_task asked for."""
    return json.dumps(
        {
            "validation_passed": passed,
            "reasoning": reasoning,
            "details": {} if details is None else details,
        }
    )


def no_contradiction() -> str:
    return json.dumps(
        {
            "contradictions_found": False,
            "certainty_of_findings": 0.9,
            "summary_of_findings": "consistent",
        }
    )


def agent_alias(cfg: dict[str, Any]) -> str | None:
    specs = cfg.get("validation") or []
    specs = specs if isinstance(specs, list) else [specs]
    for s in specs:
        if s.get("type") in ("agent_task", "ai_contradiction_check"):
            return s["params"].get("validation_model_alias")
    return None


class Run:
    """One config run: the scripted calls, and the result or the error."""

    def __init__(self, cfg: dict[str, Any], main: list[Any], agent: Any):
        self.cfg = cfg
        self.replies = [m if isinstance(m, str) else "" for m in main]  # their texts
        self.main = ScriptedCall(main)
        self.agent = ScriptedCall(list(agent))
        self.result: Any = None
        self.error: BaseException | None = None

    async def go(self) -> Run:
        calls = {self.cfg["model"]: self.main}
        if agent_alias(self.cfg):
            calls[agent_alias(self.cfg)] = self.agent  # type: ignore[index]
        with set_testing(True):  # the delays are computed and recorded, not slept
            try:
                self.result = await llm_call(self.cfg, call=calls)
            except (HumanReviewNeededError, ConfigError) as exc:
                self.error = exc
        return self

    def sent(self, i: int) -> list[dict[str, Any]]:
        return self.main.requests[i].messages


# -- what the original checked in each case, beyond the outcome ------------------------------


def first_messages_as_given(run: Run) -> None:
    """The original sent the config's messages (a question became one user message)."""
    cfg = run.cfg
    given = cfg.get("messages") or [{"role": "user", "content": cfg["question"]}]
    assert run.sent(0) == given


def json_line_inserted(run: Run) -> None:
    """No system message: the original put its JSON line first."""
    assert run.sent(0)[0] == {"role": "system", "content": JSON_LINE}
    assert run.sent(0)[1:] == run.cfg["messages"]


def json_line_kept_out(run: Run) -> None:
    """A system message that already says "valid JSON" was left as it was."""
    assert run.sent(0) == run.cfg["messages"]


def json_line_prefixed(run: Run) -> None:
    """A system message that does not ask for a JSON object got the line in front."""
    system = run.cfg["messages"][0]["content"]
    assert run.sent(0)[0] == {"role": "system", "content": f"{JSON_LINE} {system}"}


def image_inlined(run: Run) -> None:
    """A local image path became a base64 data URI; image_directory stayed out of the request."""
    (part,) = [p for p in run.sent(0)[0]["content"] if p["type"] == "image_url"]
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert "image_directory" not in run.main.requests[0].kwargs


def http_image_kept(run: Run) -> None:
    """An https image URL was sent as is."""
    assert run.sent(0) == run.cfg["messages"]


def agent_got_filled_prompt(run: Run) -> None:
    """Each agent call got the original's system prompt, the task with the answer it judges
    filled in, JSON mode, temperature 0.0, max_tokens 1500 and the validator's mcp_config."""
    params = agent_params(run)
    for i, req in enumerate(run.agent.requests):
        system, user = req.messages
        assert system == {"role": "system", "content": AGENT_SYSTEM}
        assert "_TO_VALIDATE}" not in user["content"]
        if "_TO_VALIDATE}" in params["task_prompt_to_claude"]:
            assert run.replies[i] in user["content"]
        assert req.kwargs["response_format"] == {"type": "json_object"}
        assert (req.kwargs["temperature"], req.kwargs["max_tokens"]) == (0.0, 1500)
        assert req.kwargs.get("mcp_config") == params.get("mcp_config")


def agent_params(run: Run) -> dict[str, Any]:
    specs = run.cfg["validation"]
    specs = specs if isinstance(specs, list) else [specs]
    return next(s["params"] for s in specs if s["type"] == "agent_task")


def original_prompt_filled(expected: str):
    def check(run: Run) -> None:
        """{ORIGINAL_USER_PROMPT} became the original user prompt."""
        assert f"'{expected}'" in run.agent.requests[0].messages[1]["content"]

    return check


def tool_stage_from(n: int):
    def check(run: Run) -> None:
        """From the n-th failure on, each request carried debug_tool_mcp_config and the re-ask
        before it named the tool (the original: attempt index >= N)."""
        mcp = run.cfg["debug_tool_mcp_config"]
        for i, req in enumerate(run.main.requests):
            assert (req.kwargs.get("mcp_config") == mcp) is (i >= n), i
            if i >= n:
                assert run.cfg["debug_tool_name"] in req.messages[-1]["content"]
            elif i:
                assert run.cfg["debug_tool_name"] not in req.messages[-1]["content"]

    return check


def no_mcp_in_main(run: Run) -> None:
    """No debug tool was named, so no request carried an mcp_config."""
    assert all("mcp_config" not in r.kwargs for r in run.main.requests)


def mcp_passed_through(run: Run) -> None:
    """A top-level mcp_config went to the model in the request."""
    assert run.main.requests[0].kwargs["mcp_config"] == run.cfg["mcp_config"]


def contradiction_request(run: Run) -> None:
    """The contradiction agent got the original's fixed task and the tools it named."""
    params = run.cfg["validation"][0]["params"]
    req = run.agent.requests[0]
    system, user = req.messages
    assert system["content"] == f"{JSON_LINE} You are an AI contradiction analyst."
    assert f"Analyze text on '{params['topic_context']}'" in user["content"]
    assert params["text_to_check"] in user["content"]
    assert (req.kwargs["temperature"], req.kwargs["max_tokens"]) == (0.0, 1000)
    servers = req.kwargs["mcp_config"]["mcpServers"]
    assert list(servers) == [
        t
        for t in params["required_mcp_tools"]
        if t in (params.get("mcp_config") or {}).get("mcpServers", {}) or t == "perplexity-ask"
    ]
    if "mcp_config" not in params:
        assert servers["perplexity-ask"] == {
            "command": "npx",
            "args": ["-y", "server-perplexity-ask"],
            "env": {"PERPLEXITY_API_KEY": os.environ.get("PERPLEXITY_API_KEY", "")},
        }


def scheduled(delays: list[float]):
    def check(run: Run) -> None:
        """The waits before the retries: initial_delay * backoff_factor ** n, as the original."""
        attempts = run.result.attempts if run.result else run.error.attempts  # type: ignore[union-attr]
        assert [a.scheduled_delay for a in attempts[1:]] == delays

    return check


def feedback_has(*words: str):
    def check(run: Run) -> None:
        """The re-ask named what was wrong."""
        for w in words:
            assert w in run.sent(1)[-1]["content"], w

    return check


class Case(NamedTuple):
    """One config's run: the replies, and what the original did on them."""

    main: list[Any]  # the main model's replies
    agent: tuple[Any, ...] | list[Any] = ()  # the validation model's replies
    outcome: str = "ok"  # "ok" (accepted), "human" (human review) or "refused" (no call)
    calls: tuple[int, int] = (1, 0)  # requests to the main and to the validation model
    attempt: int | None = None  # PoCHumanReviewNeededError.context["attempt"]
    checks: tuple[Any, ...] | list[Any] = ()  # what else the original did: functions of the Run


G = '{"name": "Alice", "age": 25, "city": "London"}'
CODE_BAD, CODE_OK = (
    "deff greet(name)\n    print(name)",
    "def greet(name):\n    print(f'Hello, {name}')",
)

CASES: dict[str, Case] = {
    "max_text_001_simple_question_string": Case(
        main=["", "I am well."],
        calls=(2, 0),
        checks=[first_messages_as_given, feedback_has("empty")],
    ),
    "max_text_002_user_message_only": Case(
        main=["A joke."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "max_text_003_with_system_prompt": Case(
        main=["Waves roll."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "max_text_004_no_validation_explicit": Case(
        main=[""], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "max_text_005_custom_retry": Case(
        main=["", " "], outcome="human", calls=(2, 0), attempt=1, checks=[scheduled([0.5])]
    ),
    "vertex_text_001_simple_question_string": Case(
        main=["Nitrogen."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "vertex_text_002_user_message_only": Case(
        main=["Gatsby."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "vertex_text_003_with_system_prompt": Case(
        main=["1789."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "openai_json_001_basic_json_request": Case(
        main=['{"name": "Alice", "city": "London"}', G],
        calls=(2, 0),
        checks=[json_line_inserted, feedback_has("age")],
    ),
    "max_json_002_proxy_json_request": Case(
        main=['["success", [1, 2, 3]]', '{"status": "success", "data": [1, 2, 3]}'],
        calls=(2, 0),
        checks=[json_line_kept_out],
    ),
    "openai_multimodal_001_image_description_local": Case(
        main=["Blue."], calls=(1, 0), checks=[image_inlined]
    ),
    "openai_multimodal_002_http_image": Case(
        main=["Google."], calls=(1, 0), checks=[http_image_kept]
    ),
    "max_multimodal_001_image_description_local": Case(main=[], outcome="refused", calls=(0, 0)),
    "max_multimodal_002_http_image": Case(main=[], outcome="refused", calls=(0, 0)),
    "ai_validation_001_contradiction_flat_earth": Case(
        main=["(the text)", "(the text)"],
        agent=[
            json.dumps({"contradictions_found": True, "summary_of_findings": "flat yet centred"}),
            no_contradiction(),
        ],
        calls=(2, 2),
        checks=[contradiction_request, feedback_has("flat yet centred")],
    ),
    "ai_validation_002_contradiction_cold_fusion": Case(
        main=["(the text)"],
        agent=[no_contradiction()],
        calls=(1, 1),
        checks=[contradiction_request],
    ),
    "agent_task_001_simple_command": Case(
        main=["Task output: Command 'list_files /tmp' was simulated."],
        agent=[verdict(True, "The command was understood and executed.", "simulated listing")],
        calls=(1, 1),
        checks=[agent_got_filled_prompt],
    ),
    "code_gen_001_force_tool_retry": Case(
        main=[CODE_BAD, CODE_OK],
        agent=[
            verdict(False, "deff", {"syntax_ok": False}),
            verdict(True, "ok", {"syntax_ok": True}),
        ],
        calls=(2, 2),
        checks=[tool_stage_from(1), agent_got_filled_prompt, scheduled([1.0])],
    ),
    "code_gen_002_force_human_escalation": Case(
        main=["def add(a, b): return a+b", "def add(a,b): return a + b"],
        agent=[verdict(False), verdict(False)],
        outcome="human",
        calls=(2, 2),
        attempt=2,
        checks=[no_mcp_in_main, agent_got_filled_prompt],
    ),
    "misc_001_openai_no_validation": Case(
        main=["299,792 km/s."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "misc_002_max_empty_response_test": Case(
        main=["", "", ""], outcome="human", calls=(3, 0), attempt=2, checks=[scheduled([0.0, 0.0])]
    ),
    "misc_003_short_max_tokens_vertex": Case(
        main=[reply(None, finish_reason="length"), "Once upon a time."],
        calls=(2, 0),
        checks=[first_messages_as_given],
    ),
    "combo_val_001_json_and_fields_openai": Case(
        main=[
            '{"product_name": "Blue widget", "in_stock": true}',
            '{"product_name": "Blue widget", "price": 9.5, "in_stock": true}',
        ],
        calls=(2, 0),
        checks=[json_line_inserted, feedback_has("price")],
    ),
    "combo_val_002_agent_task_specific_mcp": Case(
        main=["Topic: The history of Python programming language.", "Topic: Python history."],
        agent=[
            verdict(True, "One incorrect milestone: 1989."),
            verdict(True, "All milestones check out."),
        ],
        calls=(2, 2),
        checks=[agent_got_filled_prompt, feedback_has("incorrect milestone")],
    ),
    "combo_val_003_multiple_simple_validators": Case(
        main=['{"name": "John Doe"}', '{"name": "John Doe", "city": "New York"}'],
        calls=(2, 0),
        checks=[json_line_inserted, feedback_has("city")],
    ),
    "ai_complex_001_code_refactor_validation": Case(
        main=[
            "def squared(num):\n return num**2",
            'def squared(num):\n """Square."""\n return num**2',
        ],
        agent=[
            verdict(
                True,
                "no docstring",
                {"syntax_ok": True, "name_ok": True, "docstring_ok": False, "test_pass": True},
            ),
            verdict(
                True,
                "ok",
                {"syntax_ok": True, "name_ok": True, "docstring_ok": True, "test_pass": True},
            ),
        ],
        calls=(2, 2),
        checks=[agent_got_filled_prompt, feedback_has("docstring_ok")],
    ),
    # The original could not build this validator (PoCAIContradictionValidator takes no
    # mcp_config: TypeError, logged, validator dropped) and so accepted any answer. retrylib
    # takes mcp_config as the tools' definitions and runs the check: the one deliberate change.
    "ai_complex_002_contradiction_with_large_text_delegation": Case(
        main=["(the document)"],
        agent=[no_contradiction()],
        calls=(1, 1),
        checks=[contradiction_request],
    ),
    "max_text_006_only_system_prompt_error": Case(
        main=["OK"], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "openai_text_001_no_validation": Case(
        main=["An answer."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "vertex_json_002_malformed_request": Case(
        main=['{"city": "Paris", "country": "France",}', '{"city": "Paris", "country": "France"}'],
        calls=(2, 0),
        checks=[json_line_prefixed, scheduled([0.0])],
    ),
    # A report without validation_passed fails, whatever else it holds (the criterion
    # field_present_in_details is unknown to the original, which ignored it).
    "max_text_007_tool_use_without_explicit_mcp_in_config": Case(
        main=["Some output to validate."] * 3,
        agent=['{"date": "2025-05-25"}'] * 3,
        outcome="human",
        calls=(3, 3),
        attempt=2,
        checks=[agent_got_filled_prompt],
    ),
    "test_v4_implementation.test_basic_mcp_call": Case(
        main=["perplexity-ask, github"], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "test_v4_implementation.test_custom_mcp_config": Case(
        main=["Found it."], calls=(1, 0), checks=[mcp_passed_through]
    ),
    "test_v4_implementation.test_ai_validation_contradiction": Case(
        main=["(the text)"] * 3,
        agent=[verdict(False, "flat and a sphere")] * 3,
        outcome="human",
        calls=(3, 3),
        attempt=2,
        checks=[agent_got_filled_prompt],
    ),
    "test_v4_implementation.test_code_validation": Case(
        main=["def calculate_sum(a, b)"] * 3,
        agent=[verdict(False, "missing colon")] * 3,
        outcome="human",
        calls=(3, 3),
        attempt=2,
        checks=[agent_got_filled_prompt],
    ),
    "test_v4_implementation.test_staged_retry_with_tools": Case(
        main=["bad 1", "bad 2", "bad 3", "def factorial(n): ..."],
        agent=[verdict(False, "x", {"syntax_ok": False})] * 3
        + [verdict(True, "ok", {"syntax_ok": True, "correct_name": True, "correct_result": True})],
        calls=(4, 4),
        checks=[tool_stage_from(2), agent_got_filled_prompt],
    ),
    "test_v4_implementation.test_json_validation": Case(
        main=[
            '{"name": "A", "email": "a@b.c", "age": 3, "active": true, "password": "pw"}',
            '{"name": "A", "email": "a@b.c", "age": 3, "active": true}',
        ],
        calls=(2, 0),
        checks=[json_line_inserted, feedback_has("password")],
    ),
    "litellm_client_poc.claude_text_config": Case(
        main=["Claude."], calls=(1, 0), checks=[first_messages_as_given]
    ),
    "litellm_client_poc.gemini_json_config": Case(
        main=['{"name": "Jane Doe", "age": 28}'], calls=(1, 0), checks=[json_line_inserted]
    ),
    "litellm_client_poc.code_generation_llm_config": Case(
        main=["deff calculate_average(xs):"] * 4,
        agent=[verdict(False, "syntax", {"syntax_ok": False})] * 4,
        outcome="human",
        calls=(4, 4),
        attempt=4,
        checks=[tool_stage_from(2), agent_got_filled_prompt],
    ),
    "litellm_client_poc.multimodal_config_openai": Case(
        main=["Blue."], calls=(1, 0), checks=[image_inlined]
    ),
    "v4_claude_validator/README.coding_task_llm_config": Case(
        main=["deff fib(n):", "def fib(n): ..."],
        agent=[
            verdict(False, "x", {"syntax_ok": False, "test_fib_5_pass": False}),
            verdict(True, "ok", {"syntax_ok": True, "test_fib_5_pass": True}),
        ],
        calls=(2, 2),
        checks=[
            agent_got_filled_prompt,
            original_prompt_filled("Write a function to calculate Fibonacci numbers."),
        ],
    ),
}


def test_every_original_config_has_a_case():
    """All 42 configs of the fixture are run below, and no case names a config it lacks."""
    assert len(CONFIGS) == 42 and set(CASES) == set(CONFIGS)


@pytest.fixture
def images_at_cwd(tmp_path, monkeypatch):
    """The original opened test_images_poc/dummy_image.png from the working directory."""
    (tmp_path / "test_images_poc").mkdir()
    (tmp_path / "test_images_poc" / "dummy_image.png").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("case_id", sorted(CASES))
async def test_original_config_behaves_as_the_original(case_id, images_at_cwd):
    """The config, on these replies, ends as the original's code ends, after as many calls."""
    main, agent, outcome, (n_main, n_agent), attempt, checks = CASES[case_id]
    cfg = CONFIGS[case_id]
    run = await Run(cfg, main, agent).go()
    assert (run.main.calls, run.agent.calls) == (n_main, n_agent)
    if outcome == "refused":  # the original returned an error dict and made no call
        assert isinstance(run.error, ConfigError) and "takes no image inputs" in str(run.error)
        return
    if outcome == "ok":
        assert run.error is None, run.error
        assert run.result.content == run.replies[n_main - 1]
    else:
        exc = run.error
        assert isinstance(exc, HumanReviewNeededError), exc
        assert exc.context["attempt"] == attempt
        assert exc.context["last_response"]["choices"][0]["message"]["content"] == main[n_main - 1]
        assert exc.context["original_llm_config"] == cfg  # (none of these has a question)
        assert pickle.loads(pickle.dumps(exc)).context == exc.context
    model = cfg["model"]
    for req in run.main.requests:
        kw = req.kwargs
        assert not ORCHESTRATION & set(kw), ORCHESTRATION & set(kw)
        assert kw.get("response_format") == cfg.get("response_format")
        if model.startswith("max/"):  # the original's proxy defaults
            assert (kw["temperature"], kw["max_tokens"]) == (
                cfg.get("temperature", 0.1),
                cfg.get("max_tokens", 250),
            )
        else:
            assert (kw.get("temperature"), kw.get("max_tokens")) == (
                cfg.get("temperature"),
                cfg.get("max_tokens"),
            )
    for check in checks:
        check(run)


async def test_an_original_config_against_the_real_model(local_model):
    """max_text_001, unchanged but for a model_aliases entry, is answered by SmolLM2 for real."""
    config = {
        **CONFIGS["max_text_001_simple_question_string"],
        "model_aliases": {
            "max/text-generation": {
                "model": local_model.litellm_model,
                "api_base": local_model.api_base,
                "max_tokens": 16,
            }
        },
    }
    result = await llm_call(config)
    assert result.content.strip() and result.attempts[-1].outcome == "ok"
    assert len(result.attempts) <= 3 and result.metrics["tokens_out"] > 0
