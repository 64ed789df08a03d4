"""``resume``: continue a reviewed call from its recorded state, without starting over.

What the case's resolution makes of the call:

==========  =========================================================================
resolved    the reviewer's answer, validated like any other (refused with
            :class:`InvalidAnswerError` naming the errors; the case is open again), is
            the result: a new attempt ``n + 1`` of stage ``human``, ``model="human:<who>"``
approved    the last answer is the result, as it was, with its validation errors as
            ``warnings``; ``accepted_attempt`` is the attempt that wrote it
retry       the call goes on (``continue_with_validation``): the next request replays the
            last answer with its feedback and the reviewer's guidance, attempt numbers go
            on, and the reviewer's allowance of attempts starts now. Reaching the human
            stage again updates the same case (``round`` + 1)
rejected    :class:`CaseStateError`: a rejected case is never resumed
==========  =========================================================================

No request made before the review is sent again. ``result.metrics["human_review"]`` says
what was done (case, action, by, at, round). The case is claimed (status ``resuming``)
while the call goes on, so two processes cannot both resume it, then ``closed`` (or
``failed``, with the error, when the resumed call ends without an answer).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from loguru import logger

from retrylib.config import RetryConfig
from retrylib.errors import ConfigError, HumanReviewNeededError, RetryError
from retrylib.result import Attempt, RetryResult, summarize
from retrylib.review.actions import check_answer, reviewer_name, state_problem, validators_for
from retrylib.review.case import ACTION_OF, CLOSED, FAILED, OPEN, RESUMABLE, RESUMING, Case
from retrylib.review.errors import CaseStateError, InvalidAnswerError
from retrylib.review.store import ReviewStore, open_store


def _awaited(case: Case) -> tuple[str, dict[str, Any]]:
    """The status the case was resumed from and the review action it carries out."""
    status = case.status
    if status == RESUMING:  # taken over: the claim recorded where it came from
        status = next(r["from"] for r in reversed(case.reviews) if r.get("action") == "resume")
    action = ACTION_OF[status]
    entry = next(r for r in reversed(case.reviews) if r.get("action") == action)
    return status, entry


def _metrics(case: Case, attempts: list[Attempt], review: dict[str, Any],
             warnings: tuple[str, ...]) -> dict[str, Any]:
    prior = SimpleNamespace(metrics=case.state.get("validator_metrics") or {})
    # A human's answer is an attempt of the log, not an API call.
    m = summarize([a for a in attempts if a.stage != "human"], [prior], "human")
    m["accepted_with_warnings"] = bool(warnings)
    m["human_review"] = review
    return m


def _call_for(case: Case, call: Any) -> tuple[Any, Any]:
    """The route and ``response_format`` of a retried call."""
    if case.llm_config:
        from retrylib.declarative import plan

        main, _, _, _, response_format = plan(case.llm_config, call=call)
        return main, response_format
    info = case.call or {}
    if call is not None:
        return call, info.get("response_format")
    if info.get("kind") == "ModelCall" and info.get("model"):
        from retrylib.client import make_call

        return make_call(info["model"], **(info.get("defaults") or {})), info.get("response_format")
    raise ConfigError(f"case {case.id!r} was made with a {info.get('kind', 'custom')} call, which a "
                      "store cannot hold: pass call= to resume it")


async def _resolved(case: Case, entry: dict[str, Any], validators: list[Any],
                    review: dict[str, Any]) -> RetryResult:
    answer = entry["answer"]
    r = await check_answer(case, answer, validators)
    if not r.valid:
        raise InvalidAnswerError(case.id, r.errors)
    attempts = case.attempts
    end = attempts[-1].end if attempts else 0.0
    human = Attempt(number=len(attempts) + 1, start=end, end=end, outcome="ok", stage="human",
                    requests=0,
                    text=answer, model=f"human:{entry['by']}", timestamp=entry["at"],
                    note=f"the answer of reviewer {entry['by']} (review case {case.id})")
    attempts.append(human)
    return RetryResult(content=answer, response=answer, parsed=r.parsed, attempts=attempts,
                       metrics=_metrics(case, attempts, review, ()), accepted_attempt=human.number)


def _approved(case: Case, review: dict[str, Any]) -> RetryResult:
    attempts = case.attempts
    wrote = next((a.number for a in reversed(attempts) if a.text == case.last_text), None)
    warnings = tuple(case.validation_errors)
    return RetryResult(content=case.last_text or "", response=case.last_response, attempts=attempts,
                       metrics=_metrics(case, attempts, review, warnings), warnings=warnings,
                       accepted_attempt=wrote)


async def _retried(case: Case, entry: dict[str, Any], store: ReviewStore, call: Any,
                   validators: list[Any], review: dict[str, Any], **call_kwargs: Any) -> RetryResult:
    from retrylib.manager import continue_with_validation

    route, response_format = _call_for(case, call)
    allowance = int(entry["attempts"])
    made, failures = len(case.state["attempts"]), int(case.state["failures"])
    # The allowance starts now: so many more attempts, and a human again after so many more
    # failures (every other threshold is below the failures already counted).
    leg = RetryConfig(**case.config).replace(max_attempts=made + allowance,
                                             max_attempts_before_human=failures + allowance)
    kwargs = {**(case.call or {}).get("kwargs", {}), **call_kwargs}
    result = await continue_with_validation(
        route, {**case.state, "case_id": case.id}, validators, leg, response_format,
        guidance=entry["guidance"], review_store=store, **kwargs)
    result.metrics["human_review"] = review
    return result


async def resume(case_id: str, *, store: ReviewStore | str | None = None, call: Any = None,
                 validators: Sequence[Any] | None = None, reviewer: str | None = None,
                 force: bool = False, **call_kwargs: Any) -> RetryResult:
    """Continue the call of a reviewed case (see the module docstring).

    Args:
        case_id: the case (``HumanReviewNeededError.case_id``).
        store: the review store (a store, a path, or ``None`` for ``$RETRYLIB_REVIEW_STORE``).
        call: the route for a retried call (default: rebuilt from the case when it was a
            ``make_call`` route or an ``llm_call`` config); for an ``llm_call`` case, as
            ``llm_call``'s ``call=``.
        validators: judge with these (default: rebuilt from the case's specs or ``llm_config``).
        reviewer: who resumes (recorded; default the OS user).
        force: take over a case left ``resuming`` by a process that died.
        **call_kwargs: passed to every call of a retried leg (over the recorded ones).

    Returns:
        The :class:`RetryResult`: every attempt, the recorded ones first.

    Raises:
        CaseNotFoundError: no such case.
        CaseStateError: the case is open, rejected, closed, or being resumed.
        InvalidAnswerError: a resolved case's answer fails validation (the case is open again).
        ConfigError: the validators or the call cannot be rebuilt and were not given.
        HumanReviewNeededError: a retried call reached the human stage again (same ``case_id``).
        RetryError: a retried call ended without an answer otherwise (the case is ``failed``).
    """
    st = open_store(store)
    case = st.get(case_id)
    allowed = (*RESUMABLE, RESUMING) if force else RESUMABLE
    if case.status not in allowed:
        raise CaseStateError(state_problem(case, "resumed"), case.id, case.status)
    status, entry = _awaited(case)
    action = entry["action"]
    vs = [] if action == "approve" else validators_for(case, validators, call)
    by, at = reviewer_name(reviewer), time.time()

    def claim(c: Case) -> None:
        if c.status not in allowed:  # under the lock: another process may have claimed it
            raise CaseStateError(state_problem(c, "resumed"), c.id, c.status)
        c.status = RESUMING
        c.reviews.append({"action": "resume", "by": by, "at": at, "from": status})

    case = st.modify(case_id, claim)
    review = {"case_id": case_id, "action": action, "decided_by": entry["by"],
              "decided_at": entry["at"], "resumed_by": by, "resumed_at": at, "round": case.round}

    def settle(new_status: str, outcome: dict[str, Any] | None = None,
               log: dict[str, Any] | None = None) -> str | None:
        def change(c: Case) -> None:
            if c.status == RESUMING:  # a new human stage already reopened it: leave that be
                c.status, c.outcome = new_status, outcome
                if log:
                    c.reviews.append(log)

        try:
            st.modify(case_id, change)
        except Exception as err:  # the call's own outcome (result or error) matters more
            logger.error("review case {} could not be marked {}: {}", case_id, new_status, err)
            return f"{type(err).__name__}: {err}"
        return None

    try:
        if action == "resolve":
            result = await _resolved(case, entry, vs, review)
        elif action == "approve":
            result = _approved(case, review)
        else:
            result = await _retried(case, entry, st, call, vs, review, **call_kwargs)
    except InvalidAnswerError as exc:
        settle(OPEN, None, {"action": "refused", "by": by, "at": time.time(),
                            "answer": entry.get("answer"), "errors": list(exc.errors)})
        raise
    except HumanReviewNeededError as exc:
        if exc.case_id is None:  # the hook could not write: at least release the claim
            settle(status)
        raise
    except RetryError as exc:
        settle(FAILED, {"how": action, "error": type(exc).__name__, "message": str(exc)[:500],
                        "at": time.time(), "attempts": len(exc.attempts)})
        raise
    except BaseException:  # cancelled, interrupted, a bug: the case waits as it was
        settle(status)
        raise
    made = len(case.state.get("attempts", []))
    problem = settle(CLOSED, {"how": action, "at": time.time(),
                              "accepted_attempt": result.accepted_attempt,
                              "content": result.content[:5000], "attempts": len(result.attempts),
                              "new_attempts": [a.to_dict() for a in result.attempts[made:]]})
    if problem:
        review["store_error"] = problem  # the case still says resuming: resume(force=True) sees it
    return result


def resume_sync(case_id: str, **kwargs: Any) -> RetryResult:
    """The sync wrapper of :func:`resume` (same arguments, result and errors)."""
    from retrylib.manager import run_sync

    return run_sync(resume(case_id, **kwargs))
