"""Backoff schedules: the formula, the jitter kinds, the bounds, the seed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrylib import Backoff, RetryConfig, backoff_schedule
from retrylib.backoff import base_delay

configs = st.builds(
    lambda init, factor, cap, jitter, seed, n: RetryConfig(
        max_attempts=n, initial_delay=min(init, cap), backoff_factor=factor, max_delay=cap,
        jitter=jitter, seed=seed),
    init=st.floats(0, 50, allow_nan=False),
    factor=st.floats(1, 10, allow_nan=False),
    cap=st.floats(0, 100, allow_nan=False),
    jitter=st.sampled_from(["none", "full", "equal", "decorrelated"]),
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
)


@given(configs)
@settings(max_examples=300, deadline=None)
def test_every_delay_within_bounds(config):
    """Whatever the knobs, every delay lies in [0, max_delay]."""
    for d in backoff_schedule(config):
        assert 0.0 <= d <= config.max_delay


@given(configs)
@settings(max_examples=100, deadline=None)
def test_same_seed_same_schedule(config):
    """The same seed and key give the same schedule, and the loop's Backoff draws exactly it."""
    schedule = backoff_schedule(config, key="call-1")
    assert schedule == backoff_schedule(config, key="call-1")
    b = Backoff(config, key="call-1")
    assert [next(b) for _ in schedule] == schedule


@given(configs)
@settings(max_examples=100, deadline=None)
def test_schedule_length(config):
    """One delay per retry: max_attempts - 1."""
    assert len(backoff_schedule(config)) == config.max_attempts - 1


def test_no_jitter_is_the_formula():
    """Without jitter, d_n = min(max_delay, initial * factor**(n-1))."""
    c = RetryConfig(max_attempts=7, initial_delay=0.5, backoff_factor=2, max_delay=10, jitter="none")
    assert backoff_schedule(c) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


def test_full_and_equal_jitter_ranges():
    """Full jitter draws U(0, d); equal jitter draws d/2 + U(0, d/2)."""
    full = RetryConfig(max_attempts=200, initial_delay=1, backoff_factor=1, max_delay=1, jitter="full", seed=3)
    equal = full.replace(jitter="equal")
    fs, es = backoff_schedule(full), backoff_schedule(equal)
    assert min(fs) < 0.1 and max(fs) > 0.9  # spans the whole range
    assert all(0.5 <= d <= 1.0 for d in es) and min(es) < 0.55


def test_decorrelated_grows_from_previous():
    """Decorrelated jitter stays within [initial, 3 * previous] and under the cap."""
    c = RetryConfig(max_attempts=50, initial_delay=0.1, max_delay=5, jitter="decorrelated", seed=11)
    prev = c.initial_delay
    for d in backoff_schedule(c):
        assert c.initial_delay <= d <= min(c.max_delay, 3 * prev) + 1e-12
        prev = d


def test_different_seeds_differ():
    """Two seeds give two different jittered schedules."""
    c = RetryConfig(max_attempts=6, initial_delay=1, max_delay=30, jitter="full", seed=1)
    assert backoff_schedule(c, key=0) != backoff_schedule(c.replace(seed=2), key=0)


def test_huge_attempt_numbers_do_not_overflow():
    """2**10000 does not fit in a float; the cap applies instead of an OverflowError."""
    c = RetryConfig(max_attempts=10_000, initial_delay=1, backoff_factor=2, max_delay=7, jitter="none")
    assert base_delay(c, 10_000) == 7
    assert backoff_schedule(c, retries=3) == [1, 2, 4]


@pytest.mark.parametrize("jitter", ["none", "full", "equal", "decorrelated"])
def test_zero_delays(jitter):
    """initial_delay = 0 means no waiting at all, for every jitter kind."""
    c = RetryConfig(max_attempts=5, initial_delay=0, max_delay=0, jitter=jitter, seed=1)
    assert backoff_schedule(c) == [0.0] * 4


# -- a shared seed does not synchronise calls (issue 16, item 9) -------------------------------

async def test_200_calls_sharing_a_seed_draw_200_delays(no_sleeps):
    """200 concurrent calls with seed=7, each 503 then ok: their first retry delays all differ."""
    import asyncio

    from retrylib import retry_with_validation
    from retrylib.testing import ScriptedCall, http_error

    cfg = RetryConfig(max_attempts=3, initial_delay=1.0, max_delay=10.0, jitter="full", seed=7)
    calls = [ScriptedCall([http_error(503), "ok"]) for _ in range(200)]
    results = await asyncio.gather(*(retry_with_validation(c, [{"role": "user", "content": "hi"}],
                                                           config=cfg) for c in calls))
    delays = [r.attempts[1].scheduled_delay for r in results]
    assert all(r.content == "ok" for r in results)
    assert len(set(delays)) >= 195, f"{len(set(delays))} distinct delays among 200 calls"


def test_keys_without_a_key_are_fresh_and_recorded():
    """Backoffs without a key take different keys (and schedules); that key reproduces one."""
    c = RetryConfig(max_attempts=6, initial_delay=1, max_delay=30, jitter="full", seed=7)
    a, b = Backoff(c), Backoff(c)
    assert a.key != b.key and a.key is not None
    first = [next(a) for _ in range(5)]
    assert first != [next(b) for _ in range(5)]
    assert backoff_schedule(c, key=a.key) == first  # the recorded key gives the schedule back


def test_same_key_in_another_process_gives_the_same_schedule():
    """A string key and a seed give the same delays in a fresh interpreter (no hash seed)."""
    import json
    import os
    import subprocess
    import sys

    c = RetryConfig(max_attempts=5, initial_delay=1, max_delay=30, jitter="decorrelated", seed=3)
    code = ("import json; from retrylib import RetryConfig, backoff_schedule; "
            "print(json.dumps(backoff_schedule(RetryConfig(max_attempts=5, initial_delay=1, "
            "max_delay=30, jitter='decorrelated', seed=3), key='order-42')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout) == backoff_schedule(c, key="order-42")
    assert backoff_schedule(c, key="order-42") != backoff_schedule(c, key="order-43")


def test_without_a_seed_the_key_does_not_fix_the_schedule():
    """No seed: the same key still draws fresh delays each time (the key only mixes a seed)."""
    c = RetryConfig(max_attempts=6, initial_delay=1, max_delay=30, jitter="full")
    assert backoff_schedule(c, key="k") != backoff_schedule(c, key="k")


def test_a_dask_batch_draws_its_call_keys_where_it_is_split():
    """run_batch_dask's items get distinct keys in the driver (a key given is kept), so the
    workers' own counters, which start at the same number in every process, are not used:
    two processes with seed=7 drew the same delays for their first calls."""
    import json
    import subprocess
    import sys

    from retrylib.batch import keyed

    code = ("import json; from retrylib import RetryConfig; from retrylib.backoff import Backoff; "
            "c = RetryConfig(max_attempts=3, initial_delay=1, max_delay=30, jitter='full', seed=7); "
            "print(json.dumps([next(Backoff(c)) for _ in range(3)]))")
    two = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                     text=True, check=True).stdout) for _ in range(2)]
    assert two[0] == two[1]  # why keys must come from one place
    items = keyed([(0, {"messages": []}), (1, {"messages": [], "call_key": "mine"}),
                   (2, {"messages": []})])
    keys = [kw["call_key"] for _, kw in items]
    assert keys[1] == "mine" and len(set(keys)) == 3 and all(k is not None for k in keys)
