"""The error tree: one meaning per attribute, every RetryError pickles, the right branch for
each failure (issue 11's error-tree item; issue 16, item 11).

Loop-level cases run through :class:`~retrylib.testing.ScriptedCall` (real code serving
genuine exceptions); the proxy-control cases use a real :class:`ChaosProxy` on loopback and a
closed port.
"""

from __future__ import annotations

import inspect
import pickle
import re
import threading
from typing import Any

import litellm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retrylib.errors as errors_module
from retrylib import (
    ConfigError,
    HumanReviewNeededError,
    NonRetryableError,
    RetryConfig,
    RetryError,
    RetryExhaustedError,
    retry_with_validation,
)
from retrylib import validators as V
from retrylib.errors import ServerUnreachableError, not_retryable_reason
from retrylib.result import Attempt
from retrylib.testing import ScriptedCall, http_error, reply
from retrylib.testing.chaos import ChaosClient, ChaosProxy
from retrylib.testing.local import LocalModelServer, free_port

PROMPT = [{"role": "user", "content": "Give me JSON."}]
CODE = re.compile(r"^[a-z_]+(:[a-z0-9_]+)?$")


def fast(**kw: Any) -> RetryConfig:
    return RetryConfig(**{"initial_delay": 0.0, "max_delay": 0.0, **kw})


# -- reason is a code everywhere; str(exc) is the prose ------------------------------------------

async def test_each_ending_has_its_reason_code():
    """max_attempts, deadline, retry_after, not_retryable:<kind> and human: codes, not prose."""
    seen: dict[str, RetryError] = {}
    with pytest.raises(RetryExhaustedError) as a:
        await retry_with_validation(ScriptedCall(["x", "y"]), PROMPT, [V.JsonObject()], fast(max_attempts=2))
    seen["max_attempts"] = a.value
    with pytest.raises(RetryExhaustedError) as b:
        await retry_with_validation(ScriptedCall([http_error(503)] * 3), PROMPT, [],
                                    RetryConfig(max_attempts=3, initial_delay=5, deadline=0.5))
    seen["deadline"] = b.value
    with pytest.raises(RetryExhaustedError) as c:
        await retry_with_validation(ScriptedCall([http_error(429, headers={"retry-after": "90"}), "ok"]),
                                    PROMPT, [], fast(max_attempts=3, max_retry_after=5))
    seen["retry_after"] = c.value
    with pytest.raises(NonRetryableError) as d:
        await retry_with_validation(ScriptedCall([http_error(401)]), PROMPT, [], fast())
    seen["not_retryable:http_401"] = d.value
    with pytest.raises(HumanReviewNeededError) as e:
        await retry_with_validation(ScriptedCall(["no", "nope"]), PROMPT, [V.JsonObject()],
                                    fast(max_attempts=3, max_attempts_before_human=2))
    seen["human"] = e.value
    assert {code: exc.reason for code, exc in seen.items()} == {code: code for code in seen}
    for exc in seen.values():
        assert CODE.match(exc.reason)
        assert str(exc) == exc.message and " " in str(exc) and str(exc) != exc.reason
    assert "failed validation" in str(seen["human"])
    assert "more than max_retry_after" in str(seen["retry_after"])


async def test_a_failure_without_status_gets_a_slug_kind():
    """An exception with no status is not_retryable:<phrase as a slug>; the phrase stays in last_error."""
    with pytest.raises(NonRetryableError) as info:
        await retry_with_validation(ScriptedCall([KeyError("boom")]), PROMPT, [], fast())
    assert info.value.reason == "not_retryable:unexpected_error"
    assert info.value.last_error["reason"] == "unexpected error (KeyError)"  # the classifier's phrase


def test_reason_codes_from_the_classifiers_phrases():
    """The phrases classify() gives become stable slugs; an existing code is kept."""
    assert not_retryable_reason("context window exceeded") == "not_retryable:context_window_exceeded"
    assert not_retryable_reason("model not mapped (a configuration error)") == "not_retryable:model_not_mapped"
    assert not_retryable_reason("HTTP 503 (x-should-retry: false)", 503) == "not_retryable:http_503"
    assert not_retryable_reason("not_retryable:http_400") == "not_retryable:http_400"
    assert not_retryable_reason("") == "not_retryable:unknown"


def test_retry_exhausted_refuses_an_unknown_reason():
    """A reason that is not one of the three codes is a bug in the caller, said at once."""
    with pytest.raises(ValueError, match="max_attempts"):
        RetryExhaustedError("x", reason="ran out")
    assert RetryExhaustedError("x", reason="retry_after_too_long").reason == "retry_after"


def test_every_error_class_is_drawn_in_the_docstring():
    """The module docstring's tree names every exception class errors.py defines."""
    classes = [name for name, obj in vars(errors_module).items()
               if inspect.isclass(obj) and issubclass(obj, errors_module.RetrylibError)
               and obj.__module__ == errors_module.__name__]
    assert len(classes) >= 12
    missing = [name for name in classes if name not in (errors_module.__doc__ or "")]
    assert not missing, f"not in errors.py's drawing: {missing}"


# -- the right branch: network is not configuration ------------------------------------------------

def test_chaos_client_network_failure_is_not_a_config_error():
    """A ChaosClient pointed at a closed port raises ServerUnreachableError (a ConnectionError)."""
    client = ChaosClient(f"http://127.0.0.1:{free_port()}/v1", timeout=2.0)
    with pytest.raises(ServerUnreachableError) as info:
        client.health()
    assert not isinstance(info.value, ConfigError) and isinstance(info.value, ConnectionError)
    assert info.value.url == client.base_url
    assert pickle.loads(pickle.dumps(info.value)).url == client.base_url


def test_chaos_client_bad_plan_is_a_config_error(chaos_free):
    """A bad plan sent through ChaosClient is still the caller's mistake: ConfigError."""
    client = ChaosClient(chaos_free.url)
    assert client.health()["status"] == "ok"
    with pytest.raises(ConfigError, match="explode"):
        client.set_plan("503,explode")


def test_non_loopback_host_is_one_error_class_for_both_servers():
    """ChaosProxy and LocalModelServer refuse 0.0.0.0 with the same class: ConfigError."""
    with pytest.raises(ConfigError) as proxy:
        ChaosProxy(upstream=None, host="0.0.0.0")
    with pytest.raises(ConfigError) as server:
        LocalModelServer("smollm2", host="0.0.0.0")
    assert type(proxy.value) is type(server.value)
    assert "loopback" in str(proxy.value) and "loopback" in str(server.value)


# -- every RetryError pickles ----------------------------------------------------------------------

class Holder:
    """A user's object that holds a lock (it does not pickle)."""

    def __init__(self, text: str):
        self.text = text
        self.lock = threading.Lock()


class LockedReply(dict):
    """An OpenAI-shaped reply (a dict) that also holds a lock, as a client's response may."""

    def __init__(self, content: str):
        super().__init__(reply(content))
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> LockedReply:
        return self  # ScriptedCall deep-copies what it serves; a lock cannot be copied


async def test_human_review_error_pickles_when_the_last_response_holds_a_lock():
    """The issue's case: the last response holds a lock; the error still pickles, story intact."""
    call = ScriptedCall([lambda messages, **kw: LockedReply("not json")] * 2)
    with pytest.raises(HumanReviewNeededError) as info:
        await retry_with_validation(call, PROMPT, [V.JsonObject()],
                                    fast(max_attempts=3, max_attempts_before_human=2))
    exc = info.value
    assert isinstance(exc.last_response, LockedReply)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is HumanReviewNeededError and str(back) == str(exc) and back.reason == "human"
    assert [a.to_dict() for a in back.attempts] == [a.to_dict() for a in exc.attempts]
    assert back.last_response["choices"][0]["message"]["content"] == "not json"
    assert any("last_response" in note and "LockedReply" in note for note in back.pickle_notes)
    assert back.last_text == "not json" and back.validation_errors == exc.validation_errors


def _unpicklable() -> st.SearchStrategy[Any]:
    return st.one_of(st.builds(threading.Lock), st.builds(lambda: (i for i in range(3))),
                     st.builds(Holder, st.text(max_size=5)), st.builds(lambda: lambda: 1))


def _locked_model_response(text: str) -> Any:
    r = litellm.ModelResponse(choices=[{"message": {"role": "assistant", "content": text}}])
    r._hidden_params["lock"] = threading.Lock()
    return r


leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                   st.text(max_size=10), _unpicklable(),
                   st.builds(_locked_model_response, st.text(max_size=10)))
shapes = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)


def _attempt(n: int) -> Attempt:
    return Attempt(number=n, start=0.1 * n, end=0.1 * n + 0.05, outcome="validation_failed",
                   validation_errors=("bad",), text=f"answer {n}")


def _contains_unpicklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
        return False
    except Exception:
        return True


@given(response=shapes, context=shapes, metric=shapes,
       kind=st.sampled_from(["human", "exhausted", "non_retryable"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_retry_error_pickles_whatever_it_holds(response, context, metric, kind):
    """Any response shape, context or metric (locks, generators, lambdas, objects) pickles."""
    attempts = [_attempt(1), _attempt(2)]
    if kind == "human":
        exc: RetryError = HumanReviewNeededError("2 answers failed validation", attempts=attempts,
                                                 last_response=response, last_text="t",
                                                 messages=[{"role": "user", "content": "q"}],
                                                 context={"x": context}, config={"max_attempts": 3})
    elif kind == "exhausted":
        exc = RetryExhaustedError("all 2 attempts failed", reason="max_attempts", attempts=attempts)
    else:
        exc = NonRetryableError("not retryable (HTTP 400)", status_code=400, reason="HTTP 400",
                                attempts=attempts)
    exc.metrics = {"api_calls": 2, "odd": metric}
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc) and back.reason == exc.reason
    assert [a.to_dict() for a in back.attempts] == [a.to_dict() for a in exc.attempts]
    assert back.metrics["api_calls"] == 2
    dropped = _contains_unpicklable(metric) or (kind == "human" and (
        _contains_unpicklable(response) or _contains_unpicklable(context)))
    assert bool(getattr(back, "pickle_notes", [])) == dropped
    if not dropped:
        assert back.metrics == exc.metrics
        if kind == "human":
            assert back.last_response == response and back.context == {"x": context}
    pickle.loads(pickle.dumps(back))  # and the copy pickles again
