"""Notebook 07 (human review): the review queue, a reviewer's view of a case, and resuming it.

With no ``store_path`` the notebook makes its own cases: real calls to the model under test
(through the fault proxy, one ``X-Chaos-Key`` each) whose answers cannot pass a made-up
ticket-code check, so each reaches the human stage and is queued in a fresh demo store.
Given a ``store_path``, it works on that store's cases instead (and makes no calls of its own).

Everything here goes through the library's own tools (``retrylib.review``): what the
notebook shows is what ``retrylib review show`` prints, in tables.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from retrylib import HumanReviewNeededError, RetryConfig, retry_with_validation
from retrylib import validators as V
from retrylib.review import (
    InvalidAnswerError,
    ReviewStore,
    SQLiteReviewStore,
    open_store,
    resolve,
    resume,
    retry,
)
from retrylib.review.actions import when
from retrylib.review.render import case_detail, cut
from workbook.experiments.core import keyed, new_key

ASK = [{"role": "user", "content": "Reply with our ticket code."}]
CODE = V.RegexMatch(r"^ZQX-\d{9}$", mode="fullmatch", description="a ticket code like ZQX-123456789")


def demo_store(results_dir: str, store_path: str | None) -> tuple[ReviewStore, bool]:
    """The store to review: ``store_path``'s (must exist), or a fresh demo store.

    Returns:
        The store and whether it is the demo one (made here, empty).
    """
    if store_path is not None:
        return open_store(store_path), False
    path = Path(results_dir) / "review_demo.db"
    for old in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):  # a fresh queue per run
        old.unlink(missing_ok=True)
    return SQLiteReviewStore(path), True


async def queue_cases(env: Any, store: ReviewStore, n: int, human_after: int,
                      max_tokens: int) -> pd.DataFrame:
    """Make ``n`` calls that reach the human stage; each is queued before its error is raised.

    Returns:
        One row per call: ``case_id``, ``key`` (its chaos key), ``attempts``, ``requests``
        (on the wire), ``last_text``, ``stored`` (the case read back from a new connection
        while the error was being handled, with its status) and ``seconds``.
    """
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        key = new_key("review")
        call = keyed(env, "chaos", key, max_tokens=max_tokens, temperature=0.0)
        cfg = RetryConfig(max_attempts=human_after + 2, max_attempts_before_human=human_after,
                          initial_delay=0.0, max_delay=0.0)
        t = time.monotonic()
        try:
            await retry_with_validation(call, ASK, [CODE], cfg, review_store=store)
            rows.append({"case_id": None, "key": key, "stored": "no human stage"})
            continue
        except HumanReviewNeededError as exc:
            fresh = SQLiteReviewStore(store.location, create=False)  # another reader
            case = fresh.get(exc.case_id) if exc.case_id else None
            rows.append({"case_id": exc.case_id, "key": key, "attempts": len(exc.attempts),
                         "requests": len(env.chaos.journal(key)), "last_text": exc.last_text,
                         "stored": case.status if case else exc.review_error,
                         "seconds": round(time.monotonic() - t, 2)})
    return pd.DataFrame(rows)


def queue_table(store: ReviewStore, status: str | None = "open") -> pd.DataFrame:
    """The queue as ``retrylib review list`` shows it (``status=None``: every case)."""
    return pd.DataFrame([{"id": c.id, "status": c.status, "created": when(c.created),
                          "model": c.model, "attempts": c.attempts, "reason": cut(c.reason, 90)}
                         for c in store.list(status)],
                        columns=["id", "status", "created", "model", "attempts", "reason"])


def case_tables(store: ReviewStore, case_id: str) -> dict[str, Any]:
    """One case as tables: ``facts`` (a dict), ``conversation``, ``attempts``, ``errors``."""
    case = store.get(case_id)
    facts = {"id": case.id, "status": case.status, "round": case.round, "model": case.model,
             "created": when(case.created), "reason": case.reason,
             "validators": ", ".join(v["name"] + ("" if v.get("spec") else " (named only)")
                                     for v in case.validators)}
    base, messages = len(case.state.get("base", [])), case.conversation()

    def part(i: int) -> str:
        if i < base:
            return "request"
        return "last answer" if i == len(messages) - 1 and case.last_text is not None else "retry exchange"

    conversation = pd.DataFrame([{"#": i + 1, "role": m["role"], "part": part(i),
                                  "content": cut(str(m.get("content")), 140)}
                                 for i, m in enumerate(messages)])
    cols = ["number", "stage", "outcome", "model", "duration", "tokens_out", "text",
            "validation_errors"]
    attempts = pd.DataFrame([{c: a.to_dict()[c] for c in cols} for a in case.attempts])
    attempts["validation_errors"] = attempts["validation_errors"].map("; ".join)
    attempts["duration"] = attempts["duration"].round(3)
    errors = pd.DataFrame({"#": range(1, len(case.validation_errors) + 1),
                           "error of the last answer": case.validation_errors})
    return {"facts": facts, "conversation": conversation, "attempts": attempts, "errors": errors}


def terminal_view(store: ReviewStore, case_id: str) -> str:
    """What ``retrylib review show <case_id>`` prints."""
    return case_detail(store.get(case_id))


def refuse(store: ReviewStore, case_id: str, answer: str, reviewer: str) -> dict[str, Any]:
    """Try to resolve ``case_id`` with an answer that fails validation.

    Returns:
        ``refused`` (an ``InvalidAnswerError`` was raised), ``errors`` and the case's
        ``status_after`` (it must still be open).
    """
    try:
        resolve(store, case_id, answer, reviewer=reviewer)
        refused, errors = False, []
    except InvalidAnswerError as exc:
        refused, errors = True, list(exc.errors)
    return {"answer": answer, "refused": refused, "errors": errors,
            "status_after": store.get(case_id).status}


async def resolve_and_resume(env: Any, store: ReviewStore, case_id: str, answer: str,
                             reviewer: str, key: str | None) -> dict[str, Any]:
    """Resolve the case with ``answer``, resume it, and count the requests on the wire.

    Returns:
        ``content``, ``attempt_numbers``, ``accepted_attempt``, ``accepted_by`` (the human
        attempt's model), ``api_calls``, ``requests_before``/``requests_after`` (journaled
        for ``key``; ``None`` without one) and ``status_after``.
    """
    before = len(env.chaos.journal(key)) if key else None
    resolve(store, case_id, answer, reviewer=reviewer)
    result = await resume(case_id, store=store, reviewer=reviewer)
    return {"case_id": case_id, "content": result.content,
            "attempt_numbers": [a.number for a in result.attempts],
            "accepted_attempt": result.accepted_attempt,
            "accepted_by": result.attempts[-1].model, "api_calls": result.metrics["api_calls"],
            "requests_before": before,
            "requests_after": len(env.chaos.journal(key)) if key else None,
            "status_after": store.get(case_id).status}


async def retry_and_resume(env: Any, store: ReviewStore, case_id: str, key: str, guidance: str,
                           reply: str, reviewer: str) -> dict[str, Any]:
    """Send the case back with ``guidance``; the resumed request is answered ``reply`` by the
    proxy (a scripted answer, so the outcome is known), and its body is read off the wire.

    Returns:
        ``content``, ``attempt_numbers``, ``requests`` (on the wire, in all), ``distinct``
        (distinct request bodies), ``extends_previous`` (the new request is the previous one
        plus the replayed answer and its feedback), ``guidance_sent`` and ``status_after``.
    """
    env.chaos.set_plan([f"reply:{reply}"], key)
    retry(store, case_id, guidance, attempts=1, reviewer=reviewer)
    result = await resume(case_id, store=store, reviewer=reviewer)  # the route: from the case
    journal = env.chaos.journal(key)
    bodies = [str(sorted(e["body"].items())) for e in journal]
    prev, last = journal[-2]["body"]["messages"], journal[-1]["body"]["messages"]
    return {"case_id": case_id, "content": result.content,
            "attempt_numbers": [a.number for a in result.attempts], "requests": len(journal),
            "distinct": len(set(bodies)), "extends_previous": last[: len(prev)] == prev,
            "guidance_sent": guidance in str(last[-1].get("content")),
            "status_after": store.get(case_id).status}


def review_log(store: ReviewStore, case_ids: list[str]) -> pd.DataFrame:
    """Every recorded review action of the cases: who, when, what."""
    rows = []
    for cid in case_ids:
        for r in store.get(cid).reviews:
            detail = r.get("answer") or r.get("guidance") or r.get("reason") or r.get("from") or ""
            rows.append({"case": cid, "action": r["action"], "by": r["by"], "at": when(r["at"]),
                         "detail": cut(str(detail), 60)})
    return pd.DataFrame(rows, columns=["case", "action", "by", "at", "detail"])


def plot_wire(done: dict[str, Any], again: dict[str, Any] | None) -> Any:
    """Requests on the wire against attempts recorded, for each resumed case: a resolved case
    adds an attempt (the reviewer's) and no request; a retried one adds one of each."""
    import matplotlib.pyplot as plt

    rows = []
    if done.get("requests_after") is not None:
        rows.append(("resolved", done["requests_after"], len(done["attempt_numbers"])))
    if again is not None:
        rows.append(("retried with guidance", again["requests"], len(again["attempt_numbers"])))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[1] for r in rows], width=0.4, label="requests the proxy received")
    ax.bar([x + 0.2 for x in xs], [r[2] for r in rows], width=0.4, label="attempts in the result")
    ax.set_xticks(list(xs), [r[0] for r in rows])
    ax.set_ylabel("count")
    ax.set_title("Resuming sends only the new requests")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
