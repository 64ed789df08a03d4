"""What one attempt came to, and what the loop does next: a pure decision.

An attempt ends in one of four tagged :class:`Outcome` kinds:

==============  ===============================================================
``OK``          the answer passed every validator
``INVALID``     an answer came back and failed validation (``errors``)
``TRANSPORT``   the call raised; ``retryable``/``retry_after`` classify it
``REJECTED``    the route refused the schema the constrained stage sent
==============  ===============================================================

:func:`decide` maps (state, outcome, policy) to one :class:`Decision`: ``RETURN``,
``RAISE`` (with a reason code), ``RETRY`` (sleep ``delay``, same stage), ``REASK`` (re-ask
after an invalid answer, same stage) or ``ESCALATE`` (re-ask on a later stage). It reads
nothing but its arguments and changes nothing: the loop (``retrylib.manager``) does what it
says. The delay is drawn by the caller (``planned``: the wait strategy's next value) and the
time left by the deadline is passed in (``remaining``), so the function stays pure.

The order of the checks, as ``retry_with_validation`` has always applied them:

- transport: not retryable → ``non_retryable``; deadline already passed → ``deadline``;
  no attempt left → ``max_attempts``; the model failed ``outage_after`` times in a row and
  a fallback model is left → ``ESCALATE`` (reason ``outage``, no wait); ``Retry-After`` beyond ``max_retry_after`` →
  ``retry_after``; the wait would outlast the deadline → ``deadline``; else ``RETRY``;
- invalid: the failure count grows; an answer that could not be judged (the deadline
  passed while validating, a validator raised) → that reason; a terminal stage (human review) reached → ``human``;
  no attempt left → ``max_attempts``; the wait would outlast the deadline → ``deadline``;
  else ``REASK`` or ``ESCALATE``;
- rejected: no attempt left → ``max_attempts``; else ``RETRY`` at once (the stage drops
  the schema; it is not a failure of the answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

OK, INVALID, TRANSPORT, REJECTED = "ok", "invalid", "transport", "rejected"
RETURN, RAISE, RETRY, REASK, ESCALATE = "return", "raise", "retry", "reask", "escalate"


class Outcome(NamedTuple):
    """What one attempt came to (see the module docstring for the kinds).

    Attributes:
        kind: ``ok``, ``invalid``, ``transport`` or ``rejected``.
        retryable: for ``transport``: the classification's verdict.
        retry_after: for ``transport``: what the server asked to wait, if anything.
        soft: for ``invalid``: only ``Soft`` checks failed.
        fatal: for ``invalid``: the answer could not be judged, and the call must end:
            ``deadline`` (it passed during validation) or ``validator_error`` (a validator
            raised).
    """

    kind: str
    retryable: bool = True
    retry_after: float | None = None
    soft: bool = False
    fatal: str | None = None


class State(NamedTuple):
    """The per-call facts a decision needs.

    Attributes:
        attempt: the number of the attempt that just ended (1-based).
        failures: validation failures before it.
        stage: the ladder index of that attempt's stage.
        model_failures: transport failures in a row on the current model, this one included.
        can_move: a further fallback model is left to move to.
    """

    attempt: int
    failures: int
    stage: int
    model_failures: int = 0
    can_move: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of ``RetryConfig`` (and of the call) that decisions read.

    Attributes:
        max_attempts: the attempt cap of this call (test mode may lower it).
        thresholds: per ladder index, the failure count that starts the stage.
        terminal: per ladder index, whether reaching it ends the call (human review).
        respect_retry_after, max_retry_after, delay_validation_retries: as in ``RetryConfig``.
        outage_after: transport failures in a row on one model that move the call to the
            next fallback model (``fallback_after_transport_failures`` with ``fallback_on``
            holding ``transport``); ``None``: never.
    """

    max_attempts: int
    thresholds: tuple[int, ...]
    terminal: tuple[bool, ...]
    respect_retry_after: bool = True
    max_retry_after: float = 60.0
    delay_validation_retries: bool = False
    outage_after: int | None = None

    def stage_for(self, failures: int) -> int:
        """The ladder index that ``failures`` failed validations reach (the last one wins)."""
        idx = 0
        for i, t in enumerate(self.thresholds):
            if failures >= t:
                idx = i
        return idx


class Decision(NamedTuple):
    """What the loop does next.

    Attributes:
        action: ``return``, ``raise``, ``retry``, ``reask`` or ``escalate``.
        delay: seconds to wait before the next attempt.
        failures: the validation-failure count after this outcome.
        stage: the ladder index of the next attempt.
        reason: for ``raise``: ``non_retryable``, ``max_attempts``, ``deadline``,
            ``retry_after``, ``human`` or ``validator_error`` (the loop's gates add
            ``breaker_open``, ``budget`` and ``cap``); for ``escalate``: ``outage`` when
            the model is down (the call moves to the next fallback model).
        detail: for ``raise``: facts for the message (the wait, the deadline, ...).
    """

    action: str
    delay: float = 0.0
    failures: int = 0
    stage: int = 0
    reason: str = ""
    detail: Any = None


def decide(state: State, outcome: Outcome, policy: Policy, *, planned: float = 0.0,
           remaining: float | None = None) -> Decision:
    """The next step of a call, from what its last attempt came to.

    Args:
        state: the call before this outcome.
        outcome: what the attempt came to.
        policy: the configuration's rules.
        planned: the wait strategy's delay for the next retry (used for transport failures,
            and for every retry with ``delay_validation_retries``).
        remaining: seconds until the deadline (``None``: no deadline).

    Returns:
        The :class:`Decision`.
    """
    kind, n, failures, stage = outcome.kind, state.attempt, state.failures, state.stage
    if kind == OK:
        return Decision(RETURN, failures=failures, stage=stage)
    if kind == TRANSPORT:
        if not outcome.retryable:
            return Decision(RAISE, failures=failures, stage=stage, reason="non_retryable")
        if remaining is not None and remaining <= 0:
            return Decision(RAISE, failures=failures, stage=stage, reason="deadline",
                            detail=("during", n))
        if n >= policy.max_attempts:
            return Decision(RAISE, failures=failures, stage=stage, reason="max_attempts")
        if policy.outage_after is not None and state.can_move \
                and state.model_failures >= policy.outage_after:
            # The model is down: the next fallback model, at once (its server is another one).
            return Decision(ESCALATE, 0.0, failures, stage, reason="outage")
        wait = planned
        ra = outcome.retry_after
        if ra is not None and policy.respect_retry_after:
            if ra > policy.max_retry_after:
                return Decision(RAISE, failures=failures, stage=stage, reason="retry_after",
                                detail=ra)
            wait = max(wait, ra)
        return _after_wait(RETRY, wait, failures, stage, n, remaining)
    if kind == REJECTED:
        if n >= policy.max_attempts:
            return Decision(RAISE, failures=failures, stage=stage, reason="max_attempts")
        wait = planned if policy.delay_validation_retries else 0.0
        return _after_wait(RETRY, wait, failures, stage, n, remaining)
    # INVALID
    failures += 1
    if outcome.fatal:
        return Decision(RAISE, failures=failures, stage=stage, reason=outcome.fatal)
    nxt = policy.stage_for(failures)
    if nxt < stage:  # a stage forced on (an outage moved the call on) is never left
        nxt = stage
    if policy.terminal[nxt]:
        return Decision(RAISE, failures=failures, stage=nxt, reason="human")
    if n >= policy.max_attempts:
        return Decision(RAISE, failures=failures, stage=nxt, reason="max_attempts")
    wait = planned if policy.delay_validation_retries else 0.0
    return _after_wait(ESCALATE if nxt != stage else REASK, wait, failures, nxt, n, remaining)


def _after_wait(action: str, wait: float, failures: int, stage: int, n: int,
                remaining: float | None) -> Decision:
    if remaining is not None and wait >= remaining:
        return Decision(RAISE, failures=failures, stage=stage, reason="deadline",
                        detail=("backoff", n + 1, wait))
    return Decision(action, wait, failures, stage)
