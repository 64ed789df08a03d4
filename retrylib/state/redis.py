"""``RedisStore``: budget and breaker state shared by many processes on many machines.

Every update is one Lua script, run with ``EVALSHA`` (``EVAL`` when the server does not
know the script yet, after a restart say), so that the read, the decision and the write of
an operation cannot be split by another worker: N workers never over-spend a bucket and
never let more half-open probes through than allowed. The semantics are those of
:mod:`retrylib.state.base`, exactly as :class:`~retrylib.state.MemoryStore` implements them
(the same contract tests run on both).

Keys: ``<prefix>bucket:<key>`` and ``<prefix>breaker:<key>`` (hashes; ``prefix`` defaults to
``retrylib:``), each expiring ``ttl`` seconds after its last update (a bucket that expired
is full again, a breaker closed). Breaker times come from the Redis server's ``TIME``
unless the caller passes ``now``: one clock for every worker, whatever their own clocks say.

When Redis goes away (refused, reset, or silent past the socket timeouts: no operation
waits longer than ``connect_timeout + socket_timeout``):

- ``on_error="local"`` (the default): a warning is logged once, the operation and those that
  follow run on a process-local :class:`~retrylib.state.MemoryStore`, and Redis is tried
  again ``reconnect_after`` seconds later (an info line says when it is back). Calls go on;
  while Redis is away, each process has its own budget and breakers.
- ``on_error="raise"``: :class:`~retrylib.errors.StateStoreError`, at once (and, for
  ``reconnect_after`` seconds, without trying Redis again). In the retry loop, the call ends
  before its next attempt with :class:`~retrylib.errors.StateStoreUnavailableError` (a
  ``StateStoreError`` and a ``RetryError`` that carries the attempts made); an attempt whose
  answer came back before the update failed keeps its answer, with a note.

Needs the ``[redis]`` extra (the ``redis`` client); it is imported on first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlparse

from loguru import logger

from retrylib._extras import require
from retrylib.errors import ConfigError, StateStoreError
from retrylib.state.base import (
    MICRO,
    BreakerDecision,
    BreakerPolicy,
    StateStore,
    check_bucket_args,
    decide,
    micro,
)
from retrylib.state.memory import MemoryStore

T = TypeVar("T")

# ARGV: cost, max_tokens, threshold (micro-tokens), ttl (ms; 0: none). Returns {allowed, level}.
_SPEND = """
local top = tonumber(ARGV[2])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or top)
if level > top then level = top end
local allowed = 0
if level > tonumber(ARGV[3]) then
  level = level - tonumber(ARGV[1])
  if level < 0 then level = 0 end
  allowed = 1
end
redis.call('HSET', KEYS[1], 'level', level)
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {allowed, level}
"""

# ARGV: amount, max_tokens (micro-tokens), ttl (ms). Returns the level.
_CREDIT = """
local top = tonumber(ARGV[2])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or top)
if level > top then level = top end
level = level + tonumber(ARGV[1])
if level > top then level = top end
if level < 0 then level = 0 end
redis.call('HSET', KEYS[1], 'level', level)
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return level
"""

# ARGV: op (allow|ok|fail|state), failure_threshold, cooldown, half_open_max_calls,
# now ('' = the server's TIME), ttl (ms). Returns {state, failures, probes, probe, opened_at,
# probe_at, now}; times as strings (a Lua number would come back truncated to an integer).
_BREAKER = """
local now
if ARGV[5] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[5])
end
local h = redis.call('HMGET', KEYS[1], 's', 'f', 'o', 'p', 'pa')
local s, f = tonumber(h[1] or 0), tonumber(h[2] or 0)
local o, p, pa = tonumber(h[3] or 0), tonumber(h[4] or 0), tonumber(h[5] or 0)
local thr, cd, hmax = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if s == 1 and now >= o + cd then s = 2; p = 0; pa = 0 end
if s == 2 and p > 0 and now >= pa + cd then p = 0 end
local op, probe = ARGV[1], 0
if op == 'allow' then
  if s == 2 and p < hmax then p = p + 1; pa = now; probe = 1 end
elseif op == 'ok' then
  if s == 2 then s = 0; f = 0; p = 0 elseif s == 0 then f = 0 end
elseif op == 'fail' then
  f = f + 1
  if (s == 0 and f >= thr) or s == 2 then s = 1; o = now; p = 0 end
end
if op ~= 'state' then
  redis.call('HSET', KEYS[1], 's', s, 'f', f, 'o', string.format('%.6f', o), 'p', p,
             'pa', string.format('%.6f', pa))
  if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
end
return {s, f, p, probe, string.format('%.6f', o), string.format('%.6f', pa),
        string.format('%.6f', now)}
"""

_SCRIPTS = {name: (src, hashlib.sha1(src.encode()).hexdigest())
            for name, src in (("spend", _SPEND), ("credit", _CREDIT), ("breaker", _BREAKER))}
OnError = Literal["local", "raise"]


def _restore(spec: dict[str, Any]) -> RedisStore:
    return RedisStore(**{k: v for k, v in spec.items() if k != "kind"})


class RedisStore(StateStore):
    """Token buckets and circuit breakers in Redis, one Lua script per update.

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: put before every key.
        on_error: ``"local"`` or ``"raise"`` (see the module docstring).
        socket_timeout: seconds a command may take once connected.
        connect_timeout: seconds a connection may take to open.
        ttl: seconds a key lives after its last update; ``None``: for ever.
        reconnect_after: seconds after a failure during which Redis is not tried again
            (operations go to the local fallback, or raise at once), so that a thousand
            calls in flight do not each wait out a timeout.
        max_connections: connections per event loop; more operations in flight wait for a
            free one (that wait is never mistaken for an outage).

    Raises:
        ConfigError: a bad argument (named).
        MissingExtraError: the ``redis`` client is missing (``pip install 'retrylib[redis]'``),
            on first use.
    """

    kind: ClassVar[str] = "redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "retrylib:",
                 on_error: OnError = "local", socket_timeout: float = 1.0,
                 connect_timeout: float = 1.0, ttl: float | None = 86_400.0,
                 reconnect_after: float = 5.0, max_connections: int = 32):
        if not isinstance(url, str) or urlparse(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"RedisStore url must be redis://, rediss:// or unix://..., got {url!r}")
        if on_error not in ("local", "raise"):
            raise ConfigError(f"RedisStore on_error must be 'local' or 'raise', got {on_error!r}")
        for name, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
            if not (isinstance(value, int | float) and 0 < value < 3600):
                raise ConfigError(f"RedisStore {name} must be a number of seconds in (0, 3600): "
                                  f"without one a dead Redis could hang the call; got {value!r}")
        if ttl is not None and not (isinstance(ttl, int | float) and ttl > 0):
            raise ConfigError(f"RedisStore ttl must be > 0 seconds or None, got {ttl!r}")
        if not (isinstance(reconnect_after, int | float) and reconnect_after >= 0):
            raise ConfigError(f"RedisStore reconnect_after must be >= 0 seconds, got {reconnect_after!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ConfigError(f"RedisStore max_connections must be an integer >= 1, got {max_connections!r}")
        self.url, self.prefix, self.on_error = url, str(prefix), on_error
        self.socket_timeout, self.connect_timeout = float(socket_timeout), float(connect_timeout)
        self.ttl, self.reconnect_after = ttl, float(reconnect_after)
        self.max_connections = max_connections
        self._ttl_ms = int(ttl * 1000) if ttl else 0
        self._lock = threading.Lock()
        # One client per event loop (a redis.asyncio connection belongs to the loop it opened
        # in), with a semaphore as wide as its pool: redis-py refuses, rather than queues, an
        # operation beyond max_connections.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore]] = weakref.WeakKeyDictionary()
        self.local = MemoryStore()  # where operations go while Redis is away (on_error="local")
        self._down_until: float | None = None
        self._warned = False

    @property
    def safe_url(self) -> str:
        """The URL without its password."""
        u = urlparse(self.url)
        if u.password:
            return self.url.replace(f":{u.password}@", ":***@", 1)
        return self.url

    @property
    def degraded(self) -> bool:
        """True while operations run on the local fallback (Redis was away at the last try)."""
        return self._down_until is not None

    def __repr__(self) -> str:
        return (f"<RedisStore {self.safe_url} prefix={self.prefix!r} on_error={self.on_error!r}"
                + (" degraded" if self.degraded else "") + ">")

    def spec(self) -> dict[str, Any]:
        return {"kind": "redis", "url": self.url, "prefix": self.prefix, "on_error": self.on_error,
                "socket_timeout": self.socket_timeout, "connect_timeout": self.connect_timeout,
                "ttl": self.ttl, "reconnect_after": self.reconnect_after,
                "max_connections": self.max_connections}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self.spec(),))

    # -- the connection --------------------------------------------------------------------

    def _client(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        with self._lock:
            pair = self._clients.get(loop)
            if pair is None:
                aioredis = require("redis.asyncio", "retrylib.state.RedisStore")
                from redis.asyncio.retry import Retry
                from redis.backoff import NoBackoff

                client = aioredis.Redis.from_url(
                    self.url, socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.connect_timeout, retry_on_timeout=False,
                    retry=Retry(NoBackoff(), 0), decode_responses=True, health_check_interval=0,
                    max_connections=self.max_connections)
                pair = self._clients[loop] = (client, asyncio.Semaphore(self.max_connections))
            return pair

    async def aclose(self) -> None:
        """Close this event loop's connections (call it before the loop ends)."""
        with self._lock:
            pair = self._clients.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[0].aclose()

    async def _run(self, what: str, remote: Callable[[Any], Awaitable[T]],
                   local: Callable[[], Awaitable[T]]) -> T:
        """``remote(client)`` on Redis, or ``local()`` on the fallback when Redis is away."""
        client, slots = self._client()  # MissingExtraError without the redis client
        errors = _connection_errors()
        async with slots:
            if self._down_until is not None and time.monotonic() < self._down_until:
                return await self._while_down(what, local)
            try:
                # The socket timeouts bound each step; this bounds the whole (connect + command).
                async with asyncio.timeout(self.connect_timeout + self.socket_timeout + 0.5):
                    out = await remote(client)
            except errors as exc:
                failure: BaseException | None = exc
            else:
                failure = None
        if failure is not None:
            await self._drop_client()
            self._down_until = time.monotonic() + self.reconnect_after
            message = (f"the Redis state store at {self.safe_url} did not answer ({what}): "
                       f"{type(failure).__name__}: {failure}")
            if self.on_error == "raise":
                raise StateStoreError(message, url=self.safe_url) from failure
            if not self._warned:
                self._warned = True
                logger.warning("{}; going on with process-local budget and breaker state "
                               "(retrying Redis every {:g} s)", message, self.reconnect_after)
            return await local()
        if self._down_until is not None:
            self._down_until, self._warned = None, False
            logger.info("the Redis state store at {} answers again", self.safe_url)
        return out

    async def _while_down(self, what: str, local: Callable[[], Awaitable[T]]) -> T:
        if self.on_error == "raise":
            raise StateStoreError(f"the Redis state store at {self.safe_url} did not answer "
                                  f"less than {self.reconnect_after:g} s ago ({what} not tried)",
                                  url=self.safe_url)
        return await local()

    async def _drop_client(self) -> None:
        with self._lock:
            pair = self._clients.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            try:
                async with asyncio.timeout(0.5):
                    await pair[0].aclose()
            except Exception:  # a client on a dead socket: nothing to save
                pass

    async def _script(self, client: Any, name: str, key: str, *args: Any) -> Any:
        src, sha = _SCRIPTS[name]
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(sha, 1, key, *args)
        except NoScriptError:  # a new or restarted server: EVAL also caches the script
            return await client.eval(src, 1, key, *args)

    async def ping(self) -> bool:
        """True when Redis answers (False on the local fallback).

        Raises:
            StateStoreError: Redis did not answer and ``on_error="raise"``.
        """
        async def local() -> bool:
            return False

        return await self._run("PING", lambda c: c.ping(), local)

    # -- token buckets -------------------------------------------------------------------

    def _bucket(self, key: str) -> str:
        return f"{self.prefix}bucket:{key}"

    async def bucket_spend(self, key: str, cost: float, max_tokens: float,
                           threshold: float) -> tuple[bool, float]:
        check_bucket_args(cost, max_tokens, threshold)

        async def remote(c: Any) -> tuple[bool, float]:
            allowed, level = await self._script(c, "spend", self._bucket(key), micro(cost),
                                                micro(max_tokens), micro(threshold), self._ttl_ms)
            return bool(int(allowed)), int(level) / MICRO

        return await self._run("bucket_spend", remote,
                               lambda: self.local.bucket_spend(key, cost, max_tokens, threshold))

    async def bucket_credit(self, key: str, amount: float, max_tokens: float) -> float:
        check_bucket_args(0, max_tokens)

        async def remote(c: Any) -> float:
            level = await self._script(c, "credit", self._bucket(key), micro(amount),
                                       micro(max_tokens), self._ttl_ms)
            return int(level) / MICRO

        return await self._run("bucket_credit", remote,
                               lambda: self.local.bucket_credit(key, amount, max_tokens))

    async def bucket_level(self, key: str, max_tokens: float) -> float:
        async def remote(c: Any) -> float:
            raw = await c.hget(self._bucket(key), "level")
            top = micro(max_tokens)
            return min(top, int(float(raw)) if raw is not None else top) / MICRO

        return await self._run("bucket_level", remote,
                               lambda: self.local.bucket_level(key, max_tokens))

    # -- circuit breakers ----------------------------------------------------------------

    async def _breaker(self, op: str, key: str, policy: BreakerPolicy,
                       now: float | None) -> BreakerDecision:
        async def remote(c: Any) -> BreakerDecision:
            s, f, p, probe, o, pa, t = await self._script(
                c, "breaker", f"{self.prefix}breaker:{key}", op, policy.failure_threshold,
                repr(float(policy.cooldown)), policy.half_open_max_calls,
                "" if now is None else repr(float(now)), self._ttl_ms)
            rec = [int(s), int(f), float(o), int(p), float(pa)]
            return decide(key, rec, policy, float(t), probe=bool(int(probe)))

        async def local() -> BreakerDecision:
            if op == "allow":
                return await self.local.breaker_allow(key, policy, now)
            if op == "state":
                return await self.local.breaker_state(key, policy, now)
            return await self.local.breaker_record(key, op == "ok", policy, now)

        return await self._run(f"breaker {op}", remote, local)

    async def breaker_allow(self, key: str, policy: BreakerPolicy,
                            now: float | None = None) -> BreakerDecision:
        return await self._breaker("allow", key, policy, now)

    async def breaker_record(self, key: str, ok: bool, policy: BreakerPolicy,
                             now: float | None = None) -> BreakerDecision:
        return await self._breaker("ok" if ok else "fail", key, policy, now)

    async def breaker_state(self, key: str, policy: BreakerPolicy,
                            now: float | None = None) -> BreakerDecision:
        return await self._breaker("state", key, policy, now)

    async def clear(self) -> None:
        """Delete every key under this store's prefix (and forget the local fallback's state)."""
        async def remote(c: Any) -> None:
            batch = [k async for k in c.scan_iter(match=self.prefix + "*", count=500)]
            for i in range(0, len(batch), 500):
                await c.delete(*batch[i:i + 500])

        await self._run("clear", remote, self.local.clear)
        await self.local.clear()


def _connection_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
