"""retrylib.state: the same contract on the in-process store and on a real redis-server;
atomic spends across OS processes; Redis going away mid-run; specs and pickling; RedisServer.

Every Redis here is a real ``redis-server`` on 127.0.0.1 (``retrylib.testing.RedisServer``).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from retrylib.errors import ConfigError, ServerStartError, StateStoreError
from retrylib.state import BreakerPolicy, MemoryStore, RedisStore, StateStore, from_spec
from retrylib.testing.redis import RedisServer, ping

POLICY = BreakerPolicy(failure_threshold=3, cooldown=10.0, half_open_max_calls=1)


@pytest.fixture(params=["memory", "redis"])
def store(request) -> StateStore:
    """Each contract test runs on both backends (Redis: a fresh server, a fresh prefix)."""
    if request.param == "memory":
        return MemoryStore()
    server = request.getfixturevalue("redis_server")
    return RedisStore(server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", on_error="raise")


# -- token buckets ---------------------------------------------------------------------------


async def test_a_fresh_bucket_is_full_and_spends_down_to_its_threshold(store):
    """A new bucket holds max_tokens; spends are granted while the level is above the
    threshold, and a refused spend leaves the level as it was."""
    assert await store.bucket_level("k", 10) == 10.0
    results = [await store.bucket_spend("k", 1, 10, 5) for _ in range(7)]
    assert results == [(True, 9.0), (True, 8.0), (True, 7.0), (True, 6.0), (True, 5.0),
                       (False, 5.0), (False, 5.0)]
    assert await store.bucket_level("k", 10) == 5.0


async def test_credits_are_exact_and_capped(store):
    """Ten credits of 0.1 give back exactly one token, and the level never passes max_tokens."""
    await store.bucket_spend("k", 1, 10, 5)
    for _ in range(10):
        level = await store.bucket_credit("k", 0.1, 10)
    assert level == 10.0
    assert await store.bucket_credit("k", 0.1, 10) == 10.0


async def test_the_level_never_goes_below_zero(store):
    """A cost larger than the level empties the bucket, and a negative credit stops at 0."""
    assert await store.bucket_spend("k", 25, 10, 0) == (True, 0.0)
    assert await store.bucket_spend("k", 1, 10, 0) == (False, 0.0)
    assert await store.bucket_credit("j", -50, 10) == 0.0


async def test_a_smaller_max_clamps_the_level(store):
    """A bucket read with a smaller max_tokens than it was filled with reports at most that."""
    await store.bucket_spend("k", 1, 10, 5)  # level 9
    assert await store.bucket_level("k", 4) == 4.0
    assert await store.bucket_spend("k", 1, 4, 2) == (True, 3.0)


async def test_buckets_are_independent(store):
    """Spending one key leaves another full."""
    await store.bucket_spend("a", 3, 10, 5)
    assert await store.bucket_level("b", 10) == 10.0
    assert await store.bucket_level("a", 10) == 7.0


async def test_bad_bucket_arguments_are_config_errors(store):
    """A negative cost, a non-positive size or a threshold outside [0, max) is refused by name."""
    with pytest.raises(ConfigError, match="cost"):
        await store.bucket_spend("k", -1, 10, 5)
    with pytest.raises(ConfigError, match="max_tokens"):
        await store.bucket_spend("k", 1, 0, 0)
    with pytest.raises(ConfigError, match="threshold"):
        await store.bucket_spend("k", 1, 10, 10)


async def test_clear_forgets_everything(store):
    """After clear(), buckets are full and breakers closed again."""
    await store.bucket_spend("k", 4, 10, 5)
    for _ in range(3):
        await store.breaker_record("m", False, POLICY, now=1.0)
    await store.clear()
    assert await store.bucket_level("k", 10) == 10.0
    assert (await store.breaker_state("m", POLICY, now=1.0)).state == "closed"


# -- circuit breakers --------------------------------------------------------------------------


async def test_consecutive_failures_open_the_breaker(store):
    """failure_threshold consecutive failures open it; a success in between resets the count."""
    await store.breaker_record("m", False, POLICY, now=0.0)
    await store.breaker_record("m", False, POLICY, now=0.0)
    d = await store.breaker_record("m", True, POLICY, now=0.0)
    assert (d.state, d.failures) == ("closed", 0)
    for _ in range(2):
        d = await store.breaker_record("m", False, POLICY, now=1.0)
        assert d.state == "closed"
    d = await store.breaker_record("m", False, POLICY, now=1.0)
    assert (d.state, d.failures, d.allowed) == ("open", 3, False)


async def test_an_open_breaker_refuses_until_its_cooldown_passes(store):
    """Open: refused with the time left; at the end of the cooldown one probe goes, the next
    request is refused while the probe is out."""
    for _ in range(3):
        await store.breaker_record("m", False, POLICY, now=100.0)
    d = await store.breaker_allow("m", POLICY, now=104.0)
    assert (d.state, d.allowed, d.retry_in) == ("open", False, pytest.approx(6.0))
    probe = await store.breaker_allow("m", POLICY, now=110.0)
    assert (probe.state, probe.allowed, probe.probe) == ("half_open", True, True)
    second = await store.breaker_allow("m", POLICY, now=110.5)
    assert (second.state, second.allowed, second.probe) == ("half_open", False, False)


async def test_a_probe_decides(store):
    """A probe's success closes the breaker; a probe's failure re-opens it for a new cooldown."""
    for key, ok, expected in (("a", True, "closed"), ("b", False, "open")):
        for _ in range(3):
            await store.breaker_record(key, False, POLICY, now=0.0)
        assert (await store.breaker_allow(key, POLICY, now=10.0)).probe
        d = await store.breaker_record(key, ok, POLICY, now=11.0)
        assert d.state == expected
    d = await store.breaker_allow("b", POLICY, now=20.0)  # reopened at 11: closed until 21
    assert (d.state, d.allowed, d.retry_in) == ("open", False, pytest.approx(1.0))


async def test_half_open_lets_through_exactly_its_probe_count(store):
    """With half_open_max_calls=3, three probes go and the fourth request waits."""
    policy = BreakerPolicy(1, 5.0, 3)
    await store.breaker_record("m", False, policy, now=0.0)
    got = [(await store.breaker_allow("m", policy, now=5.0)).allowed for _ in range(4)]
    assert got == [True, True, True, False]


async def test_an_abandoned_probe_is_forgotten_after_a_cooldown(store):
    """A probe that never reports (its worker died) does not keep the breaker stuck."""
    for _ in range(3):
        await store.breaker_record("m", False, POLICY, now=0.0)
    assert (await store.breaker_allow("m", POLICY, now=10.0)).probe
    assert not (await store.breaker_allow("m", POLICY, now=19.0)).allowed
    assert (await store.breaker_allow("m", POLICY, now=20.0)).probe


async def test_state_reads_without_taking_a_probe(store):
    """state() reports half-open after the cooldown, and the probe is still there to take."""
    for _ in range(3):
        await store.breaker_record("m", False, POLICY, now=0.0)
    for _ in range(3):
        d = await store.breaker_state("m", POLICY, now=10.0)
        assert (d.state, d.allowed) == ("half_open", True)
    assert (await store.breaker_allow("m", POLICY, now=10.0)).probe


async def test_an_open_breaker_ignores_late_successes(store):
    """A success that arrives while open (a request sent before it opened) does not close it."""
    for _ in range(3):
        await store.breaker_record("m", False, POLICY, now=0.0)
    d = await store.breaker_record("m", True, POLICY, now=1.0)
    assert (d.state, d.allowed) == ("open", False)


async def test_the_stores_own_clock_runs(store):
    """With now=None the store's clock is used (monotonic / the Redis server's TIME): an open
    breaker reports a retry_in within its cooldown, and becomes half-open once it passes."""
    policy = BreakerPolicy(1, 0.05, 1)
    d = await store.breaker_record("m", False, policy)
    assert d.state == "open" and 0 < d.retry_in <= 0.05 + 1e-9
    deadline = time.monotonic() + 10
    while (await store.breaker_state("m", policy)).state == "open":
        assert time.monotonic() < deadline, "the store's clock did not move"
        await asyncio.sleep(0.01)
    assert (await store.breaker_allow("m", policy)).probe


# -- atomicity across OS processes -----------------------------------------------------------


def _spender(url: str, prefix: str, rounds: int, credit_every: int, start, out) -> None:
    """One worker process: ``rounds`` spends (and a credit every ``credit_every`` rounds)."""
    async def run() -> tuple[int, int]:
        store = RedisStore(url, prefix=prefix, on_error="raise")
        granted = credits = 0
        for i in range(rounds):
            allowed, _ = await store.bucket_spend("shared", 1, 10, 5)
            granted += allowed
            if credit_every and i % credit_every == 0:
                await store.bucket_credit("shared", 0.1, 10)
                credits += 1
        await store.aclose()
        return granted, credits

    start.wait()
    out.put(asyncio.run(run()))


def _race(url: str, prefix: str, n: int, rounds: int, credit_every: int) -> list[tuple[int, int]]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_spender, args=(url, prefix, rounds, credit_every, start, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every worker import and wait at the start line
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results


@pytest.mark.timeout(180)
async def test_processes_spending_one_bucket_never_over_spend(redis_server):
    """4 spawned processes × 300 spends on one Redis bucket of 10 (threshold 5): exactly 5
    are granted in all, as the arithmetic says."""
    results = await asyncio.to_thread(_race, redis_server.url, "race1:", 4, 300, 0)
    assert sum(g for g, _ in results) == 5
    assert await RedisStore(redis_server.url, prefix="race1:").bucket_level("shared", 10) == 5.0


@pytest.mark.timeout(180)
async def test_processes_spending_and_crediting_stay_within_the_bound(redis_server):
    """With credits interleaved, the grants never exceed what the tokens allow:
    granted = 10 - final level + credits applied ≤ 10 - final + 0.1 × credits."""
    results = await asyncio.to_thread(_race, redis_server.url, "race2:", 4, 300, 3)
    granted, credits = sum(g for g, _ in results), sum(c for _, c in results)
    final = await RedisStore(redis_server.url, prefix="race2:").bucket_level("shared", 10)
    assert granted > 5  # the credits did allow more than the first five
    assert granted <= 10 - final + 0.1 * credits + 1e-9
    assert 4.0 <= final <= 10.0


async def test_more_operations_in_flight_than_connections_wait_their_turn(redis_server):
    """1,000 concurrent spends on a store with 4 connections all get an answer from Redis
    (none is refused as "too many connections", none falls back): exactly 5 are granted."""
    store = RedisStore(redis_server.url, on_error="raise", max_connections=4)
    results = await asyncio.gather(*(store.bucket_spend("k", 1, 10, 5) for _ in range(1000)))
    assert sum(allowed for allowed, _ in results) == 5
    assert not store.degraded
    await store.aclose()


# -- Redis goes away ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_killed_redis_falls_back_to_local_state_with_one_warning(redis_server, warnings_logged):
    """on_error="local": after a SIGKILL the operations go on in process-local state, and the
    warning is logged once, however many operations follow."""
    store = RedisStore(redis_server.url, on_error="local", reconnect_after=60)
    assert await store.bucket_spend("k", 3, 10, 5) == (True, 7.0)
    redis_server.kill()
    assert await store.bucket_spend("k", 1, 10, 5) == (True, 9.0)  # a fresh local bucket
    for _ in range(5):
        await store.bucket_spend("k", 1, 10, 5)
        await store.breaker_record("m", False, POLICY)
    assert store.degraded
    assert await store.bucket_level("k", 10) == 5.0
    assert (await store.breaker_state("m", POLICY)).state == "open"
    assert len(warnings_logged) == 1
    assert "did not answer" in warnings_logged[0] and redis_server.url in warnings_logged[0]


@pytest.mark.timeout(30)
async def test_a_store_goes_back_to_redis_when_it_returns(redis_server, warnings_logged):
    """Once Redis answers again, the store uses it again (and a later outage warns again)."""
    store = RedisStore(redis_server.url, on_error="local", reconnect_after=0)
    await store.bucket_spend("k", 2, 10, 5)
    redis_server.kill()
    await store.bucket_spend("k", 1, 10, 5)
    assert store.degraded
    redis_server.start()  # same port, empty (no persistence)
    assert await store.bucket_spend("k", 1, 10, 5) == (True, 9.0)
    assert not store.degraded and await store.ping()
    redis_server.kill()
    await store.bucket_level("k", 10)
    assert len(warnings_logged) == 2


@pytest.mark.timeout(30)
async def test_killed_redis_raises_a_clear_error(redis_server):
    """on_error="raise": the next operation raises StateStoreError naming the store."""
    store = RedisStore(redis_server.url, on_error="raise")
    await store.bucket_spend("k", 1, 10, 5)
    redis_server.kill()
    for op in (store.bucket_spend("k", 1, 10, 5), store.breaker_allow("m", POLICY)):
        with pytest.raises(StateStoreError, match="did not answer") as info:
            await op
        assert info.value.url == redis_server.url


@pytest.mark.timeout(30)
async def test_a_hung_redis_does_not_hang_the_caller(redis_server):
    """A Redis that accepts and never answers (SIGSTOP) ends in StateStoreError after the
    socket timeout ("raise"), or in the local fallback ("local"): never a hang."""
    raising = RedisStore(redis_server.url, on_error="raise", socket_timeout=0.3, connect_timeout=0.3)
    local = RedisStore(redis_server.url, on_error="local", socket_timeout=0.3, connect_timeout=0.3)
    await raising.bucket_level("k", 10)
    await local.bucket_level("k", 10)  # both connected before the server stops answering
    redis_server.pause()
    try:
        with pytest.raises(StateStoreError):
            await raising.bucket_spend("k", 1, 10, 5)
        assert await local.bucket_spend("k", 1, 10, 5) == (True, 9.0)
        assert local.degraded
    finally:
        redis_server.resume()


@pytest.mark.timeout(30)
async def test_an_unreachable_redis_from_the_start():
    """A store pointed at a port nothing listens on raises ("raise") or runs locally ("local")."""
    with RedisServer() as srv:
        url = srv.url
    with pytest.raises(StateStoreError):
        await RedisStore(url, on_error="raise").ping()
    assert await RedisStore(url, on_error="local").ping() is False


# -- specs, pickling, configuration --------------------------------------------------------------


async def test_a_redis_store_pickles_as_its_spec_and_shares_the_server(redis_server):
    """A pickled RedisStore is rebuilt against the same server: it sees the same buckets."""
    store = RedisStore(redis_server.url, prefix="p:", on_error="raise", socket_timeout=2.0, ttl=60)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.spec() == store.spec() and copy is not store
    await store.bucket_spend("k", 4, 10, 5)
    assert await copy.bucket_level("k", 10) == 6.0
    assert await from_spec(store.spec()).bucket_level("k", 10) == 6.0


async def test_keys_live_under_the_prefix_and_expire(redis_server):
    """Keys are <prefix>bucket:<key> / <prefix>breaker:<key>, with the ttl set on each update."""
    import redis.asyncio as aioredis

    store = RedisStore(redis_server.url, prefix="app1:", ttl=120)
    await store.bucket_spend("openai/x", 1, 10, 5)
    await store.breaker_record("openai/x", False, POLICY)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = sorted(await client.keys("*"))
    ttls = [await client.ttl(k) for k in keys]
    await client.aclose()
    assert keys == ["app1:breaker:openai/x", "app1:bucket:openai/x"]
    assert all(0 < t <= 120 for t in ttls)


async def test_a_memory_store_pickles_as_a_fresh_one():
    """Memory cannot be shared with another process: a pickled MemoryStore starts empty."""
    store = MemoryStore()
    await store.bucket_spend("k", 4, 10, 5)
    copy = pickle.loads(pickle.dumps(store))
    assert await copy.bucket_level("k", 10) == 10.0
    assert isinstance(from_spec(None), MemoryStore) and from_spec(store) is store


@pytest.mark.parametrize("kwargs, field", [
    ({"url": "http://127.0.0.1:6379"}, "url"),
    ({"on_error": "ignore"}, "on_error"),
    ({"socket_timeout": None}, "socket_timeout"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"ttl": -1}, "ttl"),
])
def test_bad_redis_store_arguments_are_config_errors(kwargs, field):
    """Each bad argument is refused with a ConfigError that names it."""
    with pytest.raises(ConfigError, match=field):
        RedisStore(**kwargs)


def test_an_unknown_spec_is_a_config_error():
    """from_spec names what it got when the kind is unknown."""
    with pytest.raises(ConfigError, match="kind must be"):
        from_spec({"kind": "etcd"})


def test_the_password_stays_out_of_repr_and_errors():
    """A URL's password is masked in repr and safe_url (the spec keeps it, to reconnect)."""
    store = RedisStore("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(store) and "s3cret" not in store.safe_url
    assert "s3cret" in store.spec()["url"]


# -- the RedisServer testing tool -------------------------------------------------------------


def test_a_missing_binary_is_named():
    """RedisServer says which binary it looked for and how to install it."""
    with pytest.raises(ServerStartError, match=r"redis-server not found.*apt-get install"):
        RedisServer(binary="/nonexistent/redis-server").start()


def test_kill_then_start_brings_it_back_on_the_same_port():
    """kill() stops it at once; start() serves again on the port clients know."""
    with RedisServer() as srv:
        port = srv.port
        srv.kill()
        assert not ping(srv.host, port) and not srv.running
        srv.start()
        assert srv.port == port and ping(srv.host, port)
    assert not ping("127.0.0.1", port)


@pytest.mark.timeout(60)
def test_no_redis_outlives_a_killed_owner():
    """A process that started a RedisServer and was SIGKILLed leaves no redis-server behind."""
    script = textwrap.dedent("""
        import sys, time
        from retrylib.testing.redis import RedisServer
        srv = RedisServer().start()
        print(srv.port, srv.pid, flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    port, pid = map(int, owner.stdout.readline().split())
    assert ping("127.0.0.1", port)
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    deadline = time.monotonic() + 20
    while _alive(pid):
        assert time.monotonic() < deadline, f"redis-server {pid} outlived its owner"
        time.sleep(0.05)
    assert not ping("127.0.0.1", port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by its parent) counts as gone, and so does a process that was
    # reaped between the kill(0) above and this read.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
