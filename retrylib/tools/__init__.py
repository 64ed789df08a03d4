"""The tool stage's machinery: MCP servers started, their tools offered, tool calls executed.

- :class:`ToolSession` (:mod:`retrylib.tools.session`): the servers of an ``mcpServers``
  config, started once, their tools as OpenAI ``tools``, ``await session.call(...)``;
- :func:`run_tool_rounds` (:mod:`retrylib.tools.rounds`): the tool rounds of one attempt,
  then the final answer;
- :mod:`retrylib.tools.run_python`: retrylib's default debugging MCP server, started by
  :func:`default_debug_tool_config`.

Everything here needs the ``[mcp]`` extra, imported when first used: ``import retrylib``
never loads it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrylib.tools.rounds import ToolCallRecord, ToolRounds, run_tool_rounds
    from retrylib.tools.session import ToolResult, ToolServerError, ToolSession

DEBUG_SERVER_NAME = "run_python"

_LAZY = {"ToolSession": "retrylib.tools.session", "ToolResult": "retrylib.tools.session",
         "ToolServerError": "retrylib.tools.session", "run_tool_rounds": "retrylib.tools.rounds",
         "ToolRounds": "retrylib.tools.rounds", "ToolCallRecord": "retrylib.tools.rounds"}


def default_debug_tool_config(timeout: float = 10.0, max_output: int = 8192,
                              tools: tuple[str, ...] = ("run_python", "check_json")) -> dict[str, Any]:
    """The ``mcpServers`` config that starts retrylib's ``run_python`` server.

    It runs with this interpreter (``sys.executable``, an absolute path: the MCP SDK gives
    the server only PATH, HOME and a few more variables).

    Args:
        timeout: seconds ``run_python`` lets code run (the server clamps it to 0.1–120).
        max_output: bytes of output it returns.
        tools: the tools it serves (``run_python``, ``check_json``): a tiny model picks better
            among fewer.

    Returns:
        ``{"mcpServers": {"run_python": {"command": ..., "args": [...]}}}``, for
        ``RetryConfig.debug_tool_mcp_config``.
    """
    return {"mcpServers": {DEBUG_SERVER_NAME: {
        "command": sys.executable,
        "args": ["-m", "retrylib.tools.run_python", "--timeout", f"{float(timeout):g}",
                 "--max-output", str(int(max_output)), "--tools", ",".join(tools)]}}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retrylib.tools' has no attribute {name!r}")


__all__ = [
    "DEBUG_SERVER_NAME",
    "ToolCallRecord",
    "ToolResult",
    "ToolRounds",
    "ToolServerError",
    "ToolSession",
    "default_debug_tool_config",
    "run_tool_rounds",
]
