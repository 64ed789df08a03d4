"""The original design's ``agent_task``: a validation model checks the answer.

It sends a task to a validation model, ``validation_model_alias`` (an alias such as
``max/code_tester_agent``, mapped in ``model_aliases``; or any model string), and reads the
JSON report it sends back (so does ``ai_contradiction_check``, in
``retrylib.validators.contradiction``, through the same ``_AgentValidator``). That call is
the original's recursive ``llm_call``: ``response_format: {type: json_object}`` (so the
JSON system line is added, see ``retrylib.messages``), temperature 0.0, ``max_tokens`` 1500
(1000 for the contradiction check) unless the alias entry sets them, the validator's
``mcp_config`` in the request, ``response_not_empty`` on the reply and the original's 3
attempts. The report is read leniently: bare JSON, one fenced block, or the first JSON
object in prose around it.

``agent_task`` passes when the report's ``validation_passed`` (or the key that
``success_criteria.agent_must_report_true`` names) is ``true`` and every other criterion
given holds:

- ``all_true_in_details_keys``: each listed key of ``details`` (a dict) is ``true``;
- ``must_not_contain_string_in_reasoning``: ``reasoning`` does not contain it (any case);
- ``must_contain_in_details``: a string ``details`` contains it (any case).

The task prompt's placeholders ``{TEXT_TO_VALIDATE}`` and ``{CODE_TO_VALIDATE}`` become the
answer, ``{ORIGINAL_USER_PROMPT}`` the original user prompt (``"N/A"`` when there is none).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from loguru import logger

from retrylib.aliases import Routes, load_aliases, original_defaults
from retrylib.errors import ConfigError
from retrylib.messages import add_json_instruction
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.judge import _first_user_prompt, consult, depth_refusal
from retrylib.validators.text import ResponseNotEmpty, shorten

AGENT_SYSTEM_PROMPT = (
    "You are a task execution and validation agent. Follow instructions precisely. Use "
    "available tools if needed. Respond ONLY with JSON: {\"validation_passed\": boolean, "
    "\"reasoning\": \"string\", \"details\": \"(string or dict of tool outputs/test results)\"}."
)
CRITERIA = ("agent_must_report_true", "all_true_in_details_keys",
            "must_not_contain_string_in_reasoning", "must_contain_in_details")
_JSON_OBJECT = {"type": "json_object"}
def parse_report(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: bare, in a fenced block, or inside prose.

    Args:
        text: the validation model's reply.

    Returns:
        The object, or ``None`` when ``text`` holds none.
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _is_true(value: Any) -> bool:
    # The original tested ``value == True``: true, or a number equal to 1; not "true".
    return value is True or (type(value) in (int, float) and value == 1)


def judge_report(report: Mapping[str, Any], criteria: Mapping[str, Any]) -> ValidationResult:
    """The verdict on an ``agent_task`` report.

    Args:
        report: the validation model's JSON report.
        criteria: the ``success_criteria`` (see the module docstring).

    Returns:
        ``ok()``, or a failure quoting the agent's reasoning and naming each criterion that
        failed, with the agent's details as the suggestion.
    """
    reasoning = report.get("reasoning", "No reasoning provided by agent.")
    details = report.get("details", {})
    failed = []
    key = criteria.get("agent_must_report_true") or "validation_passed"
    if not _is_true(report.get(key)):
        failed.append(f"the report's `{key}` is not true")
    if "all_true_in_details_keys" in criteria:
        keys = criteria["all_true_in_details_keys"]
        keys = keys if isinstance(keys, list) else [keys]
        bad = [k for k in keys if not (isinstance(details, dict) and _is_true(details.get(k)))]
        if bad:
            failed.append(f"details keys not true or missing: {', '.join(map(str, bad))}")
    forbidden = criteria.get("must_not_contain_string_in_reasoning")
    if forbidden and isinstance(reasoning, str) and str(forbidden).lower() in reasoning.lower():
        failed.append(f"the reasoning contains the forbidden string {forbidden!r}")
    wanted = criteria.get("must_contain_in_details")
    # As the original: only a string ``details`` is searched.
    if wanted and isinstance(details, str) and str(wanted).lower() not in details.lower():
        failed.append(f"the details do not contain {wanted!r}")
    if not failed:
        return ValidationResult.ok()
    return ValidationResult.fail(
        f"the validation agent rejected the answer: {shorten(str(reasoning), 400)} "
        f"[{'; '.join(failed)}]",
        suggestions=[f"Agent details: {shorten(str(details), 200)}"],
    )


class _AgentValidator:
    """What both validators share: the validation model's route and the call to it."""

    name = "agent"
    costly = True  # AllOf skips it once a cheaper validator has failed
    request_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, validation_model_alias: str, mcp_config: Any, call: Any):
        if not isinstance(validation_model_alias, str) or not validation_model_alias.strip():
            raise ConfigError(f"{self.name}: validation_model_alias must be a model name, "
                              f"not {validation_model_alias!r}")
        if mcp_config is not None and not isinstance(mcp_config, Mapping):
            raise ConfigError(f"{self.name}: mcp_config must be a mapping, not {mcp_config!r}")
        self.validation_model_alias = validation_model_alias
        self.mcp_config = dict(mcp_config) if mcp_config is not None else None
        self._call = call
        self._own_call = call is not None  # a call given here is never replaced by a binding

    def bind_route(self, make: Callable[..., Any], original_prompt: str | None = None) -> None:
        """Serve the validation model through ``make(model, low)`` (``Routes.make``); the
        declarative ``llm_call`` does this, as the original's ``set_llm_caller``.

        Args:
            make: ``make(model, low)`` returns the call function of ``model``; ``low`` are
                the request defaults an alias entry may override.
            original_prompt: unused here (see :class:`AgentTask`).

        Raises:
            ConfigError: ``make`` found no route (an unmapped alias).
        """
        if self._own_call:
            return
        low = {**original_defaults(self.validation_model_alias), **self.request_defaults}
        self._call = make(self.validation_model_alias, low)

    def _route(self) -> Any:
        if self._call is None:  # not bound: the alias file and plain model strings serve it
            self.bind_route(Routes(load_aliases()).make)
        return self._call

    async def _ask(self, messages: list[dict[str, Any]], mcp: Any,
                   context: ValidationContext) -> dict[str, Any] | ValidationResult:
        """The validation model's report, or a failure saying why there is none."""
        refused = depth_refusal(context, context.max_depth, f"{self.name} validator")
        if refused is not None:
            return refused
        from retrylib.config import RetryConfig

        # The original's recursive llm_call: its default retry config and human threshold.
        config = RetryConfig(max_attempts=3, initial_delay=1.0, backoff_factor=2.0, max_delay=60.0,
                             jitter="none", max_attempts_before_human=3)
        extra = {"mcp_config": mcp} if mcp else {}
        who = f"the validation agent ({self.validation_model_alias})"
        result = await consult(self._route(), add_json_instruction(messages), [ResponseNotEmpty()],
                               config, context, who, response_format=_JSON_OBJECT, **extra)
        if isinstance(result, ValidationResult):
            return result
        report = parse_report(result.content)
        if report is None:
            return ValidationResult.fail(
                f"could not parse a JSON object from {who}: {shorten(result.content, 300)!r}")
        return report


class AgentTask(_AgentValidator):
    """Delegates the check to a validation model (the original design's ``agent_task``).

    Args:
        task_prompt_to_claude: the task, with ``{TEXT_TO_VALIDATE}`` / ``{CODE_TO_VALIDATE}``
            / ``{ORIGINAL_USER_PROMPT}`` placeholders.
        validation_model_alias: the validation model (an alias or a model string).
        mcp_config: MCP servers for the validation model, sent in its request.
        success_criteria: how to read the report (see the module docstring).
        call: the validation model's call function (default: its route, found when first
            needed, from ``$RETRYLIB_MODEL_ALIASES`` or as a model string).
        original_prompt: what ``{ORIGINAL_USER_PROMPT}`` becomes (default: the first user
            message of the judged call).

    Raises:
        ConfigError: an empty task or model, or a non-mapping ``mcp_config``/``success_criteria``.

    parsed: ``None`` (the report is not the answer's content).
    """

    name = "agent_task"
    request_defaults: ClassVar[dict[str, Any]] = {"temperature": 0.0, "max_tokens": 1500}

    def __init__(self, task_prompt_to_claude: str,
                 validation_model_alias: str = "max/generic_agent_validator",
                 mcp_config: Mapping[str, Any] | None = None,
                 success_criteria: Mapping[str, Any] | None = None, *,
                 call: Any = None, original_prompt: str | None = None):
        if not isinstance(task_prompt_to_claude, str) or not task_prompt_to_claude.strip():
            raise ConfigError(f"agent_task: task_prompt_to_claude must be a non-empty string, "
                              f"not {task_prompt_to_claude!r}")
        if success_criteria is not None and not isinstance(success_criteria, Mapping):
            raise ConfigError("agent_task: success_criteria must be a mapping, "
                              f"not {success_criteria!r}")
        super().__init__(validation_model_alias, mcp_config, call)
        self.task_prompt = task_prompt_to_claude
        self.success_criteria = dict(success_criteria or {})
        self.original_prompt = original_prompt
        unknown = sorted(set(self.success_criteria) - set(CRITERIA))
        if unknown:  # the original ignored them silently; say so once
            logger.warning("agent_task: success_criteria {} are not known and are ignored "
                           "(known: {})", unknown, ", ".join(CRITERIA))

    def __repr__(self) -> str:
        return (f"AgentTask({shorten(self.task_prompt, 40)!r}, "
                f"validation_model_alias={self.validation_model_alias!r})")

    def bind_route(self, make: Callable[..., Any], original_prompt: str | None = None) -> None:
        super().bind_route(make)
        if original_prompt is not None:
            self.original_prompt = original_prompt

    def prompt_for(self, text: str, context: ValidationContext) -> str:
        """The task prompt with its placeholders filled in for the answer ``text``."""
        original = self.original_prompt or _first_user_prompt(context.messages) or "N/A"
        return (self.task_prompt.replace("{CODE_TO_VALIDATE}", text)
                .replace("{TEXT_TO_VALIDATE}", text)
                .replace("{ORIGINAL_USER_PROMPT}", original))

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        messages = [{"role": "system", "content": AGENT_SYSTEM_PROMPT},
                    {"role": "user", "content": self.prompt_for(text, context)}]
        report = await self._ask(messages, self.mcp_config, context)
        if isinstance(report, ValidationResult):
            return report
        return judge_report(report, self.success_criteria)
