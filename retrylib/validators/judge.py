"""``LLMJudge``: a validator that asks a model whether the answer meets a rubric.

The judge's own call goes through ``retry_with_validation`` (its reply must be JSON with a
``pass`` field), one level deeper than the call it judges. Its result is appended to
``context.subresults``, so its API calls and tokens show up in the outer call's metrics.
:func:`depth_refusal` and :func:`consult` do that part for every validator that asks a model
(``LLMJudge`` here, the original design's ``agent_task`` in ``retrylib.validators.agent``).
``retrylib.client`` and ``retrylib.manager`` are imported inside the functions: the manager
imports the validators package, so a module-level import would be a cycle.
"""

from __future__ import annotations

from typing import Any

from retrylib.errors import ConfigError
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.structured import FieldsPresent, JsonObject
from retrylib.validators.text import shorten

SYSTEM_PROMPT = (
    "You are a strict reviewer. You get a rubric and an answer. Decide whether the answer "
    "meets the rubric. Reply with only a JSON object, nothing else: "
    '{"pass": true, "reason": "..."} or {"pass": false, "reason": "..."}. '
    "The reason is one sentence saying what is wrong, or why it is fine."
)

#: The verdict's JSON schema. A weak local model often answers in prose; pass
#: ``response_format={"type": "json_object", "schema": VERDICT_SCHEMA}`` (llama.cpp's form)
#: to constrain it.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"pass": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["pass", "reason"],
}

_TRUE = {"true", "yes", "pass", "passed", "1"}
_FALSE = {"false", "no", "fail", "failed", "0"}


def _as_bool(value: Any) -> bool | None:
    """The verdict's ``pass`` value as a bool, or ``None`` when it means neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def depth_refusal(context: ValidationContext, max_depth: int, who: str) -> ValidationResult | None:
    """A failure when a validator that calls a model may not run at this depth, else ``None``.

    Args:
        context: the context of the answer being judged.
        max_depth: the validator's own limit (the context's ``max_depth`` applies too).
        who: what the error line calls the validator ("LLM judge", ...).
    """
    limit = min(max_depth, context.max_depth)
    if context.depth >= limit:
        return ValidationResult.fail(
            f"{who} not run: the validator depth limit ({limit}) is reached at depth "
            f"{context.depth}"
        )
    return None


async def consult(
    call: Any,
    messages: list[dict[str, Any]],
    validators: list[Any],
    config: Any,
    context: ValidationContext,
    who: str,
    **call_kwargs: Any,
) -> Any:
    """Run a validator's own model call, one validator depth deeper, and count it.

    Args:
        call: the call function of the validating model.
        messages: what it is sent.
        validators: what its reply must pass.
        config: the ``RetryConfig`` of that call.
        context: the context of the answer being judged; the call's ``RetryResult`` (or its
            attempts, when it failed) is appended to ``context.subresults``.
        who: what the error line calls the model ("the LLM judge (openai/m)", ...).
        **call_kwargs: passed to every attempt (``response_format``, ``mcp_config``, ...).

    Returns:
        The ``RetryResult``, or a failed ``ValidationResult`` saying why there is no reply.
    """
    from retrylib.errors import RetryError
    from retrylib.manager import retry_with_validation
    from retrylib.result import RetryResult, summarize

    try:
        result = await retry_with_validation(call, messages, validators=validators, config=config,
                                             depth=context.depth + 1,
                                             outer_budget=context.budget, **call_kwargs)
    except RetryError as exc:
        # The failed calls still cost calls: count them in the outer metrics.
        context.subresults.append(
            RetryResult(
                content="",
                response=None,
                attempts=list(exc.attempts),
                metrics=summarize(list(exc.attempts), [], "normal"),
            )
        )
        return ValidationResult.fail(
            f"{who} gave no usable verdict: {type(exc).__name__}: {shorten(str(exc), 200)}"
        )
    context.subresults.append(result)
    return result


def _first_user_prompt(messages: list[dict[str, Any]]) -> str | None:
    for m in messages:
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return None


class LLMJudge:
    """Checks an answer by asking a model to judge it against a rubric.

    The judge is asked to reply ``{"pass": true|false, "reason": "..."}``. On
    ``"pass": false`` the reason is the error line. The question the answer replies to
    (the first user message of the judged call) is shown to the judge too.

    Args:
        model: a litellm model string (``"openai/smollm2"``, ``"gpt-4o-mini"``, ...).
        rubric: what a good answer does, in words.
        api_base: where the judge model is served, when not the provider default.
        api_key: its key, when not taken from the environment.
        config: the ``RetryConfig`` (or a dict of its fields) for the judge's own call;
            default: 3 attempts, no backoff delay.
        max_depth: the judge refuses to run at this validator depth or deeper (so does the
            context's ``max_depth``, whichever is lower).
        **call_kwargs: passed to ``make_call`` (``temperature``, ``max_tokens``,
            ``response_format`` built from :data:`VERDICT_SCHEMA`, ...). None is required.

    Raises:
        ConfigError: an empty model or rubric, a negative ``max_depth``, or a bad config.

    parsed: ``None`` (the verdict is not the answer's content).
    """

    name = "llm_judge"
    costly = True  # AllOf skips it once a cheaper validator has failed

    def __init__(
        self,
        model: str,
        rubric: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        config: Any = None,
        max_depth: int = 2,
        **call_kwargs: Any,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"LLMJudge: model must be a non-empty model string, not {model!r}")
        if not isinstance(rubric, str) or not rubric.strip():
            raise ConfigError(f"LLMJudge: rubric must be a non-empty string, not {rubric!r}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
            raise ConfigError(f"LLMJudge: max_depth must be an integer >= 0, not {max_depth!r}")
        if isinstance(config, dict):
            from retrylib.config import RetryConfig

            config = RetryConfig(**config)
        self.model = model
        self.rubric = rubric
        self.api_base = api_base
        self.api_key = api_key
        self.config = config
        self.max_depth = max_depth
        self.call_kwargs = call_kwargs

    def __repr__(self) -> str:
        base = f", api_base={self.api_base!r}" if self.api_base else ""
        return f"LLMJudge({self.model!r}, rubric={shorten(self.rubric, 50)!r}{base}, max_depth={self.max_depth})"

    def messages_for(self, text: str, context: ValidationContext) -> list[dict[str, Any]]:
        """The messages the judge is sent for ``text``."""
        parts = [f"Rubric:\n{self.rubric}"]
        question = _first_user_prompt(context.messages)
        if question:
            parts.append(f"The question the answer replies to:\n{shorten(question, 2000)}")
        parts.append(f"The answer to judge:\n<<<\n{text}\n>>>")
        parts.append('Reply with only {"pass": true|false, "reason": "..."}.')
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        refused = depth_refusal(context, self.max_depth, "LLM judge")
        if refused is not None:
            return refused
        from retrylib.client import make_call
        from retrylib.config import RetryConfig

        call = make_call(
            self.model, api_base=self.api_base, api_key=self.api_key, **self.call_kwargs
        )
        config = self.config or RetryConfig(max_attempts=3, initial_delay=0.0)
        result = await consult(call, self.messages_for(text, context),
                               [JsonObject(), FieldsPresent(["pass"])], config, context,
                               f"the LLM judge ({self.model})")
        if isinstance(result, ValidationResult):
            return result
        verdict = result.parsed if isinstance(result.parsed, dict) else {}
        passed = _as_bool(verdict.get("pass"))
        reason = str(verdict.get("reason") or "").strip()
        if passed is None:
            return ValidationResult.fail(
                f"the LLM judge ({self.model}) gave an unclear verdict: pass = {shorten(repr(verdict.get('pass')))}"
            )
        if passed:
            return ValidationResult.ok()
        return ValidationResult.fail(
            reason or "the LLM judge rejected the answer without giving a reason",
            suggestions=[f"Revise the answer so that it meets this rubric: {self.rubric}"],
        )
