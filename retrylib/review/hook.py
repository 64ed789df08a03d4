"""The store hook: a call at the human stage becomes a review case *before* the error is raised.

``retry_with_validation`` calls :func:`queue_case` with its loop and the
``HumanReviewNeededError`` it is about to raise. The case is written in one transaction; only
then does the error leave, carrying ``case_id``. A store that cannot be written does not
hide the error: it is raised all the same, with ``case_id=None`` and ``review_error`` saying
why (and an ERROR log line), and it still holds the whole story and pickles.

A call that was resumed and reaches the human stage again updates its own case (same id,
``round`` + 1, status ``open`` again, the review log kept) instead of opening another.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from loguru import logger

from retrylib.errors import HumanReviewNeededError
from retrylib.review.case import OPEN, Case, plain
from retrylib.review.specs import describe
from retrylib.review.store import ReviewStore, new_case_id, store_for

if TYPE_CHECKING:
    from retrylib.manager import _Loop

# Never written to a store: a secret in the clear there would outlive the call by months.
_SECRET_KEYS = {"api_key", "aws_secret_access_key", "aws_session_token", "vertex_credentials"}
_SECRET_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}


def _json_safe(value: Any) -> bool:
    try:
        return json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        return False


def _kwargs(kw: dict[str, Any], dropped: list[str], where: str) -> dict[str, Any]:
    """The keyword arguments that can be stored and passed again as they were."""
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if k in _SECRET_KEYS:
            dropped.append(f"{where}.{k} (a secret)")
        elif k == "extra_headers" and isinstance(v, dict):
            out[k] = {h: x for h, x in v.items() if h.lower() not in _SECRET_HEADERS}
            dropped += [f"{where}.extra_headers.{h} (a secret)" for h in v if h.lower() in _SECRET_HEADERS]
        elif _json_safe(v):
            out[k] = v
        else:  # stored as a repr, it would come back as a string: leave it to the resumer
            dropped.append(f"{where}.{k} (not JSON: {type(v).__name__})")
    return out


def describe_call(call: Any, call_kwargs: dict[str, Any], response_format: Any) -> dict[str, Any]:
    """What a case records of the route: enough to rebuild a ``ModelCall``, without secrets.

    Returns:
        ``kind``, ``model``, ``defaults`` (a ``ModelCall``'s), ``kwargs`` (the call's own),
        ``response_format`` and ``dropped`` (what could not be stored, and why).
    """
    from retrylib.client import ModelCall

    dropped: list[str] = []
    info: dict[str, Any] = {"kind": type(call).__name__, "model": getattr(call, "model", None),
                            "defaults": None}
    if isinstance(call, ModelCall):
        info["defaults"] = _kwargs(dict(call.defaults), dropped, "defaults")
    info["kwargs"] = _kwargs(dict(call_kwargs), dropped, "kwargs")
    if response_format is None or _json_safe(response_format):
        info["response_format"] = response_format
    else:
        info["response_format"] = None
        dropped.append(f"response_format (not JSON: {response_format!r:.80})")
    info["dropped"] = dropped
    return info


def case_from(loop: _Loop, exc: HumanReviewNeededError) -> Case:
    """The review case of ``loop``, which is raising ``exc`` (its ``metrics`` already set)."""
    state = loop.state()
    m = exc.metrics or {}
    # The validators' own calls of this leg, carried into the next one's metrics.
    state["validator_metrics"] = {"total_api_calls": m.get("validator_api_calls", 0),
                                  "tokens_in": m.get("validator_tokens_in", 0),
                                  "tokens_out": m.get("validator_tokens_out", 0),
                                  "cost": m.get("validator_cost", 0.0)}
    last_model = next((a.model for a in reversed(loop.attempts) if a.model), None)
    context = plain(exc.context)
    return Case(id=new_case_id(), reason=exc.message, state=plain(state),
                config=loop.config.model_dump(mode="json"), model=last_model or loop.call_model,
                messages=plain(exc.messages), last_response=plain(exc.last_response),
                last_text=exc.last_text, validation_errors=list(exc.validation_errors),
                validators=describe(loop.validators),
                call=describe_call(loop.call, loop.call_kwargs, loop.response_format),
                llm_config=context.get("original_llm_config"), context=context,
                metrics=plain(m))


def _reopen(case: Case, new: Case) -> None:
    """The resumed call reached the human stage again: its case takes the new state."""
    for name in ("reason", "state", "config", "model", "messages", "last_response", "last_text",
                 "validation_errors", "validators", "metrics"):
        setattr(case, name, getattr(new, name))
    if new.call.get("defaults") is not None or not case.call:
        case.call = new.call
    case.status, case.round, case.outcome = OPEN, case.round + 1, None


def queue_case(loop: _Loop, exc: HumanReviewNeededError,
               given: ReviewStore | str | None) -> None:
    """Write ``loop``'s case to its review store (if it has one) and set ``exc.case_id``.

    Never raises: a failure is recorded in ``exc.review_error`` and logged, and the caller
    raises ``exc`` as it would have.
    """
    try:
        store = store_for(given, loop.config.review_store, loop.depth)
        if store is None:
            return
        case = case_from(loop, exc)
        if loop.case_id is not None:
            store.modify(loop.case_id, lambda c: _reopen(c, case))
            case_id = loop.case_id
        else:
            case_id = store.put(case)
    except Exception as err:  # the human stage must still be reached: the error says why
        exc.review_error = f"{type(err).__name__}: {err}"
        logger.error("the review case could not be written; the error still carries it: {}",
                     exc.review_error)
        return
    exc.case_id = case_id
    exc.__dict__["_context_sink"] = _context_sink(store, case_id, exc)


def _context_sink(store: ReviewStore, case_id: str, exc: HumanReviewNeededError) -> Any:
    """Called when ``llm_call`` sets ``exc.context``: the case gets the ``llm_config``."""
    def attach(context: dict[str, Any]) -> None:
        data = plain(context)

        def change(case: Case) -> None:
            case.context = data
            case.llm_config = data.get("original_llm_config") or case.llm_config

        try:
            store.modify(case_id, change)
        except Exception as err:  # the case stays readable; only its llm_config is missing
            exc.review_error = f"llm_config not stored: {type(err).__name__}: {err}"
            logger.error("review case {}: {}", case_id, exc.review_error)

    return attach
