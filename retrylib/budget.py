"""One retry budget for every extra request of a call, and a per-call cap on tokens and cost.

:class:`RetryBudget` is gRPC's retry throttling (proposal A6) over a shared token bucket:

- one bucket per key: the model (``key="model"``, the default), the route (``"route"``: the
  ``api_base``, else the provider prefix), any fixed name, or ``key(model, api_base) -> str``;
- a bucket holds ``max_tokens`` (default 100) and starts full;
- an *extra* request (a transport retry, a re-ask after invalid output, a fallback call, the
  calls an ``LLMJudge`` makes) asks :meth:`RetryBudget.allow` first. It is granted only
  while the level is above ``threshold`` (``max_tokens / 2``), and then costs ``retry_cost``
  (default 1) tokens; a refused request costs nothing;
- every success (a valid answer) gives back ``token_ratio`` tokens (default 0.5), up to
  ``max_tokens`` (:meth:`RetryBudget.record`);
- the first attempt of a call never asks, so it is never refused.

The check and the debit are one atomic step of the :class:`~retrylib.state.StateStore`
(one Lua script on Redis), so N workers sharing a bucket cannot over-spend it. That is the
one difference from A6, which debits on every failure and tests the level before retrying:
here the token of a failure is taken when the failure asks for its retry. A failure after
which no retry is wanted (the last attempt, a non-retryable error) costs nothing, so during
an outage the level rests at the threshold instead of draining to 0, and after it the first
success already allows one retry (1 per ``1 / token_ratio`` successes from then on).

What it bounds: at 100 % upstream failure, ``C`` calls send ``C`` first attempts plus
``(max_tokens - threshold) / retry_cost`` retries in all (50 with the defaults), wherever the
calls run; so requests ÷ calls tends to 1 (at most 1.2 from 250 calls on). At a steady
failure rate ``p`` the bucket drifts by ``(1 - p) * token_ratio - p * retry_cost`` per
request: it breaks even at ``p = token_ratio / (token_ratio + retry_cost)``, 33 % with the
defaults (A6's 0.1: 9 %); above that, some retries are refused.

Size the bucket to the calls in flight: the successes of a wave arrive while the bucket is
full (their credit is lost), so its spendable half must cover the failures of one wave on
its own. Measured (``benchmarks/amplification.py``: 1,000 calls, 50 in flight per process,
in 1 process and in 4 sharing one Redis bucket): at 10 % failure, ``max_tokens=100,
token_ratio=0.5`` changed no call's outcome; ``(10, 0.5)`` refused 7 calls with 200 in
flight, and A6's own ``(10, 0.1)`` 14 (1 process) and 23 (4). At 100 % failure the
``(100, 0.5)`` bucket sent 1.05 requests per call. So that is the default: ``max_tokens``
about half the calls in flight, and ``token_ratio=0.5`` (Finagle's and Envoy's budgets allow
20 % of requests; A6's 0.1 drifts down at 10 % failure). More calls in flight need a larger
bucket; with fewer, a smaller one (at least 10) bounds an outage tighter: it costs
``max_tokens / 2`` extra requests in all.

**Off by default.** ``RetryConfig`` has no budget unless one is given: a budget shares
state between calls, so one call's failures would change how many attempts another call
gets, and a program that runs today with ``max_attempts=5`` could see calls end early. No
behaviour changes unless a budget is given; ``RetryBudget()`` then has the defaults above.

:class:`CallCap` caps one call's total tokens and/or cost across its attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from retrylib.errors import BudgetExhaustedError, CallCapExceededError, ConfigError
from retrylib.state.base import KeyRule, StateStore, check_key_rule, resolve_key


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """The budget's answer to one extra request.

    Attributes:
        allowed: the request may be sent (its cost was taken).
        key: the bucket.
        level: the level after the decision, in tokens.
        max_tokens: the bucket's size.
        threshold: requests need a level above this.
        kind: what the request is for (``transport``, ``reask``, ``fallback``, ``judge``).
        cost: the tokens taken (0 when refused).
    """

    allowed: bool
    key: str
    level: float
    max_tokens: float
    threshold: float
    kind: str = "retry"
    cost: float = 0.0

    def error(self, *, attempts: list[Any] | None = None,
              last_error: dict[str, Any] | None = None) -> BudgetExhaustedError:
        """The :class:`~retrylib.errors.BudgetExhaustedError` that ends a refused call."""
        return BudgetExhaustedError(self.key, self.level, self.max_tokens, self.threshold,
                                    kind=self.kind, attempts=attempts, last_error=last_error)


class RetryBudget:
    """A token bucket per key that every extra request draws on (see the module docstring).

    Args:
        max_tokens: the bucket's size (A6's ``maxTokens``), > 0; default 100 (A6's: 10).
        token_ratio: tokens a success gives back (A6's ``tokenRatio``), > 0; default 0.5
            (A6's: 0.1). See the module docstring for the measurements behind both.
        key: ``"model"``, ``"route"``, a fixed name, or ``key(model, api_base) -> str``.
        store: where the buckets live; ``None``: a new process-local ``MemoryStore``. Give
            a :class:`~retrylib.state.RedisStore` to share the budget between processes.
        retry_cost: tokens an extra request costs (per request: ``allow(cost=...)``).
        threshold: extra requests need a level above it; default ``max_tokens / 2``.

    Raises:
        ConfigError: a bad number or key rule (named).

    Example::

        budget = RetryBudget(store=RedisStore("redis://10.0.0.5:6379/0"))
        d = await budget.allow("openai/gpt-4o", kind="transport")
        if not d.allowed:
            raise d.error(attempts=attempts)
    """

    def __init__(self, max_tokens: float = 100.0, token_ratio: float = 0.5, *,
                 key: KeyRule = "model", store: StateStore | None = None,
                 retry_cost: float = 1.0, threshold: float | None = None):
        for name, value in (("max_tokens", max_tokens), ("token_ratio", token_ratio),
                            ("retry_cost", retry_cost)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
                raise ConfigError(f"RetryBudget {name} must be a number > 0, got {value!r}")
        if token_ratio > max_tokens:
            raise ConfigError(f"RetryBudget token_ratio ({token_ratio}) must not exceed "
                              f"max_tokens ({max_tokens})")
        if threshold is None:
            threshold = max_tokens / 2
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
                or not 0 <= threshold < max_tokens:
            raise ConfigError(f"RetryBudget threshold must be in [0, max_tokens={max_tokens}), "
                              f"got {threshold!r}")
        from retrylib.state import MemoryStore

        self.max_tokens, self.token_ratio = float(max_tokens), float(token_ratio)
        self.retry_cost, self.threshold = float(retry_cost), float(threshold)
        self.key = check_key_rule(key)
        self.store: StateStore = MemoryStore() if store is None else store

    def __repr__(self) -> str:
        return (f"RetryBudget(max_tokens={self.max_tokens:g}, token_ratio={self.token_ratio:g}, "
                f"threshold={self.threshold:g}, key={self.key!r}, store={self.store!r})")

    def key_for(self, model: str | None = None, api_base: str | None = None) -> str:
        """The bucket a request to ``model`` (at ``api_base``) draws on."""
        return resolve_key(self.key, model, api_base)

    async def allow(self, model: str | None = None, *, api_base: str | None = None,
                    kind: str = "retry", cost: float | None = None) -> BudgetDecision:
        """Ask for one extra request; if granted, its cost is taken (atomically).

        Never call it for the first attempt of a call: that one is never refused.

        Args:
            model, api_base: the request's model and base URL (they pick the key).
            kind: what the request is for, recorded in the decision and the error.
            cost: tokens it costs (default ``retry_cost``; e.g. AWS charges a timeout 2x).

        Raises:
            StateStoreError: the store is unreachable and was told ``on_error="raise"``.
        """
        key = self.key_for(model, api_base)
        c = self.retry_cost if cost is None else float(cost)
        allowed, level = await self.store.bucket_spend(key, c, self.max_tokens, self.threshold)
        return BudgetDecision(allowed, key, level, self.max_tokens, self.threshold, kind,
                              c if allowed else 0.0)

    async def acquire(self, model: str | None = None, *, api_base: str | None = None,
                      kind: str = "retry", cost: float | None = None,
                      attempts: list[Any] | None = None) -> BudgetDecision:
        """:meth:`allow`, raising when refused.

        Raises:
            BudgetExhaustedError: the bucket is at or below the threshold.
        """
        d = await self.allow(model, api_base=api_base, kind=kind, cost=cost)
        if not d.allowed:
            raise d.error(attempts=attempts)
        return d

    async def refund(self, decision: BudgetDecision) -> float:
        """Give back what a granted :meth:`allow` took, for a request that was not sent after
        all (the breaker refused it); returns the level after it."""
        if not decision.allowed or not decision.cost:
            return await self.store.bucket_level(decision.key, self.max_tokens)
        return await self.store.bucket_credit(decision.key, decision.cost, self.max_tokens)

    async def record(self, model: str | None = None, *, api_base: str | None = None,
                     ok: bool) -> float:
        """Count one attempt's result; returns the level after it.

        A success (``ok``: the attempt's answer was valid) gives back ``token_ratio``. A
        failure costs nothing here: its token is taken by the :meth:`allow` of its retry.
        """
        key = self.key_for(model, api_base)
        if ok:
            return await self.store.bucket_credit(key, self.token_ratio, self.max_tokens)
        return await self.store.bucket_level(key, self.max_tokens)

    async def level(self, model: str | None = None, *, api_base: str | None = None) -> float:
        """The level of the bucket ``model`` draws on, in tokens."""
        return await self.store.bucket_level(self.key_for(model, api_base), self.max_tokens)

    async def aclose(self) -> None:
        """Release the store's connections for the running event loop."""
        await self.store.aclose()

    def spec(self) -> dict[str, Any]:
        """Plain data :meth:`from_spec` rebuilds this budget from (in another process)."""
        return {"kind": "retry_budget", "max_tokens": self.max_tokens,
                "token_ratio": self.token_ratio, "key": self.key, "retry_cost": self.retry_cost,
                "threshold": self.threshold, "store": self.store.spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> RetryBudget:
        """The budget :meth:`spec` describes, against a store rebuilt from its spec."""
        from retrylib.state import from_spec

        kw = {k: v for k, v in spec.items() if k not in ("kind", "store")}
        return cls(store=from_spec(spec.get("store")), **kw)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as its spec: a worker process rebuilds it against the same Redis.
        return (_budget_from_spec, (self.spec(),))


def _budget_from_spec(spec: dict[str, Any]) -> RetryBudget:
    return RetryBudget.from_spec(spec)


@dataclass(frozen=True, slots=True)
class CapDecision:
    """Whether a call's next attempt fits its cap.

    Attributes:
        allowed: it fits.
        limit: ``"tokens"`` or ``"cost"`` when refused, else ``None``.
        used_tokens, used_cost: what the call used so far.
        next_tokens, next_cost: the estimate for the next attempt.
        answered: the attempts the estimate is made from.
        rule: how the estimate was made, in words.
        cap: the cap that refused it (``0.0`` when allowed).
    """

    allowed: bool
    limit: str | None
    used_tokens: float
    used_cost: float
    next_tokens: float
    next_cost: float
    answered: int
    rule: str
    cap: float = 0.0

    def error(self, *, attempts: list[Any] | None = None,
              last_error: dict[str, Any] | None = None) -> CallCapExceededError:
        """The :class:`~retrylib.errors.CallCapExceededError` that ends a refused call."""
        limit = self.limit or "tokens"
        used, est = ((self.used_tokens, self.next_tokens) if limit == "tokens"
                     else (self.used_cost, self.next_cost))
        return CallCapExceededError(limit, self.cap, used, est, rule=self.rule,
                                    attempts=attempts, last_error=last_error)


class CallCap:
    """A cap on one call's total tokens (in + out) and/or cost, across all its attempts.

    Before each attempt after the first, :meth:`check` estimates what the next attempt will
    use and refuses it when ``used + estimate`` would pass a cap (reaching it exactly is
    allowed). The estimate is made from the attempts that got an answer (tokens or cost
    reported; a transport error uses none):

    - ``estimate="mean"`` (the default): the mean of those attempts;
    - ``estimate="last"``: the latest of them. Re-asks that replay the history
      (``feedback_history="full"``) grow with every attempt, so the mean underestimates
      them; the latest is closer.

    With no answered attempt yet, the estimate is 0 (nothing is known): the first attempt is
    never refused. The calls a validator makes (``LLMJudge``) count in ``used`` when given
    as ``extra_tokens`` / ``extra_cost``.

    Args:
        max_total_tokens: the cap on tokens, or ``None``.
        max_total_cost: the cap on cost (the unit of ``Attempt.cost``, USD), or ``None``.
        estimate: ``"mean"`` or ``"last"``.

    Raises:
        ConfigError: no cap given, or a cap that is not a positive number.
    """

    def __init__(self, max_total_tokens: int | None = None, max_total_cost: float | None = None,
                 *, estimate: Literal["mean", "last"] = "mean"):
        if max_total_tokens is None and max_total_cost is None:
            raise ConfigError("CallCap needs max_total_tokens, max_total_cost or both")
        for name, value in (("max_total_tokens", max_total_tokens), ("max_total_cost", max_total_cost)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not value > 0):
                raise ConfigError(f"CallCap {name} must be a number > 0 or None, got {value!r}")
        if estimate not in ("mean", "last"):
            raise ConfigError(f"CallCap estimate must be 'mean' or 'last', got {estimate!r}")
        self.max_total_tokens, self.max_total_cost, self.estimate = max_total_tokens, max_total_cost, estimate

    def __repr__(self) -> str:
        return (f"CallCap(max_total_tokens={self.max_total_tokens}, "
                f"max_total_cost={self.max_total_cost}, estimate={self.estimate!r})")

    def check(self, attempts: Sequence[Any], *, extra_tokens: float = 0,
              extra_cost: float = 0.0) -> CapDecision:
        """Would the next attempt fit? ``attempts``: the call's attempts so far (anything with
        ``tokens_in``, ``tokens_out`` and ``cost``, such as :class:`~retrylib.result.Attempt`)."""
        sizes = [(a.tokens_in + a.tokens_out, a.cost) for a in attempts
                 if a.tokens_in + a.tokens_out > 0 or a.cost > 0]
        used_t = sum(t for t, _ in sizes) + extra_tokens
        used_c = sum(c for _, c in sizes) + extra_cost
        n = len(sizes)
        if not n:
            next_t = next_c = 0.0
            rule = "no answered attempt yet"
        elif self.estimate == "last":
            next_t, next_c = float(sizes[-1][0]), float(sizes[-1][1])
            rule = "as much as the latest answered attempt"
        else:
            next_t, next_c = sum(t for t, _ in sizes) / n, sum(c for _, c in sizes) / n
            rule = f"the mean of the {n} answered attempt{'s' if n != 1 else ''}"
        for limit, cap, used, nxt in (("tokens", self.max_total_tokens, used_t, next_t),
                                      ("cost", self.max_total_cost, used_c, next_c)):
            if cap is not None and used + nxt > cap:
                return CapDecision(False, limit, used_t, used_c, next_t, next_c, n, rule, float(cap))
        return CapDecision(True, None, used_t, used_c, next_t, next_c, n, rule)

    def enforce(self, attempts: Sequence[Any], *, extra_tokens: float = 0,
                extra_cost: float = 0.0) -> CapDecision:
        """:meth:`check`, raising when the next attempt would pass the cap.

        Raises:
            CallCapExceededError: it would (the error names the cap, the use and the estimate).
        """
        d = self.check(attempts, extra_tokens=extra_tokens, extra_cost=extra_cost)
        if not d.allowed:
            raise d.error(attempts=list(attempts))
        return d

