"""``decide``: the pure decision of the loop, covered case by case and by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from retrylib.decision import (
    ESCALATE,
    INVALID,
    OK,
    RAISE,
    REASK,
    REJECTED,
    RETRY,
    RETURN,
    TRANSPORT,
    Outcome,
    Policy,
    State,
    decide,
)

# normal at 0, constrained at 1, fallback at 2, human at 4
LADDER = Policy(max_attempts=6, thresholds=(0, 1, 2, 4), terminal=(False, False, False, True),
                max_retry_after=30.0)


def test_ok_returns():
    """A valid answer is the result."""
    assert decide(State(1, 0, 0), Outcome(OK), LADDER).action == RETURN


def test_non_retryable_raises_at_once():
    """An error retrying cannot fix ends the call, attempts left or not."""
    d = decide(State(1, 0, 0), Outcome(TRANSPORT, retryable=False), LADDER, planned=1.0)
    assert (d.action, d.reason) == (RAISE, "non_retryable")


def test_transport_retry_sleeps_the_planned_delay_or_retry_after():
    """A retryable failure retries after the backoff delay, or longer if Retry-After says so."""
    assert decide(State(1, 0, 0), Outcome(TRANSPORT), LADDER, planned=0.4) == (RETRY, 0.4, 0, 0, "", None)
    d = decide(State(1, 0, 0), Outcome(TRANSPORT, retry_after=2.0), LADDER, planned=0.4)
    assert (d.action, d.delay) == (RETRY, 2.0)
    ignore = Policy(6, (0,), (False,), respect_retry_after=False)
    assert decide(State(1, 0, 0), Outcome(TRANSPORT, retry_after=2.0), ignore, planned=0.4).delay == 0.4


def test_retry_after_beyond_the_patience_raises():
    """A server asking for more than max_retry_after ends the call with reason retry_after."""
    d = decide(State(1, 0, 0), Outcome(TRANSPORT, retry_after=31.0), LADDER)
    assert (d.action, d.reason, d.detail) == (RAISE, "retry_after", 31.0)


def test_deadline_checks():
    """A passed deadline, or a wait that would outlast it, raises with reason deadline."""
    d = decide(State(2, 0, 0), Outcome(TRANSPORT), LADDER, planned=0.1, remaining=-0.01)
    assert (d.reason, d.detail) == ("deadline", ("during", 2))
    d = decide(State(2, 0, 0), Outcome(TRANSPORT), LADDER, planned=0.5, remaining=0.4)
    assert (d.reason, d.detail) == ("deadline", ("backoff", 3, 0.5))
    d = decide(State(2, 0, 0), Outcome(INVALID), LADDER, remaining=-1.0)
    assert d.reason == "deadline"


def test_last_attempt_raises_max_attempts():
    """With no attempt left, every failure kind ends the call with max_attempts."""
    for o in (Outcome(TRANSPORT), Outcome(INVALID), Outcome(REJECTED)):
        assert decide(State(6, 0, 0), o, LADDER).reason == "max_attempts"


def test_invalid_reasks_then_escalates_then_human():
    """Failures climb the ladder: re-ask on the same stage, escalate on a threshold,
    raise human at the terminal stage."""
    assert decide(State(1, 0, 0), Outcome(INVALID), LADDER)[:4] == (ESCALATE, 0.0, 1, 1)
    assert decide(State(2, 1, 1), Outcome(INVALID), LADDER)[:4] == (ESCALATE, 0.0, 2, 2)
    assert decide(State(3, 2, 2), Outcome(INVALID), LADDER)[:4] == (REASK, 0.0, 3, 2)
    d = decide(State(4, 3, 2), Outcome(INVALID), LADDER)
    assert (d.action, d.reason, d.failures, d.stage) == (RAISE, "human", 4, 3)


def test_validation_retries_wait_only_when_asked():
    """Re-asks are immediate unless delay_validation_retries."""
    slow = Policy(6, (0,), (False,), delay_validation_retries=True)
    assert decide(State(1, 0, 0), Outcome(INVALID), slow, planned=0.7).delay == 0.7
    assert decide(State(1, 0, 0), Outcome(INVALID), LADDER, planned=0.7).delay == 0.0


def test_rejected_schema_retries_at_once_without_a_failure():
    """The route refusing the schema is not a failed answer: retry now, count nothing."""
    d = decide(State(1, 0, 1), Outcome(REJECTED), LADDER, planned=3.0)
    assert d[:4] == (RETRY, 0.0, 0, 1)


def test_fatal_invalid_outcomes_raise_their_reason():
    """An answer that could not be judged ends the call with that reason."""
    for fatal in ("deadline", "validator_error"):
        d = decide(State(1, 0, 0), Outcome(INVALID, fatal=fatal), LADDER)
        assert (d.action, d.reason) == (RAISE, fatal)


def test_outage_moves_on_when_a_model_is_left():
    """outage_after failures in a row move to the next model at once, not after a backoff."""
    p = Policy(6, (0,), (False,), outage_after=2)
    assert decide(State(1, 0, 0, 1, True), Outcome(TRANSPORT), p, planned=1.0).action == RETRY
    d = decide(State(2, 0, 0, 2, True), Outcome(TRANSPORT), p, planned=1.0)
    assert (d.action, d.delay, d.reason) == (ESCALATE, 0.0, "outage")
    assert decide(State(2, 0, 0, 2, False), Outcome(TRANSPORT), p, planned=1.0).action == RETRY


def test_a_stage_forced_on_is_never_left():
    """After an outage moved the call on (stage 2 with no failed answer yet), an invalid
    answer re-asks on that stage, not on the stage its failure count alone would reach."""
    assert LADDER.stage_for(1) == 1
    assert decide(State(2, 0, 2), Outcome(INVALID), LADDER)[:4] == (REASK, 0.0, 1, 2)
    # and it still escalates once the failures reach a later stage
    d = decide(State(5, 3, 2), Outcome(INVALID), LADDER)
    assert (d.action, d.reason, d.stage) == (RAISE, "human", 3)


outcomes = st.builds(Outcome, st.sampled_from([OK, INVALID, TRANSPORT, REJECTED]), st.booleans(),
                     st.none() | st.floats(0, 100), st.booleans(),
                     st.none() | st.sampled_from(["deadline", "validator_error"]))


@st.composite
def policies(draw):
    n = draw(st.integers(1, 4))
    ts = sorted(draw(st.lists(st.integers(1, 8), min_size=n - 1, max_size=n - 1, unique=True)))
    terminal = [False] * n
    if n > 1 and draw(st.booleans()):
        terminal[-1] = True
    return Policy(draw(st.integers(1, 10)), (0, *ts), tuple(terminal), draw(st.booleans()),
                  draw(st.floats(0, 50)), draw(st.booleans()), draw(st.none() | st.integers(1, 3)))


@given(p=policies(), o=outcomes, attempt=st.integers(1, 10), failures=st.integers(0, 8),
       planned=st.floats(0, 10), remaining=st.none() | st.floats(-1, 20),
       model_failures=st.integers(0, 4), can_move=st.booleans())
def test_decide_invariants(p, o, attempt, failures, planned, remaining, model_failures, can_move):
    """Whatever comes in: an action of the five; never another attempt past max_attempts;
    failures grow by one exactly on invalid answers; the stage never goes back; a wait is
    never negative nor past the deadline; only ok returns."""
    stage = p.stage_for(failures)
    assume(not p.terminal[stage])  # a call at the terminal stage has already ended
    d = decide(State(attempt, failures, stage, model_failures, can_move), o, p,
               planned=planned, remaining=remaining)
    assert d.action in (RETURN, RAISE, RETRY, REASK, ESCALATE)
    assert (d.action == RETURN) == (o.kind == OK)
    if d.action not in (RETURN, RAISE):
        assert attempt < p.max_attempts
        assert d.delay >= 0 and (remaining is None or d.delay < remaining)
        assert not p.terminal[d.stage]
    assert d.failures == failures + (o.kind == INVALID)
    assert d.stage >= stage
    if d.action == RAISE:
        assert d.reason in ("non_retryable", "max_attempts", "deadline", "retry_after", "human",
                            "validator_error")


def test_decide_is_pure():
    """The same inputs give the same decision, and nothing passed in changes."""
    s, o = State(2, 1, 1), Outcome(INVALID, soft=True)
    assert decide(s, o, LADDER, planned=0.2) == decide(s, o, LADDER, planned=0.2)
    assert s == State(2, 1, 1) and o == Outcome(INVALID, soft=True)


@pytest.mark.parametrize("failures,stage", [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (9, 3)])
def test_policy_stage_for(failures, stage):
    """The last stage whose threshold the failures reached."""
    assert LADDER.stage_for(failures) == stage
