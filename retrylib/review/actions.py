"""What a reviewer does with an open case: resolve, approve, reject, or send it back (retry).

Each action is one atomic change of the case (:meth:`ReviewStore.modify`): it is refused,
with :class:`CaseStateError`, unless the case is ``open``, so two reviewers cannot both
decide it. Each is recorded in the case's review log with who (``reviewer=``, default the
OS user), when and how. A resolved, approved or retry case then waits for
:func:`retrylib.review.resume`, which continues the call; a rejected case is final.

``resolve`` checks the answer against the call's validators first when it can rebuild them
(``check=True``): a reviewer hears at once that an answer would be refused, and the case
stays open. ``resume`` validates it again in any case.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from retrylib.errors import ConfigError
from retrylib.review.case import (
    APPROVED,
    CLOSED,
    FAILED,
    OPEN,
    REJECTED,
    RESOLVED,
    RESUMING,
    RETRY,
    Case,
)
from retrylib.review.errors import CaseStateError, InvalidAnswerError
from retrylib.review.specs import rebuild
from retrylib.review.store import ReviewStore, open_store
from retrylib.validators.base import ValidationContext, ValidationResult
from retrylib.validators.combine import AllOf, named_errors

StoreArg = ReviewStore | str | None
_DONE = {"resolve": "resolved", "approve": "approved", "reject": "rejected", "retry": "retried"}


def reviewer_name(given: str | None = None) -> str:
    """``given``, else the OS user's name (``"unknown"`` where there is none)."""
    if given:
        return given
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers): still record something
        return "unknown"


def when(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def state_problem(case: Case, wanted: str) -> str:
    """Why ``case`` cannot be ``wanted`` (``resolved``, ``resumed``...), in one sentence."""
    last = case.reviews[-1] if case.reviews else {}
    who = f" by {last.get('by')} at {when(last.get('at'))}" if last else ""
    s, cid = case.status, case.id
    if s == OPEN:
        return (f"case {cid!r} is still open: a reviewer must resolve, approve, reject or retry "
                f"it before it can be {wanted}")
    if s == REJECTED:
        return f"case {cid!r} was rejected{who} ({last.get('reason', '')}); it cannot be {wanted}"
    if s == CLOSED:
        how = (case.outcome or {}).get("how", "")
        return f"case {cid!r} is closed: the call was resumed ({how}){who}; it cannot be {wanted}"
    if s == FAILED:
        err = (case.outcome or {}).get("error", "")
        return f"case {cid!r} failed after it was resumed ({err}){who}; it cannot be {wanted}"
    if s == RESUMING:
        return (f"case {cid!r} is being resumed{who}; it cannot be {wanted} (if that process "
                "died, resume(..., force=True) takes it over)")
    return f"case {cid!r} is already {s}{who}; it cannot be {wanted} again"


def validators_for(case: Case, given: Sequence[Any] | None = None, call: Any = None) -> list[Any]:
    """The validators to judge an answer of ``case`` with.

    ``given`` wins; a declarative case rebuilds them from its ``llm_config`` (bound to their
    routes, or to ``call``); otherwise from their registry specs.

    Raises:
        ConfigError: a validator was stored by name only, and none were given.
    """
    if given is not None:
        return list(given)
    if case.llm_config:
        from retrylib.declarative import plan

        return plan(case.llm_config, call=call)[2]
    return rebuild(case.validators, case.id)


async def check_answer(case: Case, answer: str, validators: Sequence[Any]) -> ValidationResult:
    """Judge ``answer`` as the loop would have judged the next attempt's answer."""
    if not validators:
        return ValidationResult.ok()
    v = validators[0] if len(validators) == 1 else AllOf(*validators)
    ctx = ValidationContext(attempt=len(case.state.get("attempts", [])) + 1,
                            messages=case.messages or case.conversation(), depth=0,
                            max_depth=int(case.config.get("max_validator_depth", 2)))
    r = await v.validate(answer, ctx)
    if not r.valid and not r.errors:
        r = ValidationResult(False, named_errors(v, r), r.suggestions, r.parsed, r.soft)
    return r


def _decide(store: ReviewStore, case_id: str, status: str, entry: dict[str, Any]) -> Case:
    def change(case: Case) -> None:
        if case.status != OPEN:  # checked again under the lock: another reviewer may have won
            raise CaseStateError(state_problem(case, _DONE[entry["action"]]), case.id, case.status)
        case.status = status
        case.reviews.append(entry)

    return store.modify(case_id, change)


def _open_case(store: StoreArg, case_id: str, action: str) -> tuple[ReviewStore, Case]:
    st = open_store(store)
    case = st.get(case_id)
    if case.status != OPEN:
        raise CaseStateError(state_problem(case, action), case.id, case.status)
    return st, case


def resolve(store: StoreArg, case_id: str, answer: str, *, reviewer: str | None = None,
            check: bool = True, validators: Sequence[Any] | None = None) -> Case:
    """Give the answer the model could not: ``resume`` returns it as the call's result.

    Args:
        store: the review store (a store, a path, or ``None`` for ``$RETRYLIB_REVIEW_STORE``).
        case_id: the case.
        answer: the answer text, as the model should have written it.
        reviewer: who decides (default: the OS user).
        check: validate the answer now when the validators can be rebuilt.
        validators: validate against these instead.

    Returns:
        The case as stored, status ``resolved``.

    Raises:
        CaseNotFoundError, CaseStateError: no such case, or it is not open.
        InvalidAnswerError: the answer fails the validators (the case stays open).
    """
    from retrylib.manager import run_sync

    st, case = _open_case(store, case_id, "resolved")
    checked = False
    if check:
        try:
            vs = validators_for(case, validators)
        except ConfigError:
            vs = None  # named only: resume validates against the validators it is given
        if vs is not None:
            r = run_sync(check_answer(case, answer, vs))
            if not r.valid:
                raise InvalidAnswerError(case_id, r.errors)
            checked = True
    return _decide(st, case_id, RESOLVED, {"action": "resolve", "by": reviewer_name(reviewer),
                                            "at": time.time(), "answer": answer, "checked": checked})


def approve(store: StoreArg, case_id: str, *, reviewer: str | None = None,
            note: str | None = None) -> Case:
    """Accept the last answer as it is: ``resume`` returns it, marked human-approved, with
    its validation errors as warnings.

    Raises:
        CaseNotFoundError, CaseStateError: no such case, it is not open, or it has no answer.
    """
    st, case = _open_case(store, case_id, "approved")
    if case.last_text is None:
        raise CaseStateError(f"case {case_id!r}: the last attempt produced no text; there is "
                             "nothing to approve (resolve it with an answer instead)", case_id, OPEN)
    return _decide(st, case_id, APPROVED, {"action": "approve", "by": reviewer_name(reviewer),
                                           "at": time.time(), "note": note})


def reject(store: StoreArg, case_id: str, reason: str, *, reviewer: str | None = None) -> Case:
    """Close the case without an answer; it can never be resumed.

    Raises:
        ConfigError: an empty reason.
        CaseNotFoundError, CaseStateError: no such case, or it is not open.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("reject needs a reason (--reason TEXT)")
    st, _ = _open_case(store, case_id, "rejected")
    return _decide(st, case_id, REJECTED, {"action": "reject", "by": reviewer_name(reviewer),
                                           "at": time.time(), "reason": reason})


def retry(store: StoreArg, case_id: str, guidance: str, *, attempts: int | None = None,
          reviewer: str | None = None) -> Case:
    """Send the call back to the model with the reviewer's guidance in the re-ask.

    Args:
        guidance: what the model should be told (added to the feedback on the last answer).
        attempts: how many more attempts ``resume`` may make (default: the call's
            ``max_attempts_before_human``, its patience before it asked for a human).

    Raises:
        ConfigError: empty guidance or a bad ``attempts``.
        CaseNotFoundError, CaseStateError: no such case, or it is not open.
    """
    if not isinstance(guidance, str) or not guidance.strip():
        raise ConfigError("retry needs guidance for the model (--guidance TEXT)")
    st, case = _open_case(store, case_id, "retried")
    n = attempts if attempts is not None else case.config.get("max_attempts_before_human") or 3
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        raise ConfigError(f"retry: attempts must be an integer from 1 to 1000, got {attempts!r}")
    return _decide(st, case_id, RETRY, {"action": "retry", "by": reviewer_name(reviewer),
                                        "at": time.time(), "guidance": guidance, "attempts": n})
