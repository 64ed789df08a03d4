"""The reviewer's terminal views: the queue as a table, one case as its conversation.

Plain text (no pandas, no colours): the CLI runs on the core install, and its output goes
to terminals, logs and tickets alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from retrylib.review.actions import when
from retrylib.review.case import OPEN, Case
from retrylib.review.store import CaseSummary

_ATTEMPT_COLUMNS = ("number", "stage", "outcome", "model", "duration", "status_code", "error_type",
                    "validation_errors", "text")


def cut(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = 60) -> str:
    """An aligned text table; cells on one line, cut to ``limit`` characters."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list | tuple):
            v = "; ".join(map(str, v))
        return cut("" if v is None else str(v), limit)

    cells = [list(header)] + [[cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def case_list(cases: Sequence[CaseSummary]) -> str:
    """The queue: one row per case, oldest first."""
    if not cases:
        return "no review cases"
    rows = [[c.id, c.status, when(c.created), c.model or "", c.attempts, c.reason] for c in cases]
    return table(("id", "status", "created", "model", "attempts", "reason"), rows, limit=70)


def _content(content: Any) -> str:
    if isinstance(content, list):  # content parts: text as text, anything else by its type
        return " ".join(p.get("text", "") if p.get("type") == "text" else f"[{p.get('type')}]"
                        for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _indent(text: str, limit: int | None) -> str:
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + f"… ({len(text)} characters; --full shows all)"
    return "\n".join("    " + line for line in text.splitlines()) or "    (empty)"


def conversation(case: Case, limit: int | None = 600) -> str:
    """The call's messages so far, each failed answer labelled with its attempt number."""
    failed = [a.number for a in case.attempts if a.outcome == "validation_failed"]
    labels = iter(failed)
    base = len(case.state.get("base", []))
    lines = []
    messages = case.conversation()
    for i, m in enumerate(messages):
        role = str(m.get("role"))
        if i >= base and role == "assistant":
            label = f"assistant, attempt {next(labels, '?')}"
        elif i >= base:
            label = "feedback"
        else:
            label = role
        if i == len(messages) - 1 and case.last_text is not None and role == "assistant":
            label += ", under review" if case.status == OPEN else ", reviewed"
        lines += [f"  [{label}]", _indent(_content(m.get("content")), limit)]
    return "\n".join(lines)


def _review_line(r: dict[str, Any]) -> str:
    what = {"resolve": lambda: f"answer {cut(r.get('answer', ''), 60)!r}",
            "reject": lambda: f"reason: {r.get('reason')}",
            "retry": lambda: f"guidance {cut(r.get('guidance', ''), 60)!r}, {r.get('attempts')} attempts",
            "refused": lambda: f"answer refused: {'; '.join(r.get('errors', []))[:120]}",
            "resume": lambda: f"(was {r.get('from')})"}.get(str(r.get("action")), lambda: "")()
    return f"  {when(r.get('at'))}  {r.get('action')} by {r.get('by')} {what}".rstrip()


def case_detail(case: Case, full: bool = False) -> str:
    """One case: its facts, the conversation, the attempts, the errors and the review log."""
    later = list((case.outcome or {}).get("new_attempts") or [])
    attempts = [a.to_dict() for a in case.attempts] + later
    named = [f"{v['name']} (no spec: resume needs validators=)" if v.get("spec") is None
             else str(v["name"]) for v in case.validators]
    out = [f"case {case.id}  [{case.status}]  round {case.round}",
           f"  model:      {case.model or '-'}",
           f"  created:    {when(case.created)}   updated: {when(case.updated)}",
           f"  reason:     {case.reason}",
           f"  validators: {', '.join(named) or 'none'}"
           + ("  (declarative: rebuilt from its llm_config)" if case.llm_config else ""), "",
           "Conversation:", conversation(case, None if full else 600), "",
           "Attempts:" + (" (after the review too)" if later else ""),
           table(_ATTEMPT_COLUMNS, [[a.get(c) for c in _ATTEMPT_COLUMNS] for a in attempts],
                 limit=50), "",
           "Validation errors of the last answer:"]
    out += [f"  {i}. {e}" for i, e in enumerate(case.validation_errors, 1)] or ["  (none)"]
    if case.reviews:
        out += ["", "Review log:"] + [_review_line(r) for r in case.reviews]
    if case.outcome:
        out += ["", f"Outcome: {case.outcome.get('how')} -> "
                    f"{case.outcome.get('error') or 'accepted attempt ' + str(case.outcome.get('accepted_attempt'))}"]
    if case.status == OPEN:
        out += ["", f"Decide: retrylib review resolve {case.id} --answer FILE | approve {case.id} | "
                    f"reject {case.id} --reason TEXT | retry {case.id} --guidance TEXT"]
    return "\n".join(out)
