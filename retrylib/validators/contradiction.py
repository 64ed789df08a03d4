"""The original design's ``ai_contradiction_check``: a validation model looks for contradictions.

As in the original, the text checked is the ``text_to_check`` param, not the answer, and the
validation model is given MCP tools by name (``required_mcp_tools``), picked from the tools
the original's proxy knew (:func:`known_mcp_servers`) or, retrylib's addition, from the
``mcp_config`` param. The call itself is the one ``agent_task`` makes (see
``retrylib.validators.agent``), with ``max_tokens`` 1000.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from retrylib.errors import ConfigError
from retrylib.validators.agent import _AgentValidator, _is_true
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.text import shorten

# The tools the original's proxy knew (its DEFAULT_ALL_TOOLS_MCP_CONFIG): what
# required_mcp_tools picks from. Keys come from the environment when the check runs.
_KNOWN_TOOLS: dict[str, tuple[list[str], dict[str, str]]] = {
    "perplexity-ask": (["-y", "server-perplexity-ask"], {"PERPLEXITY_API_KEY": ""}),
    "desktop-commander": (["-y", "@wonderwhy-er/desktop-commander"], {}),
    "brave-search": (["-y", "@modelcontextprotocol/server-brave-search"], {"BRAVE_API_KEY": ""}),
    "github": (["-y", "@modelcontextprotocol/server-github"], {"GITHUB_TOKEN": ""}),
    "context7": (["-y", "@upstash/context7-mcp@latest"], {}),
}


def known_mcp_servers() -> dict[str, Any]:
    """The original proxy's default MCP servers.

    Returns:
        ``{name: {"command", "args", "env"}}``, each key of ``env`` read from the environment
        now (empty when unset), as the original's proxy module read them.
    """
    return {name: {"command": "npx", "args": list(args),
                   "env": {k: os.environ.get(k, "") for k in env}}
            for name, (args, env) in _KNOWN_TOOLS.items()}


class ContradictionCheck(_AgentValidator):
    """Asks a validation model whether ``text_to_check`` contradicts itself or the consensus
    on ``topic_context`` (the original design's ``ai_contradiction_check``).

    As in the original, the text checked is ``text_to_check``, not the answer; an empty one
    passes without a call. The check fails when the report says
    ``"contradictions_found": true``.

    Args:
        text_to_check: the text (the first 150,000 characters are sent).
        topic_context: what it is about.
        validation_model_alias: the validation model (an alias or a model string).
        required_mcp_tools: tools to give it, picked from ``mcp_config`` or else from the
            original proxy's defaults (:func:`known_mcp_servers`); unknown names are dropped.
        mcp_config: MCP server definitions for those tools (retrylib's addition: the original
            took only the names it knew).
        call: the validation model's call function (as for :class:`AgentTask`).

    parsed: ``None``.
    """

    name = "ai_contradiction_check"
    request_defaults: ClassVar[dict[str, Any]] = {"temperature": 0.0, "max_tokens": 1000}

    def __init__(self, text_to_check: str, topic_context: str,
                 validation_model_alias: str = "max/contradiction_expert_agent",
                 required_mcp_tools: Sequence[str] | None = ("perplexity-ask",),
                 mcp_config: Mapping[str, Any] | None = None, *, call: Any = None):
        for label, value in (("text_to_check", text_to_check), ("topic_context", topic_context)):
            if not isinstance(value, str):
                raise ConfigError(f"ai_contradiction_check: {label} must be a string, "
                                  f"not {value!r}")
        super().__init__(validation_model_alias, mcp_config, call)
        self.text_to_check = text_to_check
        self.topic_context = topic_context
        self.required_mcp_tools = list(required_mcp_tools or [])

    def __repr__(self) -> str:
        return (f"ContradictionCheck(topic_context={shorten(self.topic_context, 40)!r}, "
                f"validation_model_alias={self.validation_model_alias!r})")

    def prompt(self) -> str:
        """The task sent to the validation model (the original's words)."""
        topic = self.topic_context
        return (
            f"Analyze text on '{topic}' for contradictions or conflicts with scientific consensus. "
            f"MUST use 'perplexity-ask' tool to research '{topic}'. "
            f"Text:\n```text\n{self.text_to_check[:150000]}\n```\n"
            'Respond ONLY JSON: {"contradictions_found": <bool>, "certainty_of_findings": <float>, '
            '"summary_of_findings": "<str>", "perplexity_ask_queries_used": ["<str>"], '
            '"perplexity_ask_key_insights": "<str>"}'
        )

    def mcp_for_call(self) -> dict[str, Any] | None:
        """The MCP config sent: the required tools that have a definition, or ``None``."""
        given = dict((self.mcp_config or {}).get("mcpServers") or {})
        known = known_mcp_servers()
        servers = {t: given.get(t, known.get(t)) for t in self.required_mcp_tools
                   if t in given or t in known}
        return {"mcpServers": servers} if servers else None

    async def validate(self, text: str, context: ValidationContext) -> ValidationResult:
        if not self.text_to_check.strip():
            return ValidationResult.ok()
        messages = [{"role": "system", "content": "You are an AI contradiction analyst."},
                    {"role": "user", "content": self.prompt()}]
        report = await self._ask(messages, self.mcp_for_call(), context)
        if isinstance(report, ValidationResult):
            return report
        if _is_true(report.get("contradictions_found")):
            summary = report.get("summary_of_findings", "N/A")
            return ValidationResult.fail(f"AI found contradictions: {shorten(str(summary), 400)}")
        return ValidationResult.ok()
