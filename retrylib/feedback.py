"""The re-ask: what the model is told after an answer fails validation.

After a failed attempt the conversation grows by two messages: the model's own answer (as
an ``assistant`` message) and a ``user`` message that lists every error, numbered, then the
suggestions, then the original user prompt (when the config gives one, so it stays in
context however long the exchange grows), and, from the tool stage on, the suggestion to
use the debugging tool.

``feedback_history`` decides how much of the exchange is resent: ``full`` keeps every
failed answer and its feedback; ``last`` keeps only the latest pair, which bounds the token
growth of long retry chains.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Exchange:
    """One failed attempt as it is replayed to the model: its answer and the feedback."""

    answer: str
    feedback: str


def feedback_text(
    errors: Sequence[str],
    suggestions: Sequence[str] = (),
    *,
    original_prompt: str | None = None,
    tool_name: str | None = None,
) -> str:
    """The text of the re-ask message.

    Args:
        errors: what was wrong; each one is numbered.
        suggestions: how to fix it; listed after the errors, duplicates removed.
        original_prompt: the user's original request, repeated so it stays in context.
        tool_name: from the tool stage on, the debugging tool to suggest.

    Returns:
        The message text.
    """
    # Built as one list of lines joined once ("\n" + a line makes the blank line before a
    # section), with plain loops: this runs once per failed answer, on the hot path.
    lines = ["Your previous answer did not pass validation.\n\nErrors:"]
    i = 0
    for e in errors:
        i += 1
        lines.append(f"{i}. {e}")
    if not i:
        lines.append("1. the answer was rejected")
    if suggestions:
        sugg = dict.fromkeys(s for s in suggestions if s)  # in order, duplicates removed
        if sugg:
            lines.append("\nSuggestions:")
            for s in sugg:
                lines.append(f"- {s}")
    if original_prompt:
        lines.append("\nThe original request, which still applies:")
        lines.append(original_prompt)
    if tool_name:
        lines.append(f"\nUse the debugging tool `{tool_name}` (its MCP config is attached to this "
                     "request) to find the cause before you answer again.")
    lines.append("\nReply again with a corrected answer only.")
    return "\n".join(lines)


def build_messages(
    base: Sequence[dict[str, Any]],
    history: Sequence[Exchange],
    policy: str = "full",
    flat: bool = False,
) -> list[dict[str, Any]]:
    """The messages of the next attempt: the original ones, then the replayed failures.

    Each message dict is a new copy, deep when it holds lists or dicts (content parts,
    ``tool_calls``), so a route that edits what it sends cannot reach ``base`` or a later attempt;
    ``retry_with_validation`` deep-copies the caller's messages once, up front, so nothing of
    the caller's is ever shared or mutated. (Strings are immutable: most messages cost one
    dict copy.)

    Args:
        base: the caller's messages.
        history: the failed attempts so far, oldest first.
        policy: ``full`` (every failure) or ``last`` (only the latest).
        flat: the caller knows that no message of ``base`` holds a list or a dict
            (:func:`is_flat`), so one dict copy each is enough.

    Returns:
        A new list of new dicts.
    """
    out = ([dict(m) for m in base] if flat else
           [copy.deepcopy(m) if not is_flat(m) else dict(m) for m in base])
    replay = history if policy == "full" else history[-1:]
    for ex in replay:
        # llama.cpp's server answers 500 to an assistant message whose content is None.
        out.append({"role": "assistant", "content": ex.answer or ""})
        out.append({"role": "user", "content": ex.feedback})
    return out


def is_flat(message: dict[str, Any]) -> bool:
    """No value of ``message`` is a list or a dict: a ``dict()`` copy is a full copy."""
    for v in message.values():  # a plain loop: 0.2 µs a message, against 0.46 for any(genexpr)
        if isinstance(v, _NESTED):
            return False
    return True


_NESTED = (list, dict)


def cap_text(text: str, limit: int | None) -> tuple[str, int]:
    """``text`` cut to about ``limit`` characters for replay: its head and its tail, with a
    marker between that says how much was left out. Returns ``(text, characters cut)``."""
    if limit is None or len(text) <= limit:
        return text, 0
    keep = max(limit - 60, 20)
    head, tail = text[: keep * 3 // 4], text[-(keep // 4):]
    cut = len(text) - len(head) - len(tail)
    return f"{head}\n[... {cut} characters left out of the replay ...]\n{tail}", cut
